use clap::{Parser, Subcommand};

/// Manage Replicate deployments from Kubernetes.
#[derive(Parser)]
#[command(name = "replicate-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the ReplicateDeployment CustomResourceDefinition as YAML.
    Crd,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", replicate_operator::crd::crd_yaml()),
    }
}

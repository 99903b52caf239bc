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
    /// Run the webhook sidecar: verify Replicate's signed webhooks and record them in status.
    Webhook(replicate_operator::webhook::cli::WebhookArgs),
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", replicate_operator::crd::crd_yaml()),
        Command::Webhook(args) => {
            if let Err(e) = replicate_operator::webhook::cli::run(args) {
                eprintln!("replicate-operator webhook: {e}");
                std::process::exit(1);
            }
        }
    }
}

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
    /// Run an in-memory Replicate API emulator.
    Emulator(Box<replicate_operator::emulator::cli::EmulatorArgs>),
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!("{}", replicate_operator::crd::crd_yaml()),
        Command::Emulator(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_writer(std::io::stderr)
                .init();
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            if let Err(error) = runtime.block_on(replicate_operator::emulator::cli::run(*args)) {
                eprintln!("error: {error}");
                std::process::exit(1);
            }
        }
    }
}

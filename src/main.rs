use clap::{Parser, Subcommand};
use replicate_operator::cli::{self, ControllerArgs};
use replicate_operator::telemetry::{self, LogFormat};

/// Manage Replicate deployments from Kubernetes.
#[derive(Parser)]
#[command(name = "replicate-operator", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the ReplicateDeployment CustomResourceDefinition as YAML.
    Crd,
    /// Reconcile ReplicateDeployments with Replicate (needs KUBECONFIG or in-cluster config, and
    /// REPLICATE_API_TOKEN unless every resource names a credentials Secret).
    Controller(ControllerArgs),
    /// Run an in-memory Replicate API emulator.
    Emulator(Box<replicate_operator::emulator::cli::EmulatorArgs>),
    /// Run the webhook sidecar: verify Replicate's signed webhooks and record them in status.
    Webhook(replicate_operator::webhook::cli::WebhookArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let result = match cli.command {
        Command::Crd => {
            print!("{}", replicate_operator::crd::crd_yaml());
            Ok(())
        }
        Command::Controller(args) => cli::run_controller(args).await.map_err(|e| e.to_string()),
        Command::Emulator(args) => replicate_operator::emulator::cli::run(*args)
            .await
            .map_err(|e| e.to_string()),
        Command::Webhook(args) => replicate_operator::webhook::cli::run(args)
            .await
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            std::process::ExitCode::FAILURE
        }
    }
}

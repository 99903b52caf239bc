//! `make run`: the operator working end to end on one machine, with no Replicate account and no
//! cluster.
//!
//! In this one process it starts etcd + kube-apiserver (through the `envtest` crate, from the
//! binaries `make envtest-assets` builds; never downloaded), the Replicate emulator, the webhook
//! sidecar and the controller (the same library code the `webhook` and `controller` subcommands
//! run). It then applies `deploy/samples/` with the real kubectl, shows the resources becoming
//! Ready, runs a few predictions whose webhooks end up in the status, and keeps everything up
//! until Ctrl-C (SIGINT) or SIGTERM, when it stops it all and removes its run directory.
//!
//! Everything it writes lives in that run directory: the kubeconfig, kubectl's cache, and (through
//! `TMPDIR`) etcd's data and the API server's certificates.
//!
//! - `--exit-when-ready` (or `RUN_EXIT_AFTER_DEMO=1`): stop right after the demo, for scripts.
//! - `--run-dir` (or `REPLICATE_OPERATOR_RUN_DIR`): where the run directory goes, by default
//!   `${XDG_RUNTIME_DIR:-/tmp}/replicate-operator-run`.
//! - `RUST_LOG`: log more than warnings (to stderr).

use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, wait::await_condition, watcher};
use kube::{Client, CustomResourceExt, ResourceExt};
use replicate_operator::controller::{self, Scope, Settings};
use replicate_operator::crd::ReplicateDeployment;
use replicate_operator::emulator::config::versions;
use replicate_operator::emulator::{
    AccountSeed, DEMO_TOKEN, DEMO_USERNAME, Emulator, EmulatorConfig,
};
use replicate_operator::metrics::Metrics;
use replicate_operator::replicate::{
    ApiToken, ClientConfig, CreateDeployment, PredictionRequest, ReplicateClient, WebhookEvent,
};
use replicate_operator::webhook::kube_store::KubeStore;
use replicate_operator::webhook::secrets::DEFAULT_MIN_REFETCH;
use replicate_operator::webhook::server::{WebhookConfig, WebhookServer};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The line scripts (and the smoke test) wait for: everything is up and the demo has run.
const READY_LINE: &str = "replicate-operator demo: ready";
/// The Kubernetes release `make envtest-assets` builds by default (see the Makefile).
const DEFAULT_K8S_VERSION: &str = "1.37.2";
/// The token in the Secret of `deploy/samples/gpu-with-credentials.yaml`. Replicate would refuse
/// it; the demo's emulator has an account for it, so that sample also reaches Ready.
const SAMPLES_PLACEHOLDER_TOKEN: &str = "r8_replace_me";
/// The account that placeholder token acts as.
const SAMPLES_TEAM_ACCOUNT: &str = "team-a";
/// The deployment `deploy/samples/adopt-existing.yaml` adopts, and the instance cap it is seeded
/// with on the emulator (below the sample's, so the adoption also makes an update).
const ADOPTED: &str = "existing-llama";
const ADOPTED_MAX_INSTANCES: u32 = 1;
/// Where `kubectl apply` puts the samples (they name no namespace).
const NAMESPACE: &str = "default";
/// How long Replicate wants a deployment at 0/0 before it may be deleted is 15 minutes; the demo
/// makes it a few seconds so `kubectl delete rdep …` finishes while you watch.
const OFFLINE_WINDOW: Duration = Duration::from_secs(5);
/// Generous bounds for the demo's waits; on a warm machine each takes a few seconds.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long each component gets to stop before it is aborted.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Run the operator on a local control plane against the Replicate emulator.
#[derive(Parser)]
struct Options {
    /// Stop right after the demo instead of running until Ctrl-C.
    #[arg(long, env = "RUN_EXIT_AFTER_DEMO", value_parser = clap::builder::BoolishValueParser::new())]
    exit_when_ready: bool,
    /// The run directory (kubeconfig, control-plane data); removed on exit.
    #[arg(long, env = "REPLICATE_OPERATOR_RUN_DIR")]
    run_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let options = Options::parse();
    let run_dir = match options.run_dir.clone().map(std::path::absolute) {
        Some(Ok(dir)) => dir,
        Some(Err(e)) => return fail(format!("--run-dir: {e}")),
        None => default_run_dir(),
    };

    // envtest's Go side picks the directories for etcd's data and the API server's certificates
    // from TMPDIR, and Go reads the environment once, when the process loads. So the first pass
    // claims the run directory and starts this program again (same pid) with TMPDIR inside it;
    // then everything the control plane writes is removed with the run directory, and its
    // processes are recognisable by their command lines.
    let tmp = run_dir.join("tmp");
    if std::env::var_os("TMPDIR").as_deref() != Some(tmp.as_os_str()) {
        if let Err(e) = claim_run_dir(&run_dir, &tmp) {
            return fail(e);
        }
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => return fail(format!("cannot find this program: {e}")),
        };
        // The run directory is passed on explicitly, so both passes agree on it.
        let error = std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("TMPDIR", &tmp)
            .env("REPLICATE_OPERATOR_RUN_DIR", &run_dir)
            .exec();
        let _ = std::fs::remove_dir_all(&run_dir);
        return fail(format!(
            "cannot restart with TMPDIR={}: {error}",
            tmp.display()
        ));
    }

    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the Tokio runtime starts");
    let code = runtime.block_on(run(options, run_dir.clone()));
    runtime.shutdown_timeout(STOP_TIMEOUT);
    if let Err(e) = std::fs::remove_dir_all(&run_dir) {
        eprintln!("could not remove {}: {e}", run_dir.display());
        return ExitCode::FAILURE;
    }
    code
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("make run: {message}");
    ExitCode::FAILURE
}

/// Warnings only, unless RUST_LOG asks for more: the output is meant for a person.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn default_run_dir() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("replicate-operator-run")
}

/// Makes the run directory ours: refuses if another run still uses it, clears what a killed run
/// left behind, and records our pid. Private (0700): the kubeconfig holds an admin key.
fn claim_run_dir(run_dir: &Path, tmp: &Path) -> Result<(), String> {
    let pid_file = run_dir.join("pid");
    if run_dir.exists() {
        let owner = std::fs::read_to_string(&pid_file).ok();
        if let Some(pid) = owner.as_deref().map(str::trim).filter(|p| !p.is_empty())
            && Path::new("/proc").join(pid).exists()
        {
            return Err(format!(
                "{} is in use by another run (pid {pid}); stop that one first, or choose another \
                 directory with REPLICATE_OPERATOR_RUN_DIR",
                run_dir.display()
            ));
        }
        // A run killed with SIGKILL leaves its etcd and kube-apiserver running; their command
        // lines point into the run directory, which is how they are found.
        stop_leftover_processes(run_dir);
        std::fs::remove_dir_all(run_dir)
            .map_err(|e| format!("cannot clear the stale {}: {e}", run_dir.display()))?;
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(tmp)
        .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    std::fs::write(&pid_file, std::process::id().to_string())
        .map_err(|e| format!("cannot write {}: {e}", pid_file.display()))
}

/// Kills processes whose command line mentions `run_dir` (a killed run's control plane).
fn stop_leftover_processes(run_dir: &Path) {
    let needle = run_dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            eprintln!("stopping process {pid}, left running by an earlier run");
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// One stop signal for every component: Ctrl-C, SIGTERM, or the end of the demo.
#[derive(Clone)]
struct Stop(Arc<watch::Sender<bool>>);

impl Stop {
    fn new() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }

    fn trigger(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once the stop was triggered (also if that happened before the call).
    fn wait(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut stopped = self.0.subscribe();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    }
}

/// How the demo went, for the exit path.
enum Outcome {
    Ready,
    Interrupted,
    Failed(String),
}

async fn run(options: Options, run_dir: PathBuf) -> ExitCode {
    let started = Instant::now();
    let stop = Stop::new();
    // First of all, so that an early Ctrl-C reaches the orderly shutdown below instead of
    // killing the process with the control plane still running.
    let interrupted = stop.clone();
    tokio::spawn(async move {
        replicate_operator::cli::shutdown_signal().await;
        interrupted.trigger();
    });

    println!(
        "replicate-operator demo: the operator on a local control plane and the Replicate emulator"
    );
    let mut stack = Stack::default();
    // Not raced against the stop signal: an interrupted start would leave etcd and
    // kube-apiserver running with nobody left to stop them. Ctrl-C is handled right after.
    let outcome = match ControlPlane::start(&run_dir).await {
        Err(e) => Outcome::Failed(e),
        Ok(control_plane) => {
            println!(
                "  control plane    {}  ({}, up in {})",
                control_plane.server_url,
                control_plane.description,
                secs(started.elapsed())
            );
            let kube = control_plane.kube.clone();
            stack.control_plane = Some(control_plane);
            tokio::select! {
                biased;
                () = stop.wait() => Outcome::Interrupted,
                result = demo(&mut stack, &kube, &stop, started) => match result {
                    Ok(()) => Outcome::Ready,
                    Err(e) => Outcome::Failed(e),
                },
            }
        }
    };

    let code = match outcome {
        Outcome::Ready => {
            if options.exit_when_ready {
                println!("{READY_LINE} (exiting: --exit-when-ready)");
            } else {
                let kube = &stack.control_plane.as_ref().expect("started").kube;
                print_how_to_use(kube, &stack);
                println!(
                    "{READY_LINE}; Ctrl-C stops everything and removes {}",
                    run_dir.display()
                );
                stop.wait().await;
                println!();
            }
            ExitCode::SUCCESS
        }
        Outcome::Interrupted => ExitCode::SUCCESS,
        Outcome::Failed(e) => {
            eprintln!("make run: {e}");
            ExitCode::FAILURE
        }
    };
    print!("Stopping: ");
    stack.shutdown(&stop).await;
    println!("done.");
    code
}

/// Everything started so far, in start order; [`Stack::shutdown`] stops it in reverse.
#[derive(Default)]
struct Stack {
    control_plane: Option<ControlPlane>,
    emulator: Option<Emulator>,
    /// The sidecar's ReplicateDeployment cache (runs until aborted).
    sidecar_cache: Option<JoinHandle<()>>,
    sidecar: Option<JoinHandle<std::io::Result<()>>>,
    controller: Option<JoinHandle<()>>,
}

impl Stack {
    async fn shutdown(mut self, stop: &Stop) {
        use std::io::Write;
        stop.trigger();
        if let Some(controller) = self.controller.take() {
            finish("controller", controller).await;
        }
        if let Some(sidecar) = self.sidecar.take() {
            finish("webhook sidecar", sidecar).await;
        }
        if let Some(cache) = self.sidecar_cache.take() {
            cache.abort();
            let _ = cache.await;
        }
        if let Some(emulator) = self.emulator.take() {
            print!("emulator, ");
            emulator.shutdown().await;
        }
        if let Some(control_plane) = self.control_plane.take() {
            print!("control plane… ");
            let _ = std::io::stdout().flush();
            control_plane.stop().await;
        }
    }
}

/// Waits for a component that was told to stop, and aborts it if it takes too long.
async fn finish<T>(name: &str, mut task: JoinHandle<T>) {
    use std::io::Write;
    print!("{name}, ");
    let _ = std::io::stdout().flush();
    if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
        eprintln!(
            "\n{name} did not stop within {}; aborting it",
            secs(STOP_TIMEOUT)
        );
        task.abort();
    }
}

/// etcd + kube-apiserver with the CRD installed, and what kubectl needs to reach them.
struct ControlPlane {
    kube: Kube,
    server_url: String,
    /// `etcd + kube-apiserver 1.37.2`, the version taken from the name of the assets directory
    /// (binaries built from Go modules report none themselves).
    description: String,
    // Dropping it stops etcd and kube-apiserver; `stop` does so explicitly first.
    server: envtest::Server,
}

/// The API server as the demo talks to it: a client, and kubectl with its own files.
#[derive(Clone)]
struct Kube {
    client: Client,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    /// kubectl caches discovery per server address, and ports get reused between runs.
    kubectl_cache: PathBuf,
    assets: PathBuf,
}

impl ControlPlane {
    async fn start(run_dir: &Path) -> Result<Self, String> {
        let assets = assets_dir();
        for binary in ["etcd", "kube-apiserver", "kubectl"] {
            if !assets.join(binary).exists() {
                return Err(format!(
                    "no {binary} in {}: run `make envtest-assets` (or `make run`, which builds it)",
                    assets.display()
                ));
            }
        }
        let env = envtest::Environment {
            binary_assets_settings: envtest::BinaryAssetsSettings {
                download_binary_assets: false,
                binary_assets_directory: Some(assets.display().to_string()),
                ..Default::default()
            },
            ..Default::default()
        }
        .with_crds(ReplicateDeployment::crd())
        .map_err(|e| format!("the CRD does not serialize: {e}"))?;
        let server = env
            .create()
            .await
            .map_err(|e| format!("the control plane did not start: {e}"))?;

        let kubeconfig_path = run_dir.join("kubeconfig");
        std::fs::write(&kubeconfig_path, server.as_ref())
            .map_err(|e| format!("cannot write {}: {e}", kubeconfig_path.display()))?;
        let kubeconfig: Kubeconfig = serde_json::from_str(server.as_ref())
            .map_err(|e| format!("envtest's kubeconfig: {e}"))?;
        let server_url = kubeconfig
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .and_then(|c| c.server.clone())
            .unwrap_or_default();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| format!("envtest's kubeconfig: {e}"))?;
        let client = Client::try_from(config).map_err(|e| format!("Kubernetes client: {e}"))?;
        Ok(Self {
            description: describe(&assets),
            kube: Kube {
                client,
                kubectl: assets.join("kubectl"),
                kubeconfig: kubeconfig_path,
                kubectl_cache: run_dir.join("kubectl-cache"),
                assets,
            },
            server_url,
            server,
        })
    }

    async fn stop(self) {
        if let Err(e) = self.server.destroy().await {
            eprintln!("\nstopping the control plane: {e}");
        }
        // Dropping the server tries once more, harmlessly, and finds nothing left to stop.
    }
}

fn describe(assets: &Path) -> String {
    let name = assets
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let is_version = !name.is_empty() && name.chars().all(|c| c.is_ascii_digit() || c == '.');
    if is_version {
        format!("etcd + kube-apiserver {name}")
    } else {
        "etcd + kube-apiserver".into()
    }
}

/// The control-plane binaries: KUBEBUILDER_ASSETS (the Makefile sets it), else where
/// `make envtest-assets` puts them.
fn assets_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let version = std::env::var("K8S_VERSION").unwrap_or_else(|_| DEFAULT_K8S_VERSION.into());
    let cache = std::env::var_os("REPLICATE_OPERATOR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
                })
                .join("replicate-operator")
        });
    cache.join("envtest").join(version)
}

impl Kube {
    /// Runs kubectl against this control plane; returns stdout, or stderr as the error.
    async fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        let output = tokio::process::Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.kubectl_cache)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", self.kubectl.display()))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    fn resources(&self) -> Api<ReplicateDeployment> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }
}

/// Starts the emulator, the sidecar and the controller, then shows the samples at work.
async fn demo(stack: &mut Stack, kube: &Kube, stop: &Stop, started: Instant) -> Result<(), String> {
    let emulator = start_emulator().await?;
    let replicate_config = emulator.client_config();
    println!(
        "  Replicate API    {}  (emulator: account {DEMO_USERNAME:?} for the default token, and \
         {SAMPLES_TEAM_ACCOUNT:?} for the samples' placeholder token {SAMPLES_PLACEHOLDER_TOKEN})",
        emulator.base_url()
    );
    let emulator_base_url = emulator.base_url();
    stack.emulator = Some(emulator);

    let sidecar_url = start_sidecar(stack, kube, &emulator_base_url, stop).await?;
    println!("  webhook sidecar  {sidecar_url}  (verifies the emulator's signed webhooks)");

    let replicate =
        ReplicateClient::new(replicate_config).map_err(|e| format!("Replicate client: {e}"))?;
    let settings = Settings {
        // Short, so drift made through the emulator shows up quickly in the demo.
        resync_interval: Duration::from_secs(30),
        offline_window: OFFLINE_WINDOW,
        credentials_grace: Duration::from_secs(30),
        backoff_base: Duration::from_secs(1),
        backoff_cap: Duration::from_secs(10),
        webhook_base_url: Some(sidecar_url.clone()),
    };
    let scope = Scope {
        namespace: None,
        selector: None,
        concurrency: 4,
    };
    stack.controller = Some(tokio::spawn(controller::run(
        kube.client.clone(),
        replicate.clone(),
        Some(ApiToken::new(DEMO_TOKEN)),
        settings,
        scope,
        Arc::new(Metrics::new()),
        stop.wait(),
    )));
    println!(
        "  controller       running in this process, default token: the emulator's demo account"
    );

    // The API server creates the `default` namespace shortly after it starts serving.
    let namespaces: Api<Namespace> = Api::all(kube.client.clone());
    let has_namespace =
        await_condition(namespaces, NAMESPACE, |ns: Option<&Namespace>| ns.is_some());
    tokio::time::timeout(READY_TIMEOUT, has_namespace)
        .await
        .map_err(|_| format!("no namespace {NAMESPACE} after {}", secs(READY_TIMEOUT)))?
        .map_err(|e| format!("waiting for namespace {NAMESPACE}: {e}"))?;

    // Watching from before the apply, so every resource is timed from when it appeared.
    let (tracking, progress) = track_readiness(kube).await?;
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/samples");
    println!("\n$ kubectl apply -k deploy/samples/");
    let applied = kube
        .kubectl(&[
            "apply",
            "--namespace",
            NAMESPACE,
            "-k",
            &samples.display().to_string(),
        ])
        .await;
    let shown = match applied {
        Ok(applied) => {
            print_indented(&applied);
            println!(
                "\n$ kubectl get replicatedeployments   (again at every change, until all are Ready)"
            );
            show_until_ready(kube, progress).await
        }
        Err(e) => Err(e),
    };
    tracking.abort();
    let times = shown?;
    println!(
        "Ready: the first {} after start, all {} after {}; {} from creation to Ready per resource.",
        secs(times.first - started),
        times.count,
        secs(times.all - started),
        range_secs(times.fastest, times.slowest),
    );
    show_adoption(kube).await?;

    run_predictions(kube, &replicate).await
}

async fn start_emulator() -> Result<Emulator, String> {
    let config = EmulatorConfig {
        offline_window: OFFLINE_WINDOW,
        ..EmulatorConfig::default()
    };
    let emulator = Emulator::start(config)
        .await
        .map_err(|e| format!("the emulator did not start: {e}"))?;
    // Only for the demo: the credentials sample carries a placeholder token, and this account
    // makes the emulator accept it, so every sample reaches Ready.
    emulator
        .add_account(&AccountSeed::new(
            SAMPLES_TEAM_ACCOUNT,
            SAMPLES_PLACEHOLDER_TOKEN,
        ))
        .map_err(|e| format!("seeding the emulator: {e}"))?;
    // deploy/samples/adopt-existing.yaml adopts a deployment made outside Kubernetes.
    emulator
        .seed_deployment(
            DEMO_USERNAME,
            &CreateDeployment {
                name: ADOPTED.into(),
                model: "meta/meta-llama-3-8b-instruct".into(),
                version: versions::LLAMA_V1.into(),
                hardware: "gpu-l40s".into(),
                min_instances: 0,
                max_instances: ADOPTED_MAX_INSTANCES,
            },
        )
        .map_err(|e| format!("seeding existing-llama: {e:?}"))?;
    Ok(emulator)
}

/// The sidecar as `replicate-operator webhook` assembles it, with its secret source fetching the
/// webhook secret of each resource's account from the emulator's API.
async fn start_sidecar(
    stack: &mut Stack,
    kube: &Kube,
    api_base_url: &str,
    stop: &Stop,
) -> Result<String, String> {
    let (store, cache) = KubeStore::new(kube.client.clone(), None);
    stack.sidecar_cache = Some(tokio::spawn(cache));
    let replicate = ReplicateClient::new(
        ClientConfig::default()
            .with_base_url(api_base_url)
            .map_err(|e| format!("the emulator URL: {e}"))?,
    )
    .map_err(|e| format!("HTTP client: {e}"))?;
    let secrets = replicate_operator::webhook::cli::replicate_api_secrets(
        kube.client.clone(),
        replicate,
        Some(ApiToken::new(DEMO_TOKEN)),
        DEFAULT_MIN_REFETCH,
    );
    let server = WebhookServer::new(Arc::new(store), secrets, WebhookConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("the webhook sidecar cannot listen: {e}"))?;
    let url = format!(
        "http://{}",
        listener
            .local_addr()
            .map_err(|e| format!("the webhook sidecar: {e}"))?
    );
    stack.sidecar = Some(tokio::spawn(server.serve(listener, stop.wait())));
    Ok(url)
}

/// When each ReplicateDeployment was first seen, and first seen Ready, by our own watch.
#[derive(Default)]
struct Progress {
    appeared: HashMap<String, Instant>,
    ready: HashMap<String, Instant>,
    /// The Ready condition of each resource that is not Ready yet, for a report on timeout.
    waiting: HashMap<String, String>,
}

/// Starts watching the ReplicateDeployments and returns once the watch is established (so
/// nothing created afterwards is missed), with the task that keeps `Progress` up to date.
async fn track_readiness(
    kube: &Kube,
) -> Result<(JoinHandle<()>, watch::Receiver<Progress>), String> {
    let (progress, receiver) = watch::channel(Progress::default());
    let (synced, is_synced) = tokio::sync::oneshot::channel();
    let mut events = watcher(kube.resources(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let task = tokio::spawn(async move {
        let mut synced = Some(synced);
        while let Some(event) = events.next().await {
            let now = Instant::now();
            match event {
                Ok(watcher::Event::InitDone) => {
                    if let Some(synced) = synced.take() {
                        let _ = synced.send(());
                    }
                }
                Ok(watcher::Event::InitApply(rd) | watcher::Event::Apply(rd)) => {
                    progress.send_modify(|p| p.record(&rd, now));
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "watching ReplicateDeployments"),
            }
        }
    });
    match tokio::time::timeout(READY_TIMEOUT, is_synced).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => {
            return Err("the watch of ReplicateDeployments ended before it started".into());
        }
        Err(_) => {
            task.abort();
            return Err(format!(
                "could not watch ReplicateDeployments within {}",
                secs(READY_TIMEOUT)
            ));
        }
    }
    Ok((task, receiver))
}

impl Progress {
    fn record(&mut self, rd: &ReplicateDeployment, now: Instant) {
        let name = rd.name_any();
        self.appeared.entry(name.clone()).or_insert(now);
        let ready = rd
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
        match ready {
            Some(c) if c.status == "True" => {
                self.ready.entry(name.clone()).or_insert(now);
                self.waiting.remove(&name);
            }
            Some(c) => {
                self.waiting
                    .insert(name, format!("{}: {}", c.reason, c.message));
            }
            None => {
                self.waiting.insert(name, "no Ready condition yet".into());
            }
        }
    }

    /// When all of `names` had become Ready, if they have.
    fn times(&self, names: &[String]) -> Option<ReadyTimes> {
        let mut times = ReadyTimes {
            first: *self.ready.get(names.first()?)?,
            all: *self.ready.get(names.first()?)?,
            count: names.len(),
            fastest: Duration::MAX,
            slowest: Duration::ZERO,
        };
        for name in names {
            let (ready, appeared) = (*self.ready.get(name)?, *self.appeared.get(name)?);
            times.first = times.first.min(ready);
            times.all = times.all.max(ready);
            times.fastest = times.fastest.min(ready - appeared);
            times.slowest = times.slowest.max(ready - appeared);
        }
        Some(times)
    }
}

/// When the first and the last resource became Ready, and how long each took.
struct ReadyTimes {
    first: Instant,
    all: Instant,
    count: usize,
    fastest: Duration,
    slowest: Duration,
}

/// Prints the `kubectl get` table, again whenever the watch reports a change to it, until every
/// ReplicateDeployment in the namespace is Ready.
async fn show_until_ready(
    kube: &Kube,
    mut progress: watch::Receiver<Progress>,
) -> Result<ReadyTimes, String> {
    // After the apply, so this is everything the samples created.
    let names: Vec<String> = kube
        .resources()
        .list(&Default::default())
        .await
        .map_err(|e| format!("listing ReplicateDeployments: {e}"))?
        .items
        .iter()
        .map(|rd| rd.name_any())
        .collect();
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut shown = String::new();
    loop {
        // Read before kubectl runs, so the table printed last shows at least this state.
        let done = progress.borrow_and_update().times(&names);
        let table = kube
            .kubectl(&["get", "replicatedeployments", "--namespace", NAMESPACE])
            .await?;
        // The AGE column changes by itself; only the rest counts as a change.
        if without_age(&table) != without_age(&shown) {
            print_indented(&table);
            shown = table;
        }
        if let Some(times) = done {
            return Ok(times);
        }
        match tokio::time::timeout_at(deadline, progress.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err("the watch of ReplicateDeployments ended".into()),
            Err(_) => {
                let mut report = format!(
                    "not every ReplicateDeployment became Ready within {}:",
                    secs(READY_TIMEOUT)
                );
                for (name, why) in &progress.borrow().waiting {
                    report.push_str(&format!("\n  {name}: {why}"));
                }
                return Err(report);
            }
        }
    }
}

fn range_secs(low: Duration, high: Duration) -> String {
    if secs(low) == secs(high) {
        secs(low)
    } else {
        format!("{}–{}", secs(low), secs(high))
    }
}

/// What adopting `existing-llama` did: the emulator had it with one instance at most.
async fn show_adoption(kube: &Kube) -> Result<(), String> {
    let rd = kube
        .resources()
        .get(ADOPTED)
        .await
        .map_err(|e| format!("reading {ADOPTED}: {e}"))?;
    if let Some(live) = rd.status.and_then(|s| s.deployment) {
        println!(
            "{ADOPTED} existed on Replicate with maxInstances {ADOPTED_MAX_INSTANCES}: adopted, now \
             release {} with maxInstances {}.",
            live.release_number.unwrap_or_default(),
            live.max_instances.unwrap_or_default(),
        );
    }
    Ok(())
}

/// Five predictions on the hello-world deployment, one of them made to fail, with the webhook
/// URL the controller published; then the counts the sidecar recorded from the webhooks.
async fn run_predictions(kube: &Kube, replicate: &ReplicateClient) -> Result<(), String> {
    const NAME: &str = "hello-world";
    let api = kube.resources();
    let rd = api
        .get(NAME)
        .await
        .map_err(|e| format!("reading {NAME}: {e}"))?;
    let status = rd.status.unwrap_or_default();
    let webhook = status
        .webhook_url
        .ok_or_else(|| format!("{NAME} has no status.webhookUrl"))?;
    let deployment = status
        .deployment
        .ok_or_else(|| format!("{NAME} has no status.deployment"))?;

    let inputs = [
        serde_json::json!({"text": "Ada"}),
        serde_json::json!({"text": "Grace"}),
        serde_json::json!({"text": "Alan"}),
        serde_json::json!({"text": "Barbara"}),
        // The emulator fails any prediction with this input, so the failure count moves too.
        serde_json::json!({"fail": true}),
    ];
    let expected = inputs.len() as i64;
    println!(
        "\n{expected} predictions on {}/{} (one with input {{\"fail\": true}}); webhooks to {webhook}",
        deployment.owner, deployment.name
    );
    let account = replicate.account(ApiToken::new(DEMO_TOKEN));
    let started = Instant::now();
    let requests = inputs.into_iter().map(|input| {
        let request = PredictionRequest {
            input,
            webhook: Some(webhook.clone()),
            webhook_events_filter: Some(vec![WebhookEvent::Completed]),
        };
        let (account, owner, name) = (&account, &deployment.owner, &deployment.name);
        async move {
            account
                .create_deployment_prediction(owner, name, &request, None)
                .await
        }
    });
    futures::future::try_join_all(requests)
        .await
        .map_err(|e| format!("creating a prediction: {e}"))?;

    let recorded = |rd: Option<&ReplicateDeployment>| {
        rd.and_then(|rd| rd.status.as_ref()?.predictions.as_ref())
            .is_some_and(|p| p.succeeded + p.failed + p.canceled + p.aborted >= expected)
    };
    tokio::time::timeout(WEBHOOK_TIMEOUT, await_condition(api, NAME, recorded))
        .await
        .map_err(|_| {
            format!(
                "the webhooks of {NAME} were not all recorded within {}",
                secs(WEBHOOK_TIMEOUT)
            )
        })?
        .map_err(|e| format!("watching {NAME}: {e}"))?;
    println!(
        "All {expected} recorded in the status by the sidecar {} after they started:",
        secs(started.elapsed())
    );

    for field in ["predictions", "lastPrediction"] {
        let jsonpath = format!("jsonpath={{.status.{field}}}");
        println!("$ kubectl get rdep {NAME} -o {jsonpath}");
        let shown = kube
            .kubectl(&[
                "get",
                "rdep",
                NAME,
                "--namespace",
                NAMESPACE,
                "-o",
                &jsonpath,
            ])
            .await?;
        print_indented(&shown);
    }
    Ok(())
}

fn print_how_to_use(kube: &Kube, stack: &Stack) {
    let emulator = stack
        .emulator
        .as_ref()
        .map(|e| e.addr().to_string())
        .unwrap_or_default();
    println!("\nEverything keeps running. From another shell:");
    println!("  export KUBECONFIG={}", kube.kubeconfig.display());
    println!(
        "  export PATH=\"{}:$PATH\"   # this kubectl",
        kube.assets.display()
    );
    println!("  kubectl get rdep -w");
    println!(
        "  kubectl patch rdep hello-world --type merge -p '{{\"spec\":{{\"maxInstances\":3}}}}'   # a new release"
    );
    println!(
        "  kubectl delete rdep hello-world   # scaled to 0, deleted after {} offline",
        secs(OFFLINE_WINDOW)
    );
    println!("  curl -s http://{emulator}/_emulator/state   # what the emulator holds");
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("  {line}");
    }
}

/// A `kubectl get` table without its last column (AGE).
fn without_age(table: &str) -> Vec<&str> {
    table
        .lines()
        .map(|line| {
            line.trim_end()
                .rsplit_once(' ')
                .map_or(line, |(rest, _)| rest.trim_end())
        })
        .collect()
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

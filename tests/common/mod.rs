//! The shared test harness: a real etcd + kube-apiserver per test, started through the `envtest`
//! crate from the binaries `make envtest-assets` builds (never downloaded), plus real `kubectl`.
//!
//! Every test gets its own control plane, so tests never see each other's objects and a failing
//! test cannot leave state behind. The control plane is stopped when the `ControlPlane` is
//! dropped, which also happens while a failing test unwinds.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, CustomResourceExt};
use replicate_operator::crd::ReplicateDeployment;

/// The Kubernetes release the control-plane binaries are built from (see the Makefile).
pub const DEFAULT_K8S_VERSION: &str = "1.37.2";

/// The directory that holds etcd, kube-apiserver and kubectl.
pub fn assets_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("KUBEBUILDER_ASSETS") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var("REPLICATE_OPERATOR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let home = std::env::var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"));
            home.join("replicate-operator")
        });
    cache.join("envtest").join(DEFAULT_K8S_VERSION)
}

/// A running control plane with an admin client, a kubeconfig file for kubectl and one
/// namespace created for the test.
pub struct ControlPlane {
    pub client: Client,
    pub namespace: String,
    kubeconfig_path: PathBuf,
    _dir: tempfile::TempDir,
    // Declared last so it is dropped last: dropping it stops etcd and kube-apiserver.
    server: envtest::Server,
}

impl ControlPlane {
    /// Starts etcd + kube-apiserver with the ReplicateDeployment CRD installed (and Established),
    /// and creates the namespace `test`.
    pub async fn start() -> Self {
        Self::start_with(true).await
    }

    /// Starts a control plane without the CRD, for tests that install it themselves.
    pub async fn start_without_crd() -> Self {
        Self::start_with(false).await
    }

    async fn start_with(install_crd: bool) -> Self {
        let assets = assets_dir();
        assert!(
            assets.join("kube-apiserver").exists() && assets.join("etcd").exists(),
            "no control-plane binaries in {}: run `make envtest-assets` (or `make test`, which builds them)",
            assets.display()
        );
        let mut env = envtest::Environment {
            binary_assets_settings: envtest::BinaryAssetsSettings {
                download_binary_assets: false,
                binary_assets_directory: Some(assets.display().to_string()),
                ..Default::default()
            },
            ..Default::default()
        };
        if install_crd {
            env = env
                .with_crds(ReplicateDeployment::crd())
                .expect("the CRD serializes");
        }
        let server = env.create().await.expect("the control plane starts");

        let dir = tempfile::tempdir().unwrap();
        let kubeconfig_path = dir.path().join("kubeconfig.json");
        std::fs::write(&kubeconfig_path, server.as_ref()).unwrap();
        let kubeconfig: Kubeconfig = serde_json::from_str(server.as_ref()).unwrap();
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("envtest's kubeconfig is usable");
        let client = Client::try_from(config).unwrap();

        let namespace = "test".to_string();
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": namespace }
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("the test namespace is created");

        Self {
            client,
            namespace,
            kubeconfig_path,
            _dir: dir,
            server,
        }
    }

    /// The kubeconfig file (JSON) for kubectl and for operator processes started by tests.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// A `kubectl` command aimed at this control plane and the test namespace.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(assets_dir().join("kubectl"));
        // A cache of our own: kubectl caches discovery per server address, and ports get reused.
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig_path)
            .arg("--cache-dir")
            .arg(self._dir.path().join("kubectl-cache"))
            .arg("--namespace")
            .arg(&self.namespace);
        cmd
    }

    /// Runs kubectl with the given arguments and, if given, a manifest on standard input.
    pub fn run_kubectl(&self, args: &[&str], stdin: Option<&str>) -> KubectlOutput {
        let mut cmd = self.kubectl();
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("kubectl runs");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        KubectlOutput::from(child.wait_with_output().unwrap())
    }

    /// `kubectl apply -f -` of a manifest.
    pub fn apply(&self, manifest: &str) -> KubectlOutput {
        self.run_kubectl(&["apply", "-f", "-"], Some(manifest))
    }
}

/// What a kubectl run printed, with its exit status.
#[derive(Debug)]
pub struct KubectlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for KubectlOutput {
    fn from(out: Output) -> Self {
        Self {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl KubectlOutput {
    /// Panics with both streams when kubectl failed.
    pub fn ok(self) -> Self {
        assert!(
            self.success,
            "kubectl failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what` in the message.
/// For conditions the test cannot subscribe to (processes, external state); prefer watches or
/// `kubectl wait` where they fit.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A controller running in this test process against a control plane and an emulator.
/// Dropping it stops it (as a crash would: nothing is cleaned up on the way out).
pub struct RunningController {
    pub metrics: std::sync::Arc<replicate_operator::metrics::Metrics>,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for RunningController {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Controller settings for tests: no periodic resync unless a test asks for one, short backoff,
/// a deletable-at-once offline window.
pub fn test_settings() -> replicate_operator::controller::Settings {
    replicate_operator::controller::Settings {
        resync_interval: Duration::from_secs(3600),
        offline_window: Duration::from_millis(300),
        credentials_grace: Duration::from_secs(2),
        backoff_base: Duration::from_millis(200),
        backoff_cap: Duration::from_secs(2),
        webhook_base_url: None,
    }
}

impl ControlPlane {
    /// Starts the controller in-process, with the emulator's demo token as the default token.
    pub fn start_controller(
        &self,
        emulator: &replicate_operator::emulator::Emulator,
        settings: replicate_operator::controller::Settings,
    ) -> RunningController {
        use replicate_operator::controller::{self, Scope};
        use replicate_operator::metrics::Metrics;
        use replicate_operator::replicate::ReplicateClient;
        if std::env::var_os("RUST_LOG").is_some() {
            replicate_operator::telemetry::init(replicate_operator::telemetry::LogFormat::Text);
        }
        let metrics = std::sync::Arc::new(Metrics::new());
        let mut config = emulator.client_config();
        let observer = metrics.clone();
        config.observer = Some(std::sync::Arc::new(
            move |o: &replicate_operator::replicate::RequestOutcome| observer.replicate_request(o),
        ));
        let replicate = ReplicateClient::new(config).unwrap();
        let handle = tokio::spawn(controller::run(
            self.client.clone(),
            replicate,
            Some(emulator.demo_token()),
            settings,
            Scope {
                namespace: Some(self.namespace.clone()),
                selector: None,
                concurrency: 4,
            },
            metrics.clone(),
            std::future::pending(),
        ));
        RunningController { metrics, handle }
    }

    /// `kubectl wait` for a condition of one ReplicateDeployment.
    pub fn wait_for(&self, name: &str, condition: &str, timeout_secs: u32) -> KubectlOutput {
        self.run_kubectl(
            &[
                "wait",
                &format!("--for={condition}"),
                &format!("rdep/{name}"),
                &format!("--timeout={timeout_secs}s"),
            ],
            None,
        )
    }
}

/// Starts an emulator with test timings.
pub async fn start_emulator() -> replicate_operator::emulator::Emulator {
    replicate_operator::emulator::Emulator::start(
        replicate_operator::emulator::config::EmulatorConfig::fast(),
    )
    .await
    .expect("the emulator starts")
}

impl ControlPlane {
    /// One ReplicateDeployment, read through the API.
    pub async fn get_rd(&self, name: &str) -> Option<replicate_operator::crd::ReplicateDeployment> {
        Api::<ReplicateDeployment>::namespaced(self.client.clone(), &self.namespace)
            .get_opt(name)
            .await
            .unwrap()
    }

    /// Waits until condition `type_` of `name` has `status` and `reason`, and returns it.
    pub async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        let what = format!("{name}: {type_}={status} ({reason})");
        eventually(&what, Duration::from_secs(60), || async {
            let rd = self.get_rd(name).await?;
            rd.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == type_ && c.status == status && c.reason == reason)
        })
        .await
    }

    /// The reasons of the Events recorded for one resource.
    pub async fn event_reasons(&self, name: &str) -> Vec<String> {
        use k8s_openapi::api::events::v1::Event;
        let events = Api::<Event>::namespaced(self.client.clone(), &self.namespace)
            .list(&Default::default())
            .await
            .unwrap();
        events
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .filter_map(|e| e.reason)
            .collect()
    }

    /// Waits until an Event with `reason` exists for `name`.
    pub async fn wait_event(&self, name: &str, reason: &str) {
        eventually(
            &format!("event {reason} for {name}"),
            Duration::from_secs(60),
            || async {
                self.event_reasons(name)
                    .await
                    .iter()
                    .any(|r| r == reason)
                    .then_some(())
            },
        )
        .await
    }
}

/// A ReplicateDeployment manifest for the emulator's hello-world model, with extra spec lines.
pub fn hello_manifest(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: replicate-operator.dev/v1alpha1\nkind: ReplicateDeployment\nmetadata:\n  name: {name}\nspec:\n  model: replicate/hello-world\n  version: {}\n  hardware: cpu\n  minInstances: 0\n  maxInstances: 1\n{extra_spec}",
        replicate_operator::emulator::config::versions::HELLO_WORLD_V1
    )
}

/// A Secret holding a Replicate token under key `token`.
pub fn token_secret(name: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n  token: {token}\n"
    )
}

/// Runs kubectl with a given kubeconfig and no default namespace.
pub fn kubectl_with(kubeconfig: &Path, args: &[&str]) -> KubectlOutput {
    let cache = kubeconfig.parent().unwrap().join("kubectl-cache-admin");
    let out = Command::new(assets_dir().join("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .expect("kubectl runs");
    KubectlOutput::from(out)
}

impl ControlPlane {
    /// kubectl as the admin, without the test namespace (for cluster-scoped objects and
    /// manifests that name their own namespace).
    pub fn admin(&self, args: &[&str]) -> KubectlOutput {
        kubectl_with(self.kubeconfig(), args)
    }

    /// A kubeconfig that authenticates as a ServiceAccount, with a token from the TokenRequest
    /// API (`kubectl create token`).
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self
            .admin(&[
                "create",
                "token",
                name,
                "--namespace",
                namespace,
                "--duration=1h",
            ])
            .ok()
            .stdout
            .trim()
            .to_string();
        assert!(!token.is_empty());
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.kubeconfig()).unwrap()).unwrap();
        let user = format!("{namespace}-{name}");
        config["users"] = serde_json::json!([{"name": user, "user": {"token": token}}]);
        for context in config["contexts"].as_array_mut().unwrap() {
            context["context"]["user"] = serde_json::json!(user);
            context["context"]["namespace"] = serde_json::json!(namespace);
        }
        let path = self
            .kubeconfig()
            .with_file_name(format!("kubeconfig-{namespace}-{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        path
    }
}

/// The webhook sidecar running in this test process; stopped when dropped.
pub struct RunningSidecar {
    pub base_url: String,
    pub metrics: std::sync::Arc<replicate_operator::webhook::metrics::Metrics>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RunningSidecar {
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.abort();
        }
    }
}

impl ControlPlane {
    /// Starts the webhook sidecar in-process on a loopback port, fetching secrets from the
    /// emulator with its demo token, exactly as `replicate-operator webhook` assembles it.
    pub async fn start_sidecar(
        &self,
        emulator: &replicate_operator::emulator::Emulator,
    ) -> RunningSidecar {
        use replicate_operator::webhook::{
            cli, commit::CommitConfig, kube_store::KubeStore, server::*,
        };
        let (store, reflector) = KubeStore::new(self.client.clone(), Some(&self.namespace));
        let reflector = tokio::spawn(reflector);
        let replicate =
            replicate_operator::replicate::ReplicateClient::new(emulator.client_config()).unwrap();
        let secrets = cli::replicate_api_secrets(
            self.client.clone(),
            replicate,
            Some(emulator.demo_token()),
            Duration::from_secs(1),
        );
        let config = WebhookConfig {
            commit: CommitConfig {
                flush_interval: Duration::from_millis(20),
                ..CommitConfig::default()
            },
            ..WebhookConfig::default()
        };
        let server = WebhookServer::new(std::sync::Arc::new(store), secrets, config);
        let metrics = server.metrics();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let serving = tokio::spawn(async move {
            let _ = server.serve(listener, std::future::pending()).await;
        });
        RunningSidecar {
            base_url,
            metrics,
            handles: vec![reflector, serving],
        }
    }
}

/// Records every version of one ReplicateDeployment that the API server hands out, so a test
/// can count the writes made to it (by kubectl, the controller and the sidecar alike).
pub struct WriteRecorder {
    versions: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WriteRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WriteRecorder {
    /// Distinct versions seen so far. A watch that had to restart would collapse versions, so
    /// this never counts more writes than happened.
    pub fn count(&self) -> usize {
        self.versions.lock().unwrap().len()
    }
}

impl ControlPlane {
    /// Starts recording the versions of the ReplicateDeployment `name` (also before it exists).
    pub async fn record_writes(&self, name: &str) -> WriteRecorder {
        use futures::StreamExt;
        use kube::runtime::watcher;
        let api = Api::<ReplicateDeployment>::namespaced(self.client.clone(), &self.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let versions = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let seen = versions.clone();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut events = std::pin::pin!(watcher(api, config));
            while let Some(event) = events.next().await {
                let rv = match event {
                    Ok(watcher::Event::Apply(rd)) | Ok(watcher::Event::Delete(rd)) => {
                        rd.metadata.resource_version
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                        None
                    }
                    _ => None,
                };
                let mut seen = seen.lock().unwrap();
                if let Some(rv) = rv
                    && !seen.contains(&rv)
                {
                    seen.push(rv);
                }
            }
        });
        // Only once the watch is established can no write slip past it.
        ready_rx.await.expect("the watch starts");
        WriteRecorder { versions, task }
    }
}

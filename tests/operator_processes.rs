//! The real binary, as separate processes: run with the installation's ServiceAccount through a
//! full lifecycle (RBAC is enough, and nothing is refused), and two controller replicas that
//! elect one leader and fail over.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ControlPlane, eventually, hello_manifest, start_emulator, token_secret};
use replicate_operator::emulator::Emulator;
use replicate_operator::emulator::config::DEMO_TOKEN;
use replicate_operator::replicate::{PredictionRequest, ReplicateClient};

const BINARY: &str = env!("CARGO_BIN_EXE_replicate-operator");
const INSTALL_NAMESPACE: &str = "replicate-operator";
const SERVICE_ACCOUNT: &str = "replicate-operator";

/// An operator process; killed when dropped. Its stderr goes to a file the test can read.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(args: &[&str], kubeconfig: &Path, emulator: &Emulator, log: PathBuf) -> Self {
        let stderr = std::fs::File::create(&log).unwrap();
        let child = Command::new(BINARY)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("REPLICATE_API_BASE_URL", emulator.base_url())
            .env("REPLICATE_API_TOKEN", DEMO_TOKEN)
            .env("RUST_LOG", "info")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the operator binary starts");
        Self { child, log }
    }

    fn log(&self) -> String {
        let mut text = String::new();
        std::fs::File::open(&self.log)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    /// Ends the process: SIGTERM (graceful) or SIGKILL (a crash).
    fn stop(&mut self, graceful: bool) {
        let signal = if graceful { "-TERM" } else { "-KILL" };
        Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of a metric without labels, scraped from a process's /metrics.
async fn metric(port: u16, name: &str) -> Option<f64> {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    body.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

async fn reconciles(port: u16) -> f64 {
    let Ok(resp) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return 0.0;
    };
    let body = resp.text().await.unwrap_or_default();
    body.lines()
        .filter(|l| l.starts_with("replicate_operator_reconciles_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn controller_args(metrics_port: u16, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "controller",
        "--namespace",
        "test",
        "--offline-window",
        "300ms",
        "--backoff-base",
        "200ms",
        "--backoff-cap",
        "2s",
        "--metrics-addr",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("127.0.0.1:{metrics_port}"));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_account_can_run_a_full_lifecycle_and_nothing_is_refused() {
    let cp = ControlPlane::start_without_crd().await;
    let emu = start_emulator().await;
    // The installation itself: CRD, namespace, ServiceAccount, RBAC (no Pods run here).
    let base = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
    cp.admin(&["apply", "-k", base, "--server-side"]).ok();
    cp.admin(&[
        "wait",
        "--for=condition=Established",
        "crd/replicatedeployments.replicate-operator.dev",
        "--timeout=60s",
    ])
    .ok();
    let sa = cp.service_account_kubeconfig(INSTALL_NAMESPACE, SERVICE_ACCOUNT);
    let dir = tempfile::tempdir().unwrap();

    let metrics_port = free_port();
    let webhook_port = free_port();
    let lease_ns = format!("--lease-namespace={INSTALL_NAMESPACE}");
    let args = controller_args(
        metrics_port,
        &["--leader-election", &lease_ns, "--webhook-base-url"],
    );
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    let webhook_base = format!("http://127.0.0.1:{webhook_port}");
    args.push(&webhook_base);
    let controller = Process::start(&args, &sa, &emu, dir.path().join("controller.log"));
    let listen = format!("127.0.0.1:{webhook_port}");
    let webhook = Process::start(
        &[
            "webhook",
            "--listen",
            &listen,
            "--namespace",
            "test",
            "--flush-interval-ms",
            "20",
        ],
        &sa,
        &emu,
        dir.path().join("webhook.log"),
    );

    // Credentials from a Secret (get + watch of Secrets), create, Events, status.
    cp.apply(&token_secret("creds", DEMO_TOKEN)).ok();
    cp.apply(&hello_manifest(
        "rbac",
        "  credentialsSecretRef:\n    name: creds\n",
    ))
    .ok();
    cp.wait_condition("rbac", "Ready", "True", "Available")
        .await;
    cp.wait_event("rbac", "Created").await;
    // Update.
    cp.apply(
        &hello_manifest("rbac", "  credentialsSecretRef:\n    name: creds\n")
            .replace("maxInstances: 1", "maxInstances: 2"),
    )
    .ok();
    cp.wait_for("rbac", "jsonpath={.status.observedGeneration}=2", 60)
        .ok();
    cp.wait_condition("rbac", "Ready", "True", "Available")
        .await;

    // A prediction whose webhook reaches the sidecar, which writes the status.
    let url = eventually(
        "the webhook URL in the status",
        Duration::from_secs(30),
        || async { cp.get_rd("rbac").await?.status?.webhook_url },
    )
    .await;
    let account = ReplicateClient::new(emu.client_config())
        .unwrap()
        .account(emu.demo_token());
    let request = PredictionRequest {
        input: serde_json::json!({"text": "hi"}),
        webhook: Some(url),
        webhook_events_filter: None,
    };
    account
        .create_deployment_prediction("demo", "rbac", &request, None)
        .await
        .unwrap();
    eventually(
        "the webhook's effect in the status",
        Duration::from_secs(30),
        || async {
            let counts = cp.get_rd("rbac").await?.status?.predictions?;
            (counts.succeeded == 1).then_some(())
        },
    )
    .await;

    // Delete: offline, deleted on Replicate, finalizer removed.
    cp.run_kubectl(&["delete", "rdep", "rbac", "--timeout=60s"], None)
        .ok();
    assert!(emu.deployment("demo", "rbac").is_none());

    for process in [&controller, &webhook] {
        let log = process.log().to_lowercase();
        assert!(
            !log.contains("forbidden") && !log.contains(" 403"),
            "a call was refused:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_and_fail_over() {
    let cp = ControlPlane::start().await;
    let emu = start_emulator().await;
    cp.admin(&["create", "namespace", "leases"]).ok();
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let start = |i: usize| {
        let identity = format!("--identity=replica-{i}");
        let args = controller_args(
            ports[i],
            &[
                "--leader-election",
                "--lease-namespace=leases",
                "--lease-duration=4s",
                "--lease-grace=1s",
                &identity,
            ],
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Process::start(
            &args,
            cp.kubeconfig(),
            &emu,
            dir.path().join(format!("replica-{i}.log")),
        )
    };
    let mut replicas = [Some(start(0)), Some(start(1))];

    let leader = eventually("exactly one leader", Duration::from_secs(60), || async {
        let a = metric(ports[0], "replicate_operator_leader").await?;
        let b = metric(ports[1], "replicate_operator_leader").await?;
        match (a as u8, b as u8) {
            (1, 0) => Some(0),
            (0, 1) => Some(1),
            _ => None,
        }
    })
    .await;
    let follower = 1 - leader;

    cp.apply(&hello_manifest("led", "")).ok();
    cp.wait_condition("led", "Ready", "True", "Available").await;
    assert!(reconciles(ports[leader]).await > 0.0);
    assert_eq!(
        reconciles(ports[follower]).await,
        0.0,
        "the standby does not reconcile"
    );
    assert_eq!(
        metric(ports[follower], "replicate_operator_leader").await,
        Some(0.0)
    );

    // A crash: the lease is not released, so the standby waits for it to expire.
    let crashed = Instant::now();
    replicas[leader].take().unwrap().stop(false);
    eventually(
        "the standby to take over",
        Duration::from_secs(60),
        || async {
            (metric(ports[follower], "replicate_operator_leader").await? == 1.0).then_some(())
        },
    )
    .await;
    let failover = crashed.elapsed();
    cp.apply(&hello_manifest("after-failover", "")).ok();
    cp.wait_condition("after-failover", "Ready", "True", "Available")
        .await;
    println!(
        "failover after a crash (lease 4 s): {:.1} s",
        failover.as_secs_f64()
    );

    // A graceful stop releases the lease: the restarted replica takes over at once.
    replicas[leader] = Some(start(leader));
    eventually(
        "the restarted replica to serve metrics",
        Duration::from_secs(30),
        || async { metric(ports[leader], "replicate_operator_leader").await },
    )
    .await;
    let stopped = Instant::now();
    replicas[follower].take().unwrap().stop(true);
    eventually(
        "the other replica to take over",
        Duration::from_secs(60),
        || async {
            (metric(ports[leader], "replicate_operator_leader").await? == 1.0).then_some(())
        },
    )
    .await;
    println!(
        "failover after a graceful stop: {:.1} s",
        stopped.elapsed().as_secs_f64()
    );
    let lease = cp
        .admin(&[
            "get",
            "lease",
            "replicate-operator",
            "-n",
            "leases",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .ok();
    assert_eq!(lease.stdout, format!("replica-{leader}"));
}

//! The benchmarks behind `make bench` (driven by `hack/bench.sh`, which writes the report).
//!
//! They measure; they never pass or fail on a number. A benchmark exits non-zero only when it
//! could not run (the control plane did not start, a webhook was refused, counts were lost...).
//!
//! It is an example rather than a `[[bench]]` or a test so that it can use the dev-dependencies
//! (`envtest` for a real kube-apiserver) and the test harness, and still run one benchmark per
//! process: the memory and CPU figures come from `/proc/self`, so each benchmark gets a fresh
//! process to be measured alone.
//!
//! ```sh
//! cargo run --release --example bench -- <verify|commit-memory|commit-kube|controller|rate-limiter>
//! ```
//!
//! Each prints a Markdown section on stdout (the report's tables) and its progress on stderr.
//! Knobs (environment): `BENCH_VERIFY_SECS` (1), `BENCH_WEBHOOKS` (1000), `BENCH_RESOURCES`
//! (200), `BENCH_RESYNC_SECS` (5), `BENCH_LIMITER_REQUESTS` (100), `BENCH_LIMITER_TASKS` (8).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/webhook_common/mod.rs"]
mod webhook_common;

use std::error::Error;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use futures::future::BoxFuture;
use kube::api::Api;
use replicate_operator::crd::ReplicateDeployment;
use replicate_operator::emulator::{Emulator, EmulatorConfig, RateLimitSeed};
use replicate_operator::replicate::{ReplicateClient, RequestOutcome};
use replicate_operator::signature::SigningKey;
use replicate_operator::webhook::apply::SidecarStatus;
use replicate_operator::webhook::bench::{signed_deliveries, verify_all};
use replicate_operator::webhook::kube_store::KubeStore;
use replicate_operator::webhook::secrets::StaticSecrets;
use replicate_operator::webhook::server::{WebhookConfig, WebhookServer};
use replicate_operator::webhook::store::{
    MemoryStore, ResourceInfo, ResourceKey, StatusStore, StoreError, Versioned,
};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

const BENCHMARKS: &str = "verify, commit-memory, commit-kube, controller, rate-limiter";

fn main() -> Result<()> {
    let which = std::env::args().nth(1).unwrap_or_default();
    let section = match which.as_str() {
        // Single-threaded on purpose: the figure is per core.
        "verify" => verify()?,
        "commit-memory" => runtime()?.block_on(commit_memory())?,
        "commit-kube" => runtime()?.block_on(commit_kube())?,
        "controller" => runtime()?.block_on(controller())?,
        "rate-limiter" => runtime()?.block_on(rate_limiter())?,
        other => return Err(format!("unknown benchmark {other:?}; one of: {BENCHMARKS}").into()),
    };
    print!("{section}");
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

// ---------------------------------------------------------------------------------------------
// 1. Webhook verification rate
// ---------------------------------------------------------------------------------------------

fn verify() -> Result<String> {
    let min_time = Duration::from_secs_f64(env_f64("BENCH_VERIFY_SECS", 1.0));
    let key = SigningKey::from_bytes(vec![7; 24]);
    let now = jiff::Timestamp::now();
    let mut rows = Vec::new();
    for body_len in [1024, 16 * 1024] {
        // About 16 MiB of signed bodies, verified in passes until `min_time` is up: signing stays
        // out of the timing, and the set is too large to sit in the CPU caches, like real
        // traffic.
        let n = (16 << 20) / body_len;
        let deliveries = signed_deliveries(&key, n, body_len, now.as_second());
        let keys = std::slice::from_ref(&key);
        let tolerance = Duration::from_secs(300);
        let started = Instant::now();
        let mut verified = 0;
        while started.elapsed() < min_time {
            let ok = verify_all(keys, &deliveries, now, tolerance);
            if ok != n {
                return Err(format!("only {ok} of {n} deliveries verified").into());
            }
            verified += ok;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let rate = verified as f64 / elapsed;
        eprintln!("verify: {body_len} B bodies, {rate:.0} verifications/s");
        rows.push(vec![
            format!("{} KiB", body_len / 1024),
            verified.to_string(),
            format!("{elapsed:.2} s"),
            format!("{rate:.0}"),
            format!("{:.2} µs", 1e6 / rate),
            format!("{:.0} MiB/s", rate * body_len as f64 / (1 << 20) as f64),
        ]);
    }
    let mut out = section("Webhook verification rate");
    out += "Standard Webhooks signature check (HMAC-SHA256 over id, timestamp and body, plus the \
            timestamp tolerance) of pre-signed deliveries, one thread \
            (`webhook::bench::verify_all`).\n\n";
    out += &table(
        &[
            "body",
            "verifications",
            "time",
            "verifications/s",
            "per verification",
            "throughput",
        ],
        &rows,
    );
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// 2. Webhook group commit
// ---------------------------------------------------------------------------------------------

/// What a burst of deliveries came to.
struct Burst {
    total: Duration,
    latencies: Vec<Duration>,
}

/// Sends `deliveries` to `path` all at once, each in its own task, and times every answer.
async fn burst(
    router: &axum::Router,
    path: &str,
    deliveries: Vec<webhook_common::Delivery>,
) -> Result<Burst> {
    let started = Instant::now();
    let tasks: Vec<_> = deliveries
        .into_iter()
        .map(|d| {
            let router = router.clone();
            let request = d.request(path);
            tokio::spawn(async move {
                let sent = Instant::now();
                let (status, body) = webhook_common::send(&router, request).await;
                (status, body, sent.elapsed())
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (status, body, took) = task.await?;
        if status != StatusCode::OK {
            return Err(format!("a delivery was answered {status}: {body}").into());
        }
        latencies.push(took);
    }
    latencies.sort();
    Ok(Burst {
        total: started.elapsed(),
        latencies,
    })
}

/// `n` deliveries of distinct succeeded predictions, signed now by `key`.
fn signed_burst(key: &SigningKey, n: usize) -> Vec<webhook_common::Delivery> {
    (0..n)
        .map(|i| {
            let body = webhook_common::prediction(&format!("p{i:05}"), "succeeded", i as i64);
            webhook_common::Delivery::signed(key, &format!("msg_{i}"), &body, 0)
        })
        .collect()
}

fn burst_rows(b: &Burst, n: usize, store: &CountingStore) -> Vec<Vec<String>> {
    let batches: Vec<String> = store.batch_sizes().iter().map(i64::to_string).collect();
    vec![
        vec!["deliveries (all answered 200)".into(), n.to_string()],
        vec![
            "status writes".into(),
            store.writes.load(Ordering::SeqCst).to_string(),
        ],
        vec!["deliveries per write, in order".into(), batches.join(", ")],
        vec![
            "answer latency p50".into(),
            ms(percentile(&b.latencies, 0.50)),
        ],
        vec![
            "answer latency p99".into(),
            ms(percentile(&b.latencies, 0.99)),
        ],
        vec![
            "answer latency max".into(),
            ms(percentile(&b.latencies, 1.0)),
        ],
        vec![
            "total time (first sent to last answered)".into(),
            ms(b.total),
        ],
        vec![
            "deliveries/s".into(),
            format!("{:.0}", n as f64 / b.total.as_secs_f64()),
        ],
    ]
}

const COMMIT_INTRO: &str = "A burst of concurrent, correctly signed deliveries of distinct \
    predictions to one resource, sent through the sidecar's axum router in-process (no TCP), with \
    the sidecar's default settings (group commit flush interval 100 ms). Latency is per delivery, \
    from sending to the answer; a 200 means the status write holding the delivery is done.\n\n";

async fn commit_memory() -> Result<String> {
    let n = env_usize("BENCH_WEBHOOKS", 1000);
    let key = webhook_common::signing_key(1);
    let memory = Arc::new(MemoryStore::new());
    memory.insert(webhook_common::key(), None);
    let store = Arc::new(CountingStore::new(memory.clone()));
    let server = WebhookServer::new(
        store.clone(),
        Arc::new(StaticSecrets::new(vec![key.clone()])),
        WebhookConfig::default(),
    );
    let deliveries = signed_burst(&key, n);
    let b = burst(&server.router(), &webhook_common::path(), deliveries).await?;
    let status = memory
        .status(&webhook_common::key())
        .ok_or("the resource vanished")?;
    check_counted(status.predictions.map(|p| p.succeeded), n)?;
    eprintln!(
        "commit-memory: {n} webhooks, {} writes, total {:?}",
        memory.writes(),
        b.total
    );
    let mut out = section("Webhook group commit, in-memory store");
    out += COMMIT_INTRO;
    out += &table(&["", "value"], &burst_rows(&b, n, &store));
    Ok(out)
}

async fn commit_kube() -> Result<String> {
    let n = env_usize("BENCH_WEBHOOKS", 1000);
    let name = "burst";
    eprintln!("commit-kube: starting the control plane");
    let cp = common::ControlPlane::start().await;
    tokio::task::block_in_place(|| cp.apply(&common::hello_manifest(name, "")).ok());
    let (kube_store, cache) = KubeStore::new(cp.client.clone(), Some(&cp.namespace));
    // Stopped before the control plane is: kube-apiserver's shutdown waits for open watches
    // to end, which would add ~20 s to the run.
    let _cache = AbortOnDrop(tokio::spawn(cache));
    let store = Arc::new(CountingStore::new(Arc::new(kube_store)));
    let resource = ResourceKey::new(&cp.namespace, name);
    common::eventually(
        "the sidecar's cache to hold the resource",
        Duration::from_secs(60),
        || async {
            (store.is_ready() && matches!(store.lookup(&resource).await, Ok(Some(_)))).then_some(())
        },
    )
    .await;

    let key = webhook_common::signing_key(1);
    let server = WebhookServer::new(
        store.clone(),
        Arc::new(StaticSecrets::new(vec![key.clone()])),
        WebhookConfig::default(),
    );
    let deliveries = signed_burst(&key, n);
    let path = format!("/webhooks/{}/{name}", cp.namespace);
    let b = burst(&server.router(), &path, deliveries).await?;

    let rd = cp.get_rd(name).await.ok_or("the resource vanished")?;
    check_counted(
        rd.status.and_then(|s| s.predictions).map(|p| p.succeeded),
        n,
    )?;
    let writes = store.writes.load(Ordering::SeqCst);
    let reads = store.reads.load(Ordering::SeqCst);
    let conflicts = store.conflicts.load(Ordering::SeqCst);
    eprintln!(
        "commit-kube: {n} webhooks, {writes} writes, total {:?}",
        b.total
    );
    let mut rows = burst_rows(&b, n, &store);
    rows.insert(
        2,
        vec!["status reads (GET status)".into(), reads.to_string()],
    );
    rows.insert(
        3,
        vec!["conflicting writes (409)".into(), conflicts.to_string()],
    );
    let mut out = section("Webhook group commit, real kube-apiserver");
    out += COMMIT_INTRO;
    out += "Here the store is `KubeStore`: lookups from its watch cache, a GET of the status and a \
            conditional server-side apply on the status subresource per batch, against a real \
            etcd + kube-apiserver (envtest). Writes and reads count the API requests the sidecar \
            made.\n\n";
    out += &table(&["", "value"], &rows);
    Ok(out)
}

fn check_counted(succeeded: Option<i64>, n: usize) -> Result<()> {
    match succeeded {
        Some(s) if s == n as i64 => Ok(()),
        other => {
            Err(format!("the status counts {other:?} succeeded predictions, expected {n}").into())
        }
    }
}

/// A [`StatusStore`] that counts the status reads and writes passed on to the one it wraps, and
/// remembers the succeeded count each write stored: its steps are the batch sizes.
struct CountingStore {
    inner: Arc<dyn StatusStore>,
    reads: AtomicU64,
    writes: AtomicU64,
    conflicts: AtomicU64,
    written_counts: Mutex<Vec<i64>>,
}

impl CountingStore {
    fn new(inner: Arc<dyn StatusStore>) -> Self {
        Self {
            inner,
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            written_counts: Mutex::new(Vec::new()),
        }
    }

    /// Deliveries persisted by each successful write, in order (every delivery in the
    /// benchmarks is a distinct succeeded prediction, so each counts one).
    fn batch_sizes(&self) -> Vec<i64> {
        let counts = self.written_counts.lock().unwrap();
        let mut before = 0;
        counts
            .iter()
            .map(|&c| {
                let size = c - before;
                before = c;
                size
            })
            .collect()
    }
}

impl StatusStore for CountingStore {
    fn lookup<'a>(
        &'a self,
        key: &'a ResourceKey,
    ) -> BoxFuture<'a, Result<Option<ResourceInfo>, StoreError>> {
        self.inner.lookup(key)
    }

    fn read_status<'a>(
        &'a self,
        key: &'a ResourceKey,
    ) -> BoxFuture<'a, Result<Option<Versioned>, StoreError>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_status(key)
    }

    fn write_status<'a>(
        &'a self,
        key: &'a ResourceKey,
        resource_version: &'a str,
        status: &'a SidecarStatus,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let result = self.inner.write_status(key, resource_version, status).await;
            match &result {
                Ok(()) => {
                    let succeeded = status.predictions.as_ref().map_or(0, |p| p.succeeded);
                    self.written_counts.lock().unwrap().push(succeeded);
                    self.writes.fetch_add(1, Ordering::SeqCst)
                }
                Err(StoreError::Conflict(_)) => self.conflicts.fetch_add(1, Ordering::SeqCst),
                Err(_) => 0,
            };
            result
        })
    }

    fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Controller at scale
// ---------------------------------------------------------------------------------------------

const DEPLOYMENTS: &str = "/v1/deployments";
const DEPLOYMENT: &str = "/v1/deployments/{owner}/{name}";

async fn controller() -> Result<String> {
    let n = env_usize("BENCH_RESOURCES", 200);
    let resync = Duration::from_secs_f64(env_f64("BENCH_RESYNC_SECS", 5.0));
    let at_start = proc::memory()?;

    eprintln!("controller: starting the control plane");
    let cp = common::ControlPlane::start().await;
    let emu = Emulator::start(EmulatorConfig::fast()).await?;
    let settings = replicate_operator::controller::Settings {
        resync_interval: resync,
        ..common::test_settings()
    };
    let running = cp.start_controller(&emu, settings);
    let metrics = running.metrics.clone();
    let harness_ready = proc::memory()?;

    // Every resource in one `kubectl apply`, as a GitOps tool would send a directory.
    let manifest: Vec<String> = (0..n)
        .map(|i| common::hello_manifest(&format!("bench-{i:04}"), ""))
        .collect();
    let manifest = manifest.join("---\n");
    eprintln!("controller: applying {n} resources");
    let cpu_before_apply = proc::cpu_time()?;
    let started = Instant::now();
    tokio::task::block_in_place(|| cp.apply(&manifest).ok());
    let applied = started.elapsed();
    let api = Api::<ReplicateDeployment>::namespaced(cp.client.clone(), &cp.namespace);
    let timeout = Duration::from_secs(120) + Duration::from_millis(200) * n as u32;
    common::eventually("every resource Ready", timeout, || async {
        let list = api.list(&Default::default()).await.ok()?;
        (list.items.len() == n && list.items.iter().all(is_ready)).then_some(())
    })
    .await;
    let all_ready = started.elapsed();
    let create_cpu = proc::cpu_time()? - cpu_before_apply;
    let create_counters = emu.counters();
    let create_reconciles = metrics.reconcile_count();
    let create_status_writes = metrics.status_write_count();
    let after_create = proc::memory()?;
    eprintln!("controller: {n} Ready after {all_ready:?}");

    // Let every resource have its first resync (it may record the final release number), so
    // the measured window is the steady state only.
    let settled = create_reconciles + n as u64;
    let settle_timeout = 3 * resync + Duration::from_secs(60);
    common::eventually(
        "a first resync of every resource",
        settle_timeout,
        || async { (metrics.reconcile_count() >= settled).then_some(()) },
    )
    .await;

    // Two resync periods of steady state: every resource reconciled twice more.
    emu.reset_counters();
    let reconciles_before = metrics.reconcile_count();
    let writes_before = metrics.status_write_count();
    let cpu_before = proc::cpu_time()?;
    let window_started = Instant::now();
    eprintln!("controller: measuring two resync periods");
    let target = reconciles_before + 2 * n as u64;
    common::eventually(
        "two resyncs of every resource",
        4 * resync + Duration::from_secs(60),
        || async { (metrics.reconcile_count() >= target).then_some(()) },
    )
    .await;
    let window = window_started.elapsed();
    let steady_cpu = proc::cpu_time()? - cpu_before;
    let steady = emu.counters();
    let steady_reconciles = metrics.reconcile_count() - reconciles_before;
    let steady_status_writes = metrics.status_write_count() - writes_before;
    let at_end = proc::memory()?;
    let control_plane_rss = proc::children_rss_kib()?;

    let mut out = section("Controller at scale");
    let _ = write!(
        out,
        "{n} `ReplicateDeployment`s applied in one `kubectl apply` to a real etcd + kube-apiserver \
         (envtest), reconciled by the in-process controller (concurrency 4, resync every \
         {resync:?} ±10 %) against the in-process Replicate emulator (`EmulatorConfig::fast()`, \
         list page size {}).\n\n",
        EmulatorConfig::fast().page_size
    );
    out += "### Creating\n\n";
    out += &table(
        &["", "value"],
        &[
            vec!["resources".into(), n.to_string()],
            vec!["`kubectl apply` took".into(), ms(applied)],
            vec![
                "all Ready after (from the start of the apply)".into(),
                ms(all_ready),
            ],
            vec![
                "all Ready after the apply returned".into(),
                ms(all_ready.saturating_sub(applied)),
            ],
            vec![
                "resources Ready per second".into(),
                format!("{:.1}", n as f64 / all_ready.as_secs_f64()),
            ],
            vec!["reconciles".into(), create_reconciles.to_string()],
            vec!["status writes".into(), create_status_writes.to_string()],
            vec!["process CPU time".into(), ms(create_cpu)],
        ],
    );
    out += "\nReplicate calls until all were Ready (emulator counters):\n\n";
    out += &counter_table(&create_counters);

    out += "\n### Steady state (two resync periods)\n\n";
    out += "Resyncs read a per-account snapshot taken by one paged LIST and reused for a quarter of \
            the resync interval, so resources whose resyncs are spread over the period share up \
            to about four LISTs per period; no GET per resource and no writes are expected.\n\n";
    let writes = steady.count("POST", DEPLOYMENTS)
        + steady.count("PATCH", DEPLOYMENT)
        + steady.count("DELETE", DEPLOYMENT);
    let list_requests = steady.count("GET", DEPLOYMENTS);
    // One LIST of the account takes a request per page, and the emulator holds only our
    // deployments, so the number of whole LISTs follows from the page size.
    let pages_per_list = n.div_ceil(EmulatorConfig::fast().page_size).max(1) as u64;
    let other = steady.total() - list_requests - steady.count("GET", DEPLOYMENT) - writes;
    out += &table(
        &["", "value"],
        &[
            vec!["window".into(), ms(window)],
            vec!["reconciles".into(), steady_reconciles.to_string()],
            vec![
                "Replicate LIST requests (pages of `GET /v1/deployments`)".into(),
                list_requests.to_string(),
            ],
            vec![
                format!("account LISTs ({pages_per_list} pages each)"),
                format!("{:.1}", list_requests as f64 / pages_per_list as f64),
            ],
            vec![
                "Replicate GETs of one deployment".into(),
                steady.count("GET", DEPLOYMENT).to_string(),
            ],
            vec![
                "Replicate writes (POST, PATCH, DELETE)".into(),
                writes.to_string(),
            ],
            vec!["other Replicate calls".into(), other.to_string()],
            vec!["status writes".into(), steady_status_writes.to_string()],
            vec!["process CPU time".into(), ms(steady_cpu)],
            vec![
                "process CPU, share of one core".into(),
                format!(
                    "{:.1} %",
                    100.0 * steady_cpu.as_secs_f64() / window.as_secs_f64()
                ),
            ],
        ],
    );
    out += "\nReplicate calls in the window (emulator counters):\n\n";
    out += &counter_table(&steady);

    out += "\n### Memory\n\n";
    out += "Resident memory of the benchmark process, which holds the controller, the emulator, the \
            test harness and envtest's Go runtime; etcd and kube-apiserver are child processes, \
            shown apart.\n\n";
    out += &table(
        &["moment", "VmRSS", "VmHWM (peak so far)"],
        &[
            vec![
                "process start".into(),
                mib(at_start.rss_kib),
                mib(at_start.hwm_kib),
            ],
            vec![
                "control plane, emulator and controller started".into(),
                mib(harness_ready.rss_kib),
                mib(harness_ready.hwm_kib),
            ],
            vec![
                format!("{n} resources Ready"),
                mib(after_create.rss_kib),
                mib(after_create.hwm_kib),
            ],
            vec![
                "after the steady-state window".into(),
                mib(at_end.rss_kib),
                mib(at_end.hwm_kib),
            ],
            vec![
                "etcd + kube-apiserver (children), at the end".into(),
                mib(control_plane_rss),
                "".into(),
            ],
        ],
    );
    eprintln!(
        "controller: steady state {list_requests} LIST requests, {writes} writes, {steady_status_writes} status writes"
    );
    drop(running);
    Ok(out)
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn is_ready(rd: &ReplicateDeployment) -> bool {
    rd.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn counter_table(counters: &replicate_operator::emulator::Counters) -> String {
    let rows: Vec<Vec<String>> = counters
        .rows()
        .into_iter()
        .map(|r| {
            vec![
                r.method,
                format!("`{}`", r.route),
                r.status.to_string(),
                r.count.to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "(none)\n".into();
    }
    table(&["method", "route", "status", "requests"], &rows)
}

// ---------------------------------------------------------------------------------------------
// 4. Client rate limiter
// ---------------------------------------------------------------------------------------------

async fn rate_limiter() -> Result<String> {
    let n = env_usize("BENCH_LIMITER_REQUESTS", 100);
    let tasks = env_usize("BENCH_LIMITER_TASKS", 8);
    // The emulator enforces Replicate's published budget (3000/min), so an overshoot would show
    // up as 429s.
    let mut config = EmulatorConfig::fast();
    for account in &mut config.seed.accounts {
        account.rate_limit = Some(RateLimitSeed::replicate());
    }
    let emu = Emulator::start(config).await?;
    let throttled = Arc::new(Mutex::new(Vec::new()));
    let mut client_config = emu.client_config();
    let seen = throttled.clone();
    client_config.observer = Some(Arc::new(move |o: &RequestOutcome| {
        seen.lock().unwrap().push((o.throttled, o.status));
    }));
    let budget = client_config.rate_limits.general;
    let account = ReplicateClient::new(client_config)?.account(emu.demo_token());

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (account, next) = (account.clone(), next.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                while next.fetch_add(1, Ordering::SeqCst) < n {
                    account.list_hardware().await?;
                    done.push(started.elapsed());
                }
                Ok::<_, replicate_operator::replicate::ApiError>(done)
            })
        })
        .collect();
    let mut done = Vec::with_capacity(n);
    for worker in workers {
        done.extend(worker.await??);
    }
    done.sort();
    let total = started.elapsed();

    let burst = budget.burst as usize;
    let per_second = f64::from(budget.per_minute) / 60.0;
    // After the initial burst the bucket hands out one token per 1/rate: the pace it keeps.
    let sustained =
        (n > burst + 1).then(|| (n - burst) as f64 / (done[n - 1] - done[burst - 1]).as_secs_f64());
    let observed = throttled.lock().unwrap().clone();
    let max_wait = observed.iter().map(|(w, _)| *w).max().unwrap_or_default();
    let client_429 = observed.iter().filter(|(_, s)| *s == Some(429)).count();
    let emulator_429 = emu.counters().with_status(429);
    let allowed_in_run = budget.burst as f64 + per_second * total.as_secs_f64();
    eprintln!("rate-limiter: {n} requests in {total:?}, {emulator_429} answered 429");

    let mut out = section("Client rate limiter");
    let _ = write!(
        out,
        "{n} `GET /v1/hardware` calls from {tasks} tasks sharing one token, with the default client \
         budget ({} per minute, burst {}), against the emulator enforcing Replicate's published \
         budget (3000 per minute, fixed one-minute windows).\n\n",
        budget.per_minute, budget.burst
    );
    out += &table(
        &["", "value"],
        &[
            vec!["requests".into(), n.to_string()],
            vec!["total time".into(), ms(total)],
            vec![
                "achieved rate, overall (burst included)".into(),
                format!("{:.1} /s", n as f64 / total.as_secs_f64()),
            ],
            vec![
                "achieved rate after the burst".into(),
                sustained.map_or("n/a (no more requests than the burst)".into(), |r| {
                    format!("{r:.1} /s")
                }),
            ],
            vec!["configured rate".into(), format!("{per_second:.1} /s")],
            vec![
                "most the budget allows in this time (burst + rate × time)".into(),
                format!("{allowed_in_run:.0}"),
            ],
            vec!["longest wait for the limiter".into(), ms(max_wait)],
            vec![
                "answers 429 (emulator / client)".into(),
                format!("{emulator_429} / {client_429}"),
            ],
            vec![
                "worst case in any minute (burst + per-minute rate), computed".into(),
                format!("{} of Replicate's 3000", budget.burst + budget.per_minute),
            ],
        ],
    );
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Process figures from `/proc` (Linux only, like the rest of the test harness).
mod proc {
    use std::time::Duration;

    use super::Result;

    /// Resident memory in KiB: now, and the peak so far.
    pub struct Memory {
        pub rss_kib: u64,
        pub hwm_kib: u64,
    }

    pub fn memory() -> Result<Memory> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        Ok(Memory {
            rss_kib: status_kib(&status, "VmRSS:")?,
            hwm_kib: status_kib(&status, "VmHWM:")?,
        })
    }

    fn status_kib(status: &str, field: &str) -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .ok_or(format!("no {field} in /proc/*/status"))?;
        Ok(line[field.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?)
    }

    /// The fields of `/proc/<pid>/stat` after the command name (which may contain spaces), so
    /// index 0 is field 3 (state).
    fn stat_fields(pid: &str) -> Result<Vec<String>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let rest = stat.rsplit_once(')').ok_or("unreadable stat")?.1;
        Ok(rest.split_whitespace().map(str::to_owned).collect())
    }

    /// User + system CPU time of this process, all threads.
    pub fn cpu_time() -> Result<Duration> {
        let fields = stat_fields("self")?;
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        // utime and stime are in USER_HZ ticks, which Linux fixes at 100 per second for user
        // space whatever the kernel's own tick rate.
        Ok(Duration::from_millis(ticks * 10))
    }

    /// The summed VmRSS of this process's direct children (etcd and kube-apiserver).
    pub fn children_rss_kib() -> Result<u64> {
        let me = std::process::id().to_string();
        let mut total = 0;
        for entry in std::fs::read_dir("/proc")? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            // Processes may exit while we look; skip what cannot be read.
            let Ok(fields) = stat_fields(&name) else {
                continue;
            };
            if fields.get(1) == Some(&me)
                && let Ok(status) = std::fs::read_to_string(format!("/proc/{name}/status"))
            {
                total += status_kib(&status, "VmRSS:").unwrap_or(0);
            }
        }
        Ok(total)
    }
}

fn section(title: &str) -> String {
    format!("\n## {title}\n\n")
}

fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", headers.join(" | "));
    out += &format!("|{}\n", "---|".repeat(headers.len()));
    for row in rows {
        out += &format!("| {} |\n", row.join(" | "));
    }
    out
}

/// The `q` quantile (0..=1) of sorted durations, nearest rank.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn env_usize(name: &str, default: usize) -> usize {
    env_number(name, default)
}

fn env_f64(name: &str, default: f64) -> f64 {
    env_number(name, default)
}

/// A knob from the environment; a value that is not a number is an error, not the default, so
/// a typo cannot silently measure something else.
fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

//! `make run` end to end: the demo program (`examples/run_local.rs`) starts a control plane, the
//! emulator, the sidecar and the controller, gets through its demo to the ready line, and on
//! SIGINT stops everything it started, removes its run directory and exits 0.
//!
//! It runs the compiled example the way `hack/run-local.sh` does. `cargo test` builds the
//! examples before running tests; a filtered build (`cargo test --test make_run_smoke`) does not,
//! so build it first in that case: `cargo build --example run_local`.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the example prints once everything is up and the demo has run.
const READY_LINE: &str = "replicate-operator demo: ready";
/// Generous: a debug build on two busy cores; a warm machine needs about ten seconds.
const READY_TIMEOUT: Duration = Duration::from_secs(240);
/// The example gives each component 10 s to stop.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// `…/debug/deps/make_run_smoke-<hash>` → `…/debug/examples/run_local`.
fn example_binary() -> PathBuf {
    let test = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps");
    let binary = profile_dir.join("examples").join("run_local");
    assert!(
        binary.is_file(),
        "{} is missing: `cargo test` builds it, a filtered run does not; \
         run `cargo build --example run_local` first",
        binary.display()
    );
    // A filtered `cargo test` does not rebuild examples either: refuse to test an old build.
    let built = modified(&binary);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![root.join("examples/run_local.rs"), root.join("Cargo.lock")];
    collect_files(&root.join("src"), &mut sources);
    if let Some(newer) = sources.iter().find(|source| modified(source) > built) {
        panic!(
            "{} is older than {}: run `cargo build --example run_local` (or a full `cargo test`)",
            binary.display(),
            newer.display()
        );
    }
    binary
}

fn modified(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn collect_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, into);
        } else {
            into.push(path);
        }
    }
}

/// The demo process, killed if the test fails before it exits by itself.
struct Demo {
    child: Child,
    run_dir: PathBuf,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: mpsc::Receiver<String>,
}

impl Demo {
    fn start(run_dir: &Path) -> Self {
        let mut child = Command::new(example_binary())
            .env("REPLICATE_OPERATOR_RUN_DIR", run_dir)
            .env_remove("RUN_EXIT_AFTER_DEMO")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the example starts");
        // Readers on threads, so a wait can time out instead of blocking on a read.
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (tx, stderr) = mpsc::channel();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            let _ = tx.send(text);
        });
        Self {
            child,
            run_dir: run_dir.to_owned(),
            lines,
            stdout: Vec::new(),
            stderr,
        }
    }

    /// Reads stdout until `line_start` appears; panics with the whole output on timeout or exit.
    fn wait_for_line(&mut self, line_start: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.starts_with(line_start);
                    self.stdout.push(line);
                    if found {
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.fail(&format!("no line {line_start:?} within {timeout:?}"))
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    self.fail(&format!(
                        "the example ended ({status:?}) before printing {line_start:?}"
                    ))
                }
            }
        }
    }

    /// Waits for the process to exit by itself.
    fn wait_for_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            // Stdout ends when the process does (it has no children that keep it open once it
            // has stopped them); then collect the status.
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.stdout.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.fail(&format!("still running {timeout:?} after SIGINT"))
                }
            }
        }
        match self.child.wait() {
            Ok(status) => status,
            Err(e) => self.fail(&format!("waiting for the example: {e}")),
        }
    }

    fn output(&self) -> String {
        self.stdout.join("\n")
    }

    fn fail(&mut self, what: &str) -> ! {
        self.clean_up();
        let stderr = self
            .stderr
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_default();
        panic!(
            "{what}\n--- stdout ---\n{}\n--- stderr ---\n{stderr}",
            self.output()
        );
    }

    /// After a failure: asks the demo to stop (so it stops its control plane), then kills
    /// whatever is left of it, so a failed run leaks nothing into the next one.
    fn clean_up(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = self.child.id().to_string();
            let _ = Command::new("kill").args(["-INT", &pid]).status();
            let deadline = Instant::now() + EXIT_TIMEOUT;
            // Polling is fine here: this only runs once the test has already failed.
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        kill_all(&processes_using(&self.run_dir));
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // Does nothing after a clean exit; after a failed assertion it stops what is running.
        self.clean_up();
    }
}

/// SIGKILL: a kube-apiserver whose etcd is gone can take minutes over SIGTERM.
fn kill_all(processes: &[(u32, String)]) {
    for (pid, _) in processes {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// The address printed on the line starting with `label` (after the indentation), e.g.
/// `  webhook sidecar  http://127.0.0.1:41234  (…)`.
fn address_after(output: &str, label: &str) -> SocketAddr {
    let line = output
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no line for {label:?} in:\n{output}"));
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://") || w.starts_with("https://"))
        .unwrap_or_else(|| panic!("no URL on {line:?}"));
    let authority = url.split("://").nth(1).unwrap().split('/').next().unwrap();
    authority
        .parse()
        .unwrap_or_else(|e| panic!("{authority:?} in {line:?}: {e}"))
}

fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

/// Processes whose command line mentions `dir`, as (pid, command line).
fn processes_using(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")
        .expect("/proc is readable")
        .flatten()
    {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes may end while we look; a missing file is no finding.
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(&needle) && pid != std::process::id() {
            found.push((pid, cmdline.trim().to_owned()));
        }
    }
    found
}

fn program_name(cmdline: &str) -> &str {
    let program = cmdline.split(' ').next().unwrap_or_default();
    program.rsplit('/').next().unwrap_or(program)
}

#[test]
fn make_run_reaches_ready_and_leaves_nothing_behind_after_sigint() {
    let parent = tempfile::tempdir().unwrap();
    let run_dir = parent.path().join("run");
    let mut demo = Demo::start(&run_dir);
    demo.wait_for_line(READY_LINE, READY_TIMEOUT);
    let output = demo.output();

    // The demo did what it says before the ready line.
    for expected in ["hello-world", "existing-llama", "sdxl-team-a"] {
        assert!(
            output.contains(expected),
            "{expected} is not in the output:\n{output}"
        );
    }
    assert!(
        output.contains(r#"{"aborted":0,"canceled":0,"failed":1,"succeeded":4}"#),
        "the prediction counts are not in the output:\n{output}"
    );

    // What must be gone afterwards is there now, so the checks below can fail.
    let addresses = [
        ("control plane", address_after(&output, "control plane")),
        ("emulator", address_after(&output, "Replicate API")),
        ("webhook sidecar", address_after(&output, "webhook sidecar")),
    ];
    for (what, addr) in addresses {
        assert!(listening(addr), "the {what} is not listening on {addr}");
    }
    let running = processes_using(&run_dir);
    for program in ["etcd", "kube-apiserver"] {
        assert!(
            running.iter().any(|(_, cmd)| program_name(cmd) == program),
            "no {program} with {} in its command line; running: {running:#?}",
            run_dir.display()
        );
    }
    assert!(
        run_dir.join("kubeconfig").is_file(),
        "no kubeconfig in {}",
        run_dir.display()
    );

    let pid = demo.child.id().to_string();
    let sent = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill -INT {pid} failed");
    let status = demo.wait_for_exit(EXIT_TIMEOUT);
    if !status.success() {
        demo.fail(&format!("exit status {status} after SIGINT, expected 0"));
    }

    let left = processes_using(&run_dir);
    if !left.is_empty() {
        kill_all(&left);
        panic!("still running after the demo exited: {left:#?}");
    }

    // The control plane's port is left out: other tests start API servers on random ports all
    // the time, and its processes are checked above.
    for (what, addr) in &addresses[1..] {
        assert!(
            !listening(*addr),
            "something still listens on the {what}'s address {addr}"
        );
    }
    assert!(!run_dir.exists(), "{} was not removed", run_dir.display());
}

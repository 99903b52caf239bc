#!/usr/bin/env bash
# Runs the benchmarks (examples/bench.rs) in release mode and writes a Markdown report:
# the machine, the commit, and one section of tables per benchmark.
#
#   make bench                      (builds the control plane first if needed)
#   hack/bench.sh [name...]         some benchmarks only: verify commit-memory commit-kube
#                                   controller rate-limiter
#   BENCH_REPORT=path               where the report goes (default $CARGO_TARGET_DIR/bench-report.md)
#   BENCH_RESOURCES=200 BENCH_RESYNC_SECS=5 BENCH_WEBHOOKS=1000 BENCH_VERIFY_SECS=1
#   BENCH_LIMITER_REQUESTS=100 BENCH_LIMITER_TASKS=8
#
# The benchmarks measure; none fails on a number. Each runs in its own process, so memory and
# CPU figures belong to that benchmark alone. Every benchmark runs even when one errors, and
# the script then exits non-zero, naming the ones that did.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[bench] %s\n' "$*" >&2; }

: "${CARGO_TARGET_DIR:=$PWD/target}"
export CARGO_TARGET_DIR
REPORT="${BENCH_REPORT:-$CARGO_TARGET_DIR/bench-report.md}"
if (($#)); then benchmarks=("$@"); else
  benchmarks=(verify commit-memory commit-kube controller rate-limiter)
fi

log "building (release)"
cargo build --locked --release --quiet --example bench
# Through cargo rather than the binary itself: the envtest crate links a Go shared library from
# its build directory, which cargo puts on the loader path (as `cargo test` does).
run_bench() { cargo run --locked --release --quiet --example bench -- "$@"; }

mkdir -p "$(dirname "$REPORT")"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git status --porcelain 2>/dev/null)" ]]; then commit="$commit (with uncommitted changes)"; fi
cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
mem_kib="$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\) kB/\1/p' /proc/meminfo)"
{
  echo "# replicate-operator benchmarks"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| date | $(date -u +'%Y-%m-%d %H:%M UTC') |"
  echo "| git commit | $commit |"
  echo "| machine | $(nproc) CPUs${cpu:+ ($cpu)}, $((mem_kib / 1024)) MiB memory, $(uname -sr) |"
  echo "| Rust | $(rustc --version) |"
  echo "| Kubernetes (envtest) | ${K8S_VERSION:-1.37.2} |"
  echo "| settings | BENCH_RESOURCES=${BENCH_RESOURCES:-200} BENCH_RESYNC_SECS=${BENCH_RESYNC_SECS:-5} BENCH_WEBHOOKS=${BENCH_WEBHOOKS:-1000} BENCH_LIMITER_REQUESTS=${BENCH_LIMITER_REQUESTS:-100} |"
  echo
  echo "Measurements, not pass/fail checks; the machine is shared, so expect some noise."
} >"$REPORT"

failed=()
for name in "${benchmarks[@]}"; do
  log "running $name"
  out="$(mktemp)"
  started=$SECONDS
  status=0
  run_bench "$name" >"$out" || status=$?
  if ((status == 0)); then
    cat "$out" >>"$REPORT"
    log "$name done in $((SECONDS - started)) s"
  else
    failed+=("$name")
    printf '\n## %s\n\nFAILED (exit status %s); see the output of `make bench`.\n' "$name" "$status" >>"$REPORT"
    log "$name FAILED (exit status $status)"
  fi
  rm -f "$out"
done

echo
cat "$REPORT"
echo
log "report written to $REPORT"
if ((${#failed[@]})); then
  log "failed: ${failed[*]}"
  exit 1
fi

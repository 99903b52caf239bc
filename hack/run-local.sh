#!/usr/bin/env bash
# `make run`: the operator on a local control plane (etcd + kube-apiserver) against the Replicate
# emulator, with the samples applied. No Replicate account and no cluster needed.
#
#   hack/run-local.sh                      run until Ctrl-C
#   hack/run-local.sh --exit-when-ready    stop after the demo (or RUN_EXIT_AFTER_DEMO=1)
#
# The program itself is examples/run_local.rs. It is built in the dev profile, which `make test`
# builds too, so on a machine that has run the tests it starts in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

# `make run` has built the control-plane binaries already; run directly, build them if missing.
if [[ -z "${KUBEBUILDER_ASSETS:-}" ]]; then
  KUBEBUILDER_ASSETS=$(hack/envtest-assets.sh)
  export KUBEBUILDER_ASSETS
fi

# Built first with cargo's usual progress output (the first build takes minutes), then started
# quietly. exec: Ctrl-C and SIGTERM go straight to the demo (cargo run execs it in turn), which
# stops everything it started.
cargo build --locked --example run_local
exec cargo run --locked --quiet --example run_local -- "$@"

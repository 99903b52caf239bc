#!/usr/bin/env bash
# Makes sure the tools the build and the tests need are on this machine, installing what is
# missing where it can (as root, from Debian's packages). Idempotent and quiet when all is there.
#   Go     builds the control-plane binaries and the envtest crate's Go side.
#   clang  is needed by bindgen, which the envtest crate runs at build time.
#   cargo  builds the operator.
set -euo pipefail
log() { printf '[ensure-tools] %s\n' "$*" >&2; }

missing=()
command -v go >/dev/null || missing+=(golang-go)
command -v clang >/dev/null || missing+=(clang)
[[ -n "$(ls /usr/lib/llvm-*/lib/libclang*.so* 2>/dev/null)" ]] || missing+=(libclang-dev)
command -v python3 >/dev/null || missing+=(python3)

if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "missing: ${missing[*]} (install them, e.g. apt-get install ${missing[*]})"
    exit 1
  fi
fi
command -v cargo >/dev/null || { log "cargo is missing: install Rust (rustup), 1.89 or newer"; exit 1; }
go_minor=$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
if [[ -n "$go_minor" && "$go_minor" -lt 26 ]]; then
  log "Go $(go env GOVERSION) is too old: Kubernetes 1.37 needs Go 1.26 or newer"
  exit 1
fi

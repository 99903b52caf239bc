#!/usr/bin/env bash
# Builds etcd, kube-apiserver and kubectl from Go modules (the envtest download buckets are out
# of reach here) and caches them outside the repository, keyed by version.
#
#   hack/envtest-assets.sh            build if missing, print the asset directory last
#   K8S_VERSION=1.36.3 hack/...       another release (every k8s.io module follows it)
#
# Idempotent: a complete cache directory is reused as it is.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-1.37.2}"
CACHE_ROOT="${REPLICATE_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/replicate-operator}"
ASSETS="$CACHE_ROOT/envtest/$K8S_VERSION"
WORK="$CACHE_ROOT/envtest-build/$K8S_VERSION"
STAGING_VERSION="v0.${K8S_VERSION#1.}"

log() { printf '[envtest-assets] %s\n' "$*" >&2; }

if [[ -x "$ASSETS/etcd" && -x "$ASSETS/kube-apiserver" && -x "$ASSETS/kubectl" && -f "$ASSETS/.complete" ]]; then
  log "cached: $ASSETS"
  echo "$ASSETS"
  exit 0
fi

command -v go >/dev/null || { log "go is required to build the control plane"; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$WORK" "$ASSETS"
cd "$WORK"

log "Kubernetes v$K8S_VERSION (staging modules $STAGING_VERSION) in $WORK"
if [[ ! -f go.mod ]]; then
  go mod init replicate-operator.local/envtest-assets >/dev/null 2>&1
fi

# k8s.io/kubernetes pins its staging modules at v0.0.0 with replace directives into its own tree,
# which a consumer ignores; replace each with its published twin. The list comes from its go.mod.
log "resolving k8s.io/kubernetes@v$K8S_VERSION"
gomod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
[[ -f "$gomod" ]] || { log "could not download k8s.io/kubernetes@v$K8S_VERSION"; exit 1; }
staging=$(sed -n 's#.*=> \./staging/src/\(k8s\.io/[a-z0-9-]*\).*#\1#p' "$gomod" | sort -u)
log "$(echo "$staging" | wc -l) staging modules replaced"
for m in $staging; do
  go mod edit -replace "$m=$m@$STAGING_VERSION"
done
go mod edit -require "k8s.io/kubernetes@v$K8S_VERSION"

cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
log "go mod tidy (downloads modules on a cold cache; several minutes)"
go mod tidy -e >/dev/null 2>tidy.log || { cat tidy.log >&2; exit 1; }

build() {
  local out=$1 pkg=$2
  log "building $out ($pkg)"
  local start=$SECONDS
  go build -trimpath -ldflags "-s -w" -o "$ASSETS/$out.tmp" "$pkg"
  mv "$ASSETS/$out.tmp" "$ASSETS/$out"
  log "built $out in $((SECONDS - start)) s"
}
build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kubectl k8s.io/kubernetes/cmd/kubectl
echo "$K8S_VERSION" > "$ASSETS/.complete"
log "done: $ASSETS"
echo "$ASSETS"

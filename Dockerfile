# syntax=docker/dockerfile:1
#
# The replicate-operator image: one static-ish binary (controller, webhook and crd subcommands)
# on a distroless base, run as the unprivileged user 65532.
#
#   docker build -t replicate-operator:dev .
#
# Not built in this project's CI (no container engine there); see docs/deploy.md.

# Build on Debian 12 so the binary's glibc matches the runtime image below.
ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and target/ between builds (BuildKit); the binary is
# copied out because a cache mount is not part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin replicate-operator \
    && install -D -m 0755 target/release/replicate-operator /out/replicate-operator

# cc: glibc and libgcc, which the Rust standard library links against; no shell, no package
# manager. The :nonroot tag already runs as 65532; USER says so explicitly for scanners and for
# runAsNonRoot checks, which need a numeric user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/replicate-operator /usr/local/bin/replicate-operator
USER 65532:65532
# Documentation only: metrics/health of `controller`, webhooks of `webhook` (deploy/).
EXPOSE 8080 8443
ENTRYPOINT ["/usr/local/bin/replicate-operator"]

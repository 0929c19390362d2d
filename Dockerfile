# syntax=docker/dockerfile:1
#
# The cutover sidecar image: the Rust binary on distroless/cc (glibc, libgcc, CA
# certificates; no shell, no package manager), running as the unprivileged user 65532.
#
#   docker build -t ghcr.io/example/cutover:0.1.0 .
#
# The build needs no protoc (build.rs compiles proto/ with protox) and no network beyond
# crates.io. The final stage's ENTRYPOINT and CMD are checked by tests/it/deploy.rs.

# Same Debian release in both stages, so the binary's glibc matches the runtime's.
FROM rust:1-bookworm AS build
WORKDIR /src
# Cargo reads every target the manifest declares (benches/, tests/it/) before building
# anything, so the whole source tree goes in (.dockerignore keeps target/ and .git out).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cutover \
 && cp target/release/cutover /cutover

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /cutover /cutover
# Numeric, so that Kubernetes' runAsNonRoot can check it without a runAsUser.
USER 65532:65532
# 2379: the etcd API (the config's `listen`; loopback by default); 9180: the admin API
# (`admin.listen`: probes, /metrics, /v1/status).
EXPOSE 2379 9180
ENTRYPOINT ["/cutover"]
CMD ["serve", "--config", "/etc/cutover/cutover.yaml"]

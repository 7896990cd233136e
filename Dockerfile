# syntax=docker/dockerfile:1
# flowgate's container image: a static (musl) binary on distroless, running as non-root.
#
#   docker build -t ghcr.io/flowgate/flowgate:0.1.0 .
#
# The chart (charts/flowgate) runs it with a read-only root filesystem; the only writable paths
# are /var/lib/flowgate (the SQLite ledger) and /tmp, both volumes.

# --- build ----------------------------------------------------------------------------------
# Alpine's Rust targets musl, so the binary is statically linked. The toolchain the test suite
# runs on; at least Cargo.toml's rust-version.
FROM rust:1.95-alpine AS build
# C toolchain for the bundled SQLite (rusqlite) and ring.
RUN apk add --no-cache musl-dev gcc
WORKDIR /src
# Only what the build reads (see .dockerignore); benches/ because Cargo.toml declares a bench.
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin flowgate \
 && cp target/release/flowgate /flowgate \
 && mkdir -p /data
# Fail the build if the binary is not static.
RUN ! ldd /flowgate 2>/dev/null | grep -q '=>'

# --- run ------------------------------------------------------------------------------------
# static-debian12: CA certificates (Flowise/JWKS over HTTPS), /etc/passwd with `nonroot`, no
# shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /flowgate /flowgate
# The working directory holds the default ledger (sqlite://./flowgate-ledger.db) when no volume
# or FLOWGATE_LEDGER_URL says otherwise.
COPY --from=build --chown=65532:65532 /data /var/lib/flowgate
WORKDIR /var/lib/flowgate
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/flowgate"]
CMD ["run"]

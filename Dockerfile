# syntax=docker/dockerfile:1
# Images for users' clusters and for `make e2e-kind`:
#   docker build --target node     -t raftkv/raftkv-node:<version> .
#   docker build --target operator -t raftkv/raftkv-operator:<version> .
# Not buildable on the development machines (no container engine); `make lint`
# checks its syntax with dockerfile-utils (see e2e/kind/check.sh).

FROM rust:1.95-bookworm AS build
# libclang: rust-rocksdb generates its bindings with bindgen at build time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Release profile inside the image; the dev machines use one dev profile for
# tests and binaries, which does not apply here.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
    && mkdir -p /out \
    && cp target/release/raftkv-node target/release/kvctl target/release/raftkv-operator /out/

FROM debian:bookworm-slim AS runtime-base
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# The nodes and the operator never need root; the data directory is a volume
# owned by this user (fsGroup 65532 in the StatefulSet).
USER 65532:65532

FROM runtime-base AS node
COPY --from=build /out/raftkv-node /out/kvctl /usr/local/bin/
EXPOSE 2379 2380 2381 8080
# The operator always sets the container command; this default serves
# `docker run` users.
CMD ["/usr/local/bin/raftkv-node", "--data-dir", "/var/lib/raftkv"]

FROM runtime-base AS operator
COPY --from=build /out/raftkv-operator /out/kvctl /usr/local/bin/
EXPOSE 8080
CMD ["/usr/local/bin/raftkv-operator"]

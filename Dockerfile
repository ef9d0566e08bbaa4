# The burrow binaries (producer, worker, burrow) on a slim Debian image.
#
# Dependencies are compiled in a layer of their own (cargo-chef): the recipe holds only what
# Cargo.toml and Cargo.lock say, so a change to burrow's sources reuses that layer and rebuilds
# burrow alone. .dockerignore keeps target/ and .git out of the build context.
FROM lukemathwalker/cargo-chef:latest-rust-1.88.0-bookworm AS chef
WORKDIR /src

FROM chef AS plan
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=plan /src/recipe.json recipe.json
RUN cargo chef cook --release --bins --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
# ca-certificates: amqps:// and https:// verify servers against the system's CAs. curl: the
# compose healthchecks probe /readyz with it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/burrow burrow \
    && mkdir -p /var/lib/burrow \
    && chown burrow /var/lib/burrow
COPY --from=build /src/target/release/producer /src/target/release/worker /src/target/release/burrow /usr/local/bin/
COPY topology /etc/burrow/topology
WORKDIR /var/lib/burrow
USER burrow
ENV BURROW__TOPOLOGY=/etc/burrow/topology/shop.toml BURROW__STORE__DIR=/var/lib/burrow
EXPOSE 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:9100/readyz || exit 1
ENTRYPOINT []
CMD ["worker", "fulfillment", "--http", "0.0.0.0:9100"]

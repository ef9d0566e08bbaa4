# The burrow binaries (producer, worker, burrow) on a slim Debian image.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/burrow burrow && mkdir -p /var/lib/burrow && chown burrow /var/lib/burrow
COPY --from=build /src/target/release/producer /src/target/release/worker /src/target/release/burrow /usr/local/bin/
COPY topology /etc/burrow/topology
WORKDIR /var/lib/burrow
USER burrow
ENV BURROW__TOPOLOGY=/etc/burrow/topology/shop.toml BURROW__STORE__DIR=/var/lib/burrow
ENTRYPOINT []
CMD ["worker", "fulfillment", "--http", "0.0.0.0:9100"]

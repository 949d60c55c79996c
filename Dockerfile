# ordersync as a container image: built with the locked dependencies, run as a non-root user on
# a distroless base. SQLite files go to /data (mount a volume there); the config is read from
# /etc/ordersync/config.toml (ORDERSYNC_CONFIG).
#
#   docker build -t ordersync .
#   docker run -v ordersync-data:/data -v ./config.toml:/etc/ordersync/config.toml:ro ordersync

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
COPY migrations migrations
# sqlx-core with TCP_NODELAY on its connections (vendor/sqlx-core/PATCHED.md).
COPY vendor vendor
# Build flags of the bundled SQLite (.cargo/config.toml).
COPY .cargo .cargo
# The manifest names the benchmarks; they are not built.
COPY benches benches
RUN cargo build --release --locked --bin ordersync \
    && mkdir /data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/ordersync /usr/local/bin/ordersync
COPY --from=build --chown=65532:65532 /data /data
USER 65532:65532
WORKDIR /data
ENV ORDERSYNC_CONFIG=/etc/ordersync/config.toml
# 8321: /healthz, /readyz, /metrics (and the admin API); 8322: webhooks. Both need
# `listen = "0.0.0.0:…"` in the config to be reached from outside the container.
EXPOSE 8321 8322
VOLUME ["/data"]
ENTRYPOINT ["ordersync"]
CMD ["run"]

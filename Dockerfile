# backupd and backupctl in one image (docker-compose.yml, deploy/k8s/).
FROM rust:1.85-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p backupd -p backupctl

FROM debian:bookworm-slim
# curl for the healthchecks; postgresql-client for PostgreSQL sources (pg_ctl is not needed
# by the daemon itself).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl postgresql-client \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/backupd backupd \
 && mkdir -p /var/lib/backupd/keys /var/lib/backupd/data /etc/backupd \
 && chown -R backupd /var/lib/backupd
COPY --from=build /src/target/release/backupd /src/target/release/backupctl /usr/local/bin/
USER backupd
WORKDIR /var/lib/backupd
EXPOSE 8080
ENTRYPOINT ["backupd"]
CMD ["--config", "/etc/backupd/backupd.toml", "--listen", "0.0.0.0:8080"]

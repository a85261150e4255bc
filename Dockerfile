# syntax=docker/dockerfile:1
# llmsrouter: multi-stage build, small non-root runtime image.
#   docker build -t llmsrouter:latest .
#   docker run -d --name llmsrouter --network host --env-file .env \
#     -v $(pwd)/config.yaml:/app/config.yaml llmsrouter:latest

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# The same command CI runs (.ci/run), so a green CI means this step builds.
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin llmsrouter \
 && mkdir -p /app/data \
 && chown -R llmsrouter:llmsrouter /app
COPY --from=build /src/target/release/llmsrouter /usr/local/bin/llmsrouter
COPY config.yaml.template /app/config.yaml.template
WORKDIR /app
# users.db (users and the usage ledger) and the request log live in /app/data: mount a volume
# there to keep them. config.yaml is read from /app/config.yaml, as the Python version's was.
ENV LLMSROUTER_DB=/app/data/users.db \
    LLMSROUTER_LOG_FILE=/app/data/api_proxy.log
VOLUME ["/app/data"]
USER llmsrouter
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 CMD ["llmsrouter", "healthcheck"]
ENTRYPOINT ["llmsrouter"]
CMD ["serve"]

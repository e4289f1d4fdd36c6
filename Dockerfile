# Multi-stage build: compile with the Rust toolchain, run on a small Debian base as non-root.
#   docker build -t wshub .
#   docker run -p 5289:5289 wshub
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin wshub

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home wshub
COPY --from=build /src/target/release/wshub /usr/local/bin/wshub
USER 10001
EXPOSE 5289
# Listen on all interfaces inside the container; everything else from WSHUB_* variables.
# Probe /healthz and /readyz from the orchestrator (the image has no HTTP client).
ENV WSHUB_LISTEN=0.0.0.0:5289 \
    WSHUB_LOG_FORMAT=json \
    WSHUB_ECHO_ENDPOINT=false \
    WSHUB_ANNOUNCE=none
ENTRYPOINT ["/usr/local/bin/wshub", "serve"]

# simplepush container image: build with Rust, run on Debian slim as a non-root user.
#
#   docker build -t simplepush .
#   docker run -d --name simplepush -p 8080:8080 \
#       -e SIMPLEPUSH_SERVER_PUBLIC_URL=https://push.example.com \
#       -e SIMPLEPUSH_ENDPOINT_TOKEN_KEYS="$(head -c32 /dev/urandom | basenc --base64url)" \
#       --ulimit nofile=1100000:1100000 simplepush
#
# Configuration: /etc/simplepush/config.toml is config.sample.toml (every default) listening on
# 0.0.0.0:8080 with its data in /var/lib/simplepush; override any key with
# -e SIMPLEPUSH_<SECTION>_<KEY>=..., or mount a file over it (the image sets no SIMPLEPUSH_*
# variable, so every key of a mounted file counts):
#   -v $PWD/config.toml:/etc/simplepush/config.toml:ro
# Set at least:
#   SIMPLEPUSH_SERVER_PUBLIC_URL    the URL devices' endpoints are built from; unset, endpoints read
#                                   http://0.0.0.0:8080/..., which no app server can reach.
#   SIMPLEPUSH_ENDPOINT_TOKEN_KEYS  unset, every container start makes a new random key and all
#                                   endpoints handed out before die.
# The admin listener (GET /metrics, /health, /status, /__lbheartbeat__, /__heartbeat__,
# /__version__) stays on the container's loopback
# (127.0.0.1:8081) unless SIMPLEPUSH_ADMIN_LISTEN=0.0.0.0:8081 is set; do not publish it publicly.
#
# File descriptors: one per connection. Without --ulimit nofile=N:N the container gets the
# daemon's default (often 1048576, sometimes a soft limit of 1024), and the server refuses
# connections beyond it. N cannot exceed the host's fs.nr_open (deploy/sysctl.d/90-simplepush.conf).
# Raise server.max_connections (default 100000) along with it.
# At a million connections prefer --network host: published ports go through Docker's NAT and
# conntrack (one entry per connection) or its userland proxy (two more descriptors per connection),
# and net.core.somaxconn and the tcp_rmem/wmem settings are per network namespace (else pass them
# with --sysctl). See README, "Running at a million connections".

# ---- build --------------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
# Only what the build reads: the workspace manifests and lock file, build.rs (the commit and date
# that GET /__version__ reports), and the three members' sources.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY sm ./sm
COPY loadtest ./loadtest
# Cache mounts keep the crates.io downloads and compiled dependencies between builds (they need
# BuildKit, the default builder since Docker 23; the legacy builder rejects RUN --mount).
# The release profile keeps line tables (debug = 1); the image gets a stripped copy.
# .git is not in the build context, so /__version__ says "commit":"unknown" unless it is passed:
#   docker build --build-arg GIT_COMMIT="$(git rev-parse HEAD)" -t simplepush .
ARG GIT_COMMIT=
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin simplepush \
 && strip --strip-debug -o /simplepush target/release/simplepush

# ---- runtime ------------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 simplepush \
 && useradd --system --uid 10001 --gid simplepush --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin simplepush \
 && install -d -m 0700 -o 10001 -g 10001 /var/lib/simplepush
COPY --from=build /simplepush /usr/local/bin/simplepush
COPY config.sample.toml /etc/simplepush/config.toml
# The image's config is the sample with two values changed in the file: server.listen (the sample's
# 127.0.0.1 is unreachable from outside the container) and storage.path (the disk store, the
# sample's default, keeps its file and the generated endpoint key there: mount a volume, docker run
# -v simplepush-data:/var/lib/simplepush, so they outlive the container). Not as ENV
# SIMPLEPUSH_SERVER_LISTEN and the like: a variable wins over the file, so it would also win over a
# config mounted in place of this one, whose listen and path would then be ignored. The checks fail
# the build if the sample's lines change.
RUN sed -i -e 's|^listen = "127.0.0.1:8080"$|listen = "0.0.0.0:8080"|' \
        -e 's|^path = "data"$|path = "/var/lib/simplepush"|' /etc/simplepush/config.toml \
 && grep -qx 'listen = "0.0.0.0:8080"' /etc/simplepush/config.toml \
 && grep -qx 'path = "/var/lib/simplepush"' /etc/simplepush/config.toml
ENV RUST_LOG=info
VOLUME /var/lib/simplepush
USER 10001:10001
EXPOSE 8080
# SIGTERM: stop accepting, close device sockets over server.drain_ms, exit within
# drain_ms + shutdown_timeout_ms (5 s + 3 s by default). `docker stop` waits only 10 s before
# SIGKILL: use `docker stop -t 30` (or --stop-timeout 30 at `docker run`) if you raise them.
STOPSIGNAL SIGTERM
# Liveness: GET /__lbheartbeat__ on the admin listener (admin.listen, 127.0.0.1:8081 in the
# container: the check runs inside it), 200 while the event loops turn. It does not look at
# storage: a memcached blip must not mark every container unhealthy at once, and restarting them
# would drop every device. Readiness (storage reachable, not draining) is GET /__heartbeat__, for
# whatever routes traffic. The slim image has no curl; bash's /dev/tcp speaks the one request
# instead. Change the port here if SIMPLEPUSH_ADMIN_LISTEN moves it (admin.listen = "" turns the
# listener off, and this check with it).
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8081 && printf 'GET /__lbheartbeat__ HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -c 12 <&3 | grep -q ' 200'"]
ENTRYPOINT ["/usr/local/bin/simplepush"]
CMD ["--config", "/etc/simplepush/config.toml"]

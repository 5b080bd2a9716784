# Shell pieces shared by bench.sh and soak.sh (sourced, not run).

# Whether nothing on this machine uses TCP port $1.
port_free() { ! ss -Htan "( sport = :$1 )" 2>/dev/null | grep -q .; }

# The first free port from $1 on (200 tried); fails when there is none.
free_port_from() {
    local p=$1
    for _ in $(seq 200); do port_free "$p" && { echo "$p"; return 0; }; p=$((p + 1)); done
    return 1
}

# A benchmark server's configuration on stdout: listen PORT, WORKERS event loops, token key KEY,
# then any more TOML ($4). No ping limit (testers ping freely) and no admin listener: its default
# port would be shared by every server a run starts.
server_config() {
    cat <<CONF
[server]
listen = "127.0.0.1:$1"
max_connections = 100000
workers = $2

[websocket]
min_ping_interval_ms = 0

[endpoint]
token_keys = ["$3"]

[admin]
listen = ""
${4:-}
CONF
}

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
# then any more TOML ($4). No ping limit (testers ping freely), no per-source rate limits (the
# tester makes thousands of devices a second from 127.0.0.1) and no admin listener: its default
# port would be shared by every server a run starts.
server_config() {
    cat <<CONF
[server]
listen = "127.0.0.1:$1"
max_connections = 100000
workers = $2

[websocket]
min_ping_interval_ms = 0

[rate_limit]
new_uaids_per_minute = 0
registers_per_minute = 0

[endpoint]
token_keys = ["$3"]

[admin]
listen = ""
${4:-}
CONF
}

# Kernel slab memory in KiB, "sockets proc_inodes": the caches a TCP connection's objects live in
# (socket, its inode and dentry, file, epoll entry, kmalloc'd pieces) and proc_inode_cache, which
# grows only when something lists /proc/PID/fd of a process holding the sockets.
slab_kib() {
    awk 'NR > 2 && $1 ~ /^(TCP|tcp_bind_bucket|request_sock_TCP|sock_inode_cache|dentry|filp|eventpoll_epi|eventpoll_pwq|kmalloc-.*)$/ { s += $3 * $4 }
         NR > 2 && $1 == "proc_inode_cache" { p += $3 * $4 }
         END { printf "%d %d\n", s / 1024, p / 1024 }' /proc/slabinfo 2>/dev/null || echo "0 0"
}

# Appends slab_kib to $1 once a second until killed (start it in the background).
slab_sampler() { while :; do slab_kib >>"$1"; sleep 1; done; }

# From a slab_sampler file: "sockets proc_inodes" growth from the first line to the peak, in KiB.
slab_growth() {
    awk 'NR == 1 { s0 = $1; p0 = $2 } { if ($1 - s0 > s) s = $1 - s0; if ($2 - p0 > p) p = $2 - p0 } END { printf "%d %d\n", s, p }' "$1" 2>/dev/null || echo "? ?"
}

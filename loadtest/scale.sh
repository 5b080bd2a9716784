#!/usr/bin/env bash
# The 200,000-connection run on one machine: a cluster of NODES simplepush processes sharing one
# memcached, each holding its share of the devices (a process may hold at most ~19,000 sockets
# here), held by one `connect` tester run over every node (--ws-url lists them all; its child
# processes share the phases and it writes one report). Once all are connected, a sample of
# devices spread over the nodes gets updates, each sent through the next node (--endpoint-base in
# the same order), so every one is stored in memcached and routed between nodes; when the holders
# are still there 310 s in (at a million devices: they stay 100 s + HOLD after the last connected),
# the same sample runs again while the nodes ping every device for the first time. Loopback only;
# everything started is stopped (trap).
#
# Usage: loadtest/scale.sh [FILE]   appends a markdown section to FILE (default BENCHMARKS.md).
# Environment: SCALE_CONNECTIONS or SCALE_DEVICES (default 200000), SCALE_NODES (default: enough
# for 18,500 devices each, at least 11; a node takes at most 18,620), SCALE_SAMPLE (devices that get updates, default 1000),
# SCALE_RATE (updates per second, default 500), SCALE_HOLD (seconds of updates, default 22: 11,000 in the sample),
# SCALE_MIN_AVAILABLE_MIB (abort when MemAvailable falls below it, default 3072), SCALE_RAMP (new
# connections per second, all tester processes together; default 0: as fast as they complete) and
# SCALE_MAX_HANDSHAKES (connections in their handshake at once, all processes together; default
# 3000: enough to keep two cores busy, few enough that each finishes well within the tester's 15 s).
# At 1,000,000: `make scale SCALE_CONNECTIONS=1000000` (55 nodes, 56 tester processes; the kernel
# must allow 2 million descriptors and, where connection tracking is on, 1.1 million entries: the
# script checks both and says which sysctl to raise).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-$ROOT/BENCHMARKS.md}"
DEVICES="${SCALE_CONNECTIONS:-${SCALE_DEVICES:-200000}}"
# A node may hold 18,620 devices here: 19,000 descriptors (RLIMIT_NOFILE 20,000 less the
# server's reserve of 1,000) less the 2 % kept for app-server requests and cluster forwards.
NODE_MAX=18620
AUTO_NODES=$(( (DEVICES + 18499) / 18500 ))
[ "$AUTO_NODES" -lt 11 ] && AUTO_NODES=11
NODES="${SCALE_NODES:-$AUTO_NODES}"
SAMPLE="${SCALE_SAMPLE:-1000}"
RATE="${SCALE_RATE:-500}"
HOLD="${SCALE_HOLD:-22}"
RAMP="${SCALE_RAMP:-0}"
MAX_HANDSHAKES="${SCALE_MAX_HANDSHAKES:-3000}"
PER=$(( (DEVICES + NODES - 1) / NODES ))
SERVER_BIN="$ROOT/target/release/simplepush"
TESTER_BIN="$ROOT/target/release/simplepush-loadtest"
WORK="$(mktemp -d /tmp/simplepush-scale.XXXXXX)"
PIDS=()
SERVERS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

command -v memcached >/dev/null || { echo "scale.sh: needs memcached" >&2; exit 2; }
command -v jq >/dev/null || { echo "scale.sh: needs jq" >&2; exit 2; }
if [ "$PER" -gt "$NODE_MAX" ]; then
    echo "scale.sh: $PER devices per node is over the $NODE_MAX a process can hold here; raise SCALE_NODES" >&2
    exit 2
fi

# Both ends of every connection are on this machine: two descriptors, and one tracked connection
# when the kernel tracks connections (a NAT or firewall rule loads nf_conntrack).
need_files=$(( DEVICES * 2 + 100000 ))
if [ "$(cut -f3 /proc/sys/fs/file-nr)" -lt "$need_files" ]; then
    echo "scale.sh: fs.file-max is under $need_files; raise it: sysctl -w fs.file-max=$need_files" >&2
    exit 2
fi
if [ -r /proc/sys/net/netfilter/nf_conntrack_max ]; then
    need_tracked=$(( DEVICES + 100000 ))
    if [ "$(cat /proc/sys/net/netfilter/nf_conntrack_max)" -lt "$need_tracked" ]; then
        echo "scale.sh: connection tracking is on and nf_conntrack_max is under $need_tracked; raise it: sysctl -w net.netfilter.nf_conntrack_max=$need_tracked" >&2
        exit 2
    fi
fi
MIN_AVAILABLE_MIB="${SCALE_MIN_AVAILABLE_MIB:-3072}"
mem_available_mib() { awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo; }
meminfo_kib() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
sockstat_mem_pages() { awk '/^TCP:/ {for (i=1;i<NF;i++) if ($i=="mem") print $(i+1)}' /proc/net/sockstat; }
. loadtest/lib.sh

echo "== building (release)"
cargo build --release -p simplepush -p simplepush-loadtest

MC_PORT="$(free_port)"
# -M: no eviction, as the server requires (evicting would drop pushes already answered 2xx).
# About 0.5 KiB per device; room for twice that.
MC_MIB=$(( DEVICES / 1000 ))
[ "$MC_MIB" -lt 512 ] && MC_MIB=512
memcached -l 127.0.0.1 -p "$MC_PORT" -U 0 -m "$MC_MIB" -M -c 4096 -u root &
MC_PID=$!
PIDS+=($!)
sleep 0.3

SECRET="$(head -c24 /dev/urandom | basenc --base64url)"
KEY="$(head -c32 /dev/urandom | basenc --base64url)"
slab_sampler "$WORK/slab" &
PIDS+=($!)
sock_before="$(sockstat_mem_pages)"
avail_before="$(mem_available_mib)"
slab_before="$(meminfo_kib Slab)"
for i in $(seq 0 $((NODES - 1))); do
    port="$(free_port)"
    rport="$(free_port)"
    cat >"$WORK/node$i.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
workers = 1
max_connections = 19000
# 380 kept for the sample's requests and forwards between nodes: 18,620 for devices.
reserved_percent = 2

[websocket]
min_ping_interval_ms = 0

# The tester makes thousands of devices a second from 127.0.0.1.
[rate_limit]
new_uaids_per_minute = 0
registers_per_minute = 0

[endpoint]
token_keys = ["$KEY"]

[admin]
# Off: the default port would be one for all eleven nodes.
listen = ""

[storage]
backend = "memcached"
servers = ["127.0.0.1:$MC_PORT"]
# One storage thread: a node sees under a hundred devices a second here, and every thread
# more is more context switches on two cores shared by 53 nodes.
pool_size = 1

[cluster]
router_listen = "127.0.0.1:$rport"
secret = "$SECRET"
EOF
    RUST_LOG=warn "$SERVER_BIN" --config "$WORK/node$i.toml" >"$WORK/node$i.log" 2>&1 &
    PIDS+=($!)
    SERVERS+=("$!:$port")
done
sleep 1
rss_before=0
for s in "${SERVERS[@]}"; do rss_before=$(( rss_before + $(rss_kib "${s%%:*}") )); done

WS_URLS=""; BASES=""
for s in "${SERVERS[@]}"; do
    WS_URLS="$WS_URLS${WS_URLS:+,}ws://127.0.0.1:${s##*:}/"
    BASES="$BASES${BASES:+,}http://127.0.0.1:${s##*:}"
done
# Tester processes: at most 18,000 devices each (a process may hold ~19,000 sockets here).
PROCS=$(( (DEVICES + 17999) / 18000 ))
[ "$PROCS" -lt 2 ] && PROCS=2
echo "== $NODES nodes, $PER devices each, one tester run of $PROCS processes"
start=$(date +%s)
# The holders keep their devices for HOLD + 100 s after the connect phase, long enough for the
# sample that starts once all are connected; then every device is pinged and closed.
"$TESTER_BIN" connect --no-progress --ws-url "$WS_URLS" --procs "$PROCS" \
    --connections "$DEVICES" --channels 1 --duration $(( HOLD + 100 )) \
    --ramp "$RAMP" --max-handshakes "$MAX_HANDSHAKES" --source-addrs "127.0.1.1-127.0.1.$(( PROCS * 2 ))" \
    --max-seconds 900 --json "$WORK/holders.json" >"$WORK/holders.log" 2>&1 &
PIDS+=($!)
HOLDERS=$!
# MemAvailable once a second; below the floor the tester is stopped (and so is the run).
(
    low="$avail_before"
    while kill -0 "$HOLDERS" 2>/dev/null; do
        a="$(mem_available_mib)"
        [ "$a" -lt "$low" ] && low=$a && echo "$low" >"$WORK/mem_low"
        if [ "$a" -lt "$MIN_AVAILABLE_MIB" ]; then
            echo "MemAvailable $a MiB is under $MIN_AVAILABLE_MIB MiB: stopping the tester" | tee "$WORK/aborted"
            pkill -TERM -P "$HOLDERS" 2>/dev/null; kill -TERM "$HOLDERS" 2>/dev/null
            break
        fi
        sleep 1
    done
) &
PIDS+=($!)
echo "$avail_before" >"$WORK/mem_low"

# Wait until every device is connected (or 240 s, 360 s from 500,000 on, or no growth for 30 s),
# then sample memory.
WAIT_CONNECT=240
[ "$DEVICES" -ge 500000 ] && WAIT_CONNECT=360
PORTS=()
for s in "${SERVERS[@]}"; do PORTS+=("${s##*:}"); done
python3 loadtest/wait_connected.py --devices "$DEVICES" --start "$start" --timeout "$WAIT_CONNECT" \
    --abort "$WORK/aborted" "${PORTS[@]}" | tee "$WORK/wait.log"
read -r peak_clients connected_after < <(tail -1 "$WORK/wait.log")
rss_after=0
for s in "${SERVERS[@]}"; do rss_after=$(( rss_after + $(rss_kib "${s%%:*}") )); done
sock_after="$(sockstat_mem_pages)"
sockstat="$(grep '^TCP:' /proc/net/sockstat)"
slab_after="$(meminfo_kib Slab)"
tester_kib=0
for p in $HOLDERS $(pgrep -P "$HOLDERS" || true); do tester_kib=$(( tester_kib + $(rss_kib "$p") )); done
mc_kib="$(rss_kib "$MC_PID")"

# The sample: SAMPLE more devices over the nodes, RATE updates a second for HOLD s to them.
sample_run() {
    "$TESTER_BIN" notify --no-progress --ws-url "$WS_URLS" \
        --endpoint-base "$BASES" --connections "$SAMPLE" --channels 1 \
        --rate "$RATE" --duration "$HOLD" --source-addrs "$1" --max-seconds 300 \
        --json "$WORK/$2.json" >"$WORK/$2.log" 2>&1 || true
    cat "$WORK/$2.log"
}
echo "== sample: $SAMPLE more devices over the nodes, $RATE updates/s for $HOLD s, each through the next node"
sample_run 127.0.200.1 sample

# A node pings each device 300 s after it was last heard (websocket.auto_ping_interval_secs):
# from then on, a million devices connected over about 250 s are pinged about 4,000 a second,
# as a host holding them would be all day. A second sample runs in that round if the holders
# are still there (they leave HOLD + 100 s after the last device connected).
PING_AT=310
ping_sample="not run: the holders left before the first ping round (${PING_AT} s)"
if [ $(( connected_after + 100 )) -gt $(( PING_AT + 15 )) ]; then
    wait_s=$(( start + PING_AT - $(date +%s) ))
    [ "$wait_s" -gt 0 ] && sleep "$wait_s"
    echo "== sample in the first ping round, from $(( $(date +%s) - start )) s"
    sample_run 127.0.202.1 ping_sample
    ping_sample="ran"
fi

echo "== waiting for the holders to finish"
wait "$HOLDERS" || true
cat "$WORK/holders.log"
j="$WORK/holders.json"
ok=0; failed=0; ping_ok=0; ping_failed=0; per_node="?"
if [ -s "$j" ]; then
    ok="$(jq -r '.connections.ok' "$j")"
    failed="$(jq -r '.connections.failed' "$j")"
    ping_ok="$(jq -r '.connections.ping_ok' "$j")"
    ping_failed="$(jq -r '.connections.ping_failed' "$j")"
    per_node="$(jq -r '[.connections.by_target[] | .ok] | "\(min)-\(max)"' "$j")"
else
    echo "the holders wrote no result; see $WORK/holders.log"
fi
sample="$WORK/sample.json"
sent="$(jq -r '.notifications.sent // 0' "$sample" 2>/dev/null || echo 0)"
received="$(jq -r '.notifications.received // 0' "$sample" 2>/dev/null || echo 0)"
lost="$(jq -r '.notifications.lost // 0' "$sample" 2>/dev/null || echo 0)"
unanswered="$(jq -r '.notifications.unanswered // 0' "$sample" 2>/dev/null || echo 0)"
lat="$(jq -r '.latency_us | "\(.p50/1000) / \(.p99/1000) / \(.p99_9/1000) / \(.max/1000) ms"' "$sample" 2>/dev/null || echo "?")"
if [ "$ping_sample" = ran ]; then
    ping_sample="$(jq -r '"\(.notifications.sent) / \(.notifications.received) / \(.notifications.lost) / \(.notifications.unanswered); " + (.latency_us | "\(.p50/1000) / \(.p99/1000) / \(.p99_9/1000) / \(.max/1000) ms")' "$WORK/ping_sample.json" 2>/dev/null || echo "? (see $WORK/ping_sample.log)")"
fi

page_kib=$(( $(getconf PAGESIZE) / 1024 ))
user_mib=$(( (rss_after - rss_before) / 1024 ))
sock_mib=$(( (sock_after - sock_before) * page_kib / 1024 ))
read -r slab_kib_grown proc_kib_grown < <(slab_growth "$WORK/slab")
per_conn() { awk -v k="$1" -v n="$ok" 'BEGIN { if (k !~ /^[0-9]+$/ || n + 0 == 0) print "?"; else printf "%.0f", k * 1024 / n }'; }
{
    echo
    echo "## $DEVICES connections: a $NODES-node cluster on one machine — $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)"
    echo
    echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/^Mem:/ {print $2}') GiB."
    echo "\`SCALE_DEVICES=$DEVICES SCALE_NODES=$NODES SCALE_RATE=$RATE SCALE_HOLD=$HOLD SCALE_RAMP=$RAMP SCALE_MAX_HANDSHAKES=$MAX_HANDSHAKES loadtest/scale.sh\` (\`make scale\`):"
    echo "$NODES simplepush processes (1 event loop each, memcached backend, cluster routing) sharing one memcached;"
    echo "one \`simplepush-loadtest connect\` run of $PROCS processes over all $NODES nodes (--ws-url lists them; device i"
    echo "on node i mod $NODES, $PER per node) holding $DEVICES devices × 1 channel, then pinging and closing them in shared"
    echo "phases; once all were connected, \`simplepush-loadtest notify\` added $SAMPLE devices over the nodes and sent"
    echo "$RATE updates/s for $HOLD s to them, each through the next node (--endpoint-base in the same order), so every"
    echo "update was stored in memcached and forwarded between nodes."
    echo
    echo "| figure | value |"
    echo "|---|---|"
    echo "| devices connected (hello + register) / failed | $ok / $failed (peak seen in /status: $peak_clients, after $connected_after s) |"
    echo "| sample updates sent / received / lost / unanswered | $sent / $received / $lost / $unanswered |"
    echo "| sample latency update → notification p50 / p99 / p99.9 / max | $lat |"
    echo "| the same sample again in the first ping round (from ${PING_AT} s): sent / received / lost / unanswered; p50 / p99 / p99.9 / max | $ping_sample |"
    echo "| servers' RSS, all $NODES processes, growth | $user_mib MiB ($(( user_mib * 1048576 / (ok > 0 ? ok : 1) )) bytes per connection) |"
    echo "| kernel TCP buffer memory (/proc/net/sockstat mem), growth | $sock_mib MiB |"
    echo "| kernel socket objects (slab: TCP, inodes, dentries, files, epoll, kmalloc), peak growth, both ends | $(( slab_kib_grown / 1024 )) MiB ($(per_conn "$slab_kib_grown") bytes per connection) |"
    echo "| of it, proc_inode_cache (grows only when something lists /proc/PID/fd) | $(( proc_kib_grown / 1024 )) MiB ($(per_conn "$proc_kib_grown") bytes per connection) |"
    echo "| devices per node (least-most) / end-of-hold ping answered, not | $per_node / $ping_ok, $ping_failed |"
    echo "| /proc/net/sockstat at the peak | \`$sockstat\` |"
    echo "| /proc/meminfo Slab, growth to the peak | $(( (slab_after - slab_before) / 1024 )) MiB |"
    echo "| tester RSS, all processes, at the peak | $(( tester_kib / 1024 )) MiB ($(per_conn "$tester_kib") bytes per connection) |"
    echo "| memcached RSS at the peak | $(( mc_kib / 1024 )) MiB ($(per_conn "$mc_kib") bytes per device) |"
    echo "| server side per connection: servers' RSS + kernel TCP buffers + half the socket slab | $(awk -v u="$user_mib" -v k="$sock_mib" -v s="$slab_kib_grown" -v n="$ok" 'BEGIN { if (n + 0 == 0) print "?"; else printf "%.0f bytes", (u * 1048576 + k * 1048576 + s * 512) / n }') |"
    echo "| MemAvailable before / lowest (abort floor $MIN_AVAILABLE_MIB MiB) | $avail_before / $(cat "$WORK/mem_low") MiB$( [ -e "$WORK/aborted" ] && echo ": **aborted**, $(cat "$WORK/aborted")") |"
    echo
    echo "The kernel figures count both ends of every connection (server and tester share the machine)."
} >>"$OUT"
echo "== results appended to $OUT"
tail -20 "$OUT"

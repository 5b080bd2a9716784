#!/usr/bin/env bash
# Standard benchmark of simplepush on this machine (loopback only), in about two minutes:
#   1. connect: 19,000 devices x 1 channel held 10 s (server RSS per connection, CPU per hello+register)
#   2. notify: 1,000 PUT/s for 20 s to 19,000 held devices (latency p50/p99/p99.9, loss)
#   3. notify ladder: 2k, 5k, 10k, 20k PUT/s for 10 s each (highest rate with p99 <= 10 ms, no loss)
#   4. churn: connect/hello/register/close cycles for 30 s
#   5. offline: 2,000 devices closed, one PUT each (202), reconnect, time to the flushed version
# It builds the server and the tester in release mode, starts a fresh server for each scenario
# (memory store, RUST_LOG=warn) and always stops it (trap). Each tester run prints its summary;
# a markdown section (commands, machine, figures) is appended to FILE, and each run writes an HTML
# report with charts (latency, connections and rates, server RSS and CPU over time) to
# loadtest/reports/<date>-<run>.html (BENCH_REPORTS names another directory), listed in the section.
#
# Usage: loadtest/bench.sh [FILE]      FILE defaults to BENCHMARKS.md in the repository root.
# Environment: BENCH_PORT (first port tried, default 18480), BENCH_SRC (source addresses for the
# tester, default 127.0.0.2-127.0.0.20), BENCH_HTTP_CONNS (keep-alive HTTP connections the tester
# sends its PUTs on in the notify scenarios, default 64), BENCH_RATES (ladder, default "2000 5000 10000 20000"),
# BENCH_WORKERS (server event loops, default 0 = one per core), BENCH_BACKEND (the server's store:
# memory (default), memcached (a memcached -M started fresh for every scenario; its CPU and the
# server's commands and system calls per memcached command are reported) or disk (a fresh data
# directory per scenario; the store file's bytes per device are reported)), BENCH_SCENARIOS (which
# to run, default "connect notify ladder churn offline"; with the disk backend also "startup":
# BENCH_STARTUP_DEVICES (default 1000000) registered by churn at BENCH_STARTUP_RATE (default 5000/s),
# then the time from start to serving after SIGTERM and after SIGKILL).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. loadtest/lib.sh
OUT="${1:-$ROOT/BENCHMARKS.md}"
SRC="${BENCH_SRC:-127.0.0.2-127.0.0.20}"
RATES="${BENCH_RATES:-2000 5000 10000 20000}"
# Event loops of the server (0 = one per core).
WORKERS="${BENCH_WORKERS:-0}"
DEVICES=19000
# The app server's pool of keep-alive connections for PUTs. The server answers one request per
# connection at a time (as Go's net/http and most servers do, pipelined or not), so a pool of 8
# caps a store that answers in 5 ms at 1,600 PUT/s; app servers keep larger pools.
HTTP_CONNS="${BENCH_HTTP_CONNS:-64}"
BACKEND="${BENCH_BACKEND:-memory}"
SCENARIOS="${BENCH_SCENARIOS:-connect notify ladder churn offline}"
MC_PID=""
SERVER_BIN="$ROOT/target/release/simplepush"
TESTER_BIN="$ROOT/target/release/simplepush-loadtest"
WORK="$(mktemp -d /tmp/simplepush-bench.XXXXXX)"
SERVER_PID=""
PROGRESS=()
[ -t 2 ] || PROGRESS=(--no-progress)

case "$BACKEND" in
    memory | disk) ;;
    memcached) command -v memcached >/dev/null || { echo "bench.sh: needs memcached (apt-get install memcached)" >&2; exit 2; } ;;
    *) echo "bench.sh: BENCH_BACKEND must be memory, memcached or disk, not '$BACKEND'" >&2; exit 2 ;;
esac

for tool in jq curl; do
    command -v "$tool" >/dev/null || { echo "bench.sh: needs $tool (apt-get install $tool)" >&2; exit 2; }
done

stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}
stop_memcached() {
    [ -n "$MC_PID" ] || return 0
    kill -KILL "$MC_PID" 2>/dev/null || true
    wait "$MC_PID" 2>/dev/null || true
    MC_PID=""
}
cleanup() {
    stop_server
    stop_memcached
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT="$(free_port_from "${BENCH_PORT:-18480}")" || { echo "bench.sh: no free port found from ${BENCH_PORT:-18480}" >&2; exit 1; }
WS="ws://127.0.0.1:$PORT/"

KEY="$(head -c32 /dev/urandom | basenc --base64url)"
CONFIG="$WORK/server.toml"
STORAGE=""
case "$BACKEND" in
    memcached)
        MC_PORT="$(free_port_from $((PORT + 200)))" || { echo "bench.sh: no free port for memcached" >&2; exit 1; }
        STORAGE="[storage]
backend = \"memcached\"
servers = [\"127.0.0.1:$MC_PORT\"]"
        ;;
    disk)
        STORAGE="[storage]
backend = \"disk\"
path = \"$WORK/data\""
        ;;
esac
server_config "$PORT" "$WORKERS" "$KEY" "$STORAGE" >"$CONFIG"
ADMIN=""
if [ "$BACKEND" = memcached ]; then
    # The admin listener, for the server's own memcached counters.
    APORT="$(free_port_from $((PORT + 300)))" || { echo "bench.sh: no free admin port" >&2; exit 1; }
    ADMIN="http://127.0.0.1:$APORT/metrics"
    sed -i "s|^listen = \"\"\$|listen = \"127.0.0.1:$APORT\"|" "$CONFIG"
fi

echo "== building (release)"
cargo build --release -p simplepush -p simplepush-loadtest

# A fresh memcached (no eviction, as production must run it) for the next scenario.
start_memcached() {
    stop_memcached
    memcached -l 127.0.0.1 -p "$MC_PORT" -U 0 -m 4096 -c 8192 -M -u "$(id -un)" >>"$WORK/memcached.log" 2>&1 &
    MC_PID=$!
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$MC_PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench.sh: memcached did not start" >&2
    exit 1
}

# memcached's "curr_items bytes" now.
mc_items_bytes() {
    exec 3<>"/dev/tcp/127.0.0.1/$MC_PORT" || { echo "0 0"; return; }
    printf 'stats\r\nquit\r\n' >&3
    tr -d '\r' <&3 | awk '$2 == "curr_items" { i = $3 } $2 == "bytes" { b = $3 } END { print i + 0, b + 0 }'
    exec 3<&-
}

# CPU ticks (user + system) a process has used.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# The server's memcached counters: "commands syscalls".
mc_counters() {
    curl -sf "$ADMIN" 2>/dev/null | awk '/^simplepush_memcached_commands_total / { c = $2 } /^simplepush_memcached_syscalls_total / { s = $2 } END { print c + 0, s + 0 }'
}

start_server() {
    stop_server
    [ "$BACKEND" = memcached ] && start_memcached
    [ "$BACKEND" = disk ] && rm -rf "$WORK/data"
    RUST_LOG=warn "$SERVER_BIN" --config "$CONFIG" >>"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 50); do
        curl -sf "http://127.0.0.1:$PORT/status" >/dev/null 2>&1 && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "bench.sh: the server did not start; its log:" >&2
    cat "$WORK/server.log" >&2
    exit 1
}

# Kernel counter of connections dropped because a listen queue was full.
listen_overflows() {
    awk '/^TcpExt:/ { if (!h) { for (i = 2; i <= NF; i++) n[$i] = i; h = 1 } else print $(n["ListenOverflows"]) }' /proc/net/netstat
}

# run NAME ARGS...: one tester run against a fresh server; JSON in $WORK/NAME.json.
run() {
    local name=$1
    shift
    start_server
    local cmd=("$TESTER_BIN" "$@" --ws-url "$WS" --source-addrs "$SRC" --server-pid "$SERVER_PID"
        --max-seconds "${MAX_SECONDS:-150}" --json "$WORK/$name.json" --html "$REPORTS/$STAMP-$name.html")
    local shown="simplepush-loadtest $* --ws-url $WS --source-addrs $SRC --server-pid \$PID --json $name.json"
    echo "$shown" >"$WORK/$name.cmd"
    echo
    echo "== $name: $shown"
    local before mc_before
    before=$(listen_overflows)
    if [ "$BACKEND" = memcached ]; then
        mc_before="$(cpu_ticks "$MC_PID") $(mc_counters)"
    fi
    # Kernel slab memory once a second through the run (the connect scenario's figure per
    # connection is its peak growth; its hold spans several of the server's 5 s metric samples).
    slab_sampler "$WORK/$name.slab" &
    local sampler=$!
    if ! "${cmd[@]}" "${PROGRESS[@]}" | tee "$WORK/$name.txt"; then
        echo "the tester failed in $name (see its output above)" >>"$WORK/notes"
    fi
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
    echo $(($(listen_overflows) - before)) >"$WORK/$name.overflows"
    if [ "$BACKEND" = disk ]; then
        stat -c %s "$WORK/data/simplepush.redb" >"$WORK/$name.diskbytes" 2>/dev/null || true
    fi
    if [ "$BACKEND" = memcached ]; then
        # "ticks commands syscalls" used by memcached and the server's memcached client in the run.
        echo "$mc_before $(cpu_ticks "$MC_PID") $(mc_counters)" |
            awk '{ print $4 - $1, $5 - $2, $6 - $3 }' >"$WORK/$name.mc"
        mc_items_bytes >"$WORK/$name.mcmem"
    fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "bench.sh: the server died during $name" | tee -a "$WORK/notes"
        SERVER_PID=""
    fi
    stop_server
}

STARTED=$(date +%s)
STAMP="$(date -u '+%Y-%m-%d-%H%M')"
REPORTS="${BENCH_REPORTS:-$ROOT/loadtest/reports}"
mkdir -p "$REPORTS"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
# Processes using >= 5% CPU right now (over one second): they compete with the server and tester.
BUSY_BEFORE="$(top -b -n2 -d1 -w512 | awk '/^top -/ { n++ } n == 2 && $1 ~ /^[0-9]+$/ && $9 + 0 >= 5 { printf "%s%s (pid %s) %s%% CPU", sep, $12, $1, $9; sep = "; " }')"
if [ -n "$BUSY_BEFORE" ]; then
    echo "bench.sh: warning: other processes are busy, figures will be lower than on an idle machine: $BUSY_BEFORE" >&2
fi

wanted() { [[ " $SCENARIOS " == *" $1 "* ]]; }
wanted connect && run connect connect --connections $DEVICES --channels 1 --duration 10
wanted notify && run notify notify --connections $DEVICES --channels 1 --rate 1000 --duration 20 --http-conns "$HTTP_CONNS"
if wanted ladder; then
    for r in $RATES; do
        run "ladder-$r" notify --connections $DEVICES --channels 1 --rate "$r" --duration 10 --grace 3 --http-conns "$HTTP_CONNS"
    done
fi
wanted churn && run churn churn --connections 1000 --rate 2000 --duration 30
wanted offline && run offline offline --connections 2000 --channels 1

# ms from starting the server on the data already there until it answers /status.
time_start() {
    local t0
    t0=$(date +%s%N)
    RUST_LOG=info "$SERVER_BIN" --config "$CONFIG" >>"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 600); do
        curl -sf "http://127.0.0.1:$PORT/status" >/dev/null 2>&1 && break
        sleep 0.05
    done
    echo $((($(date +%s%N) - t0) / 1000000))
}

if wanted startup && [ "$BACKEND" = disk ]; then
    N="${BENCH_STARTUP_DEVICES:-1000000}"
    R="${BENCH_STARTUP_RATE:-5000}"
    MAX_SECONDS=$(((N + R - 1) / R + 120)) run startup churn --connections 1000 --rate "$R" --duration $(((N + R - 1) / R))
    # `run` stopped the server with SIGTERM: a clean start, then one after kill -9.
    stat -c %s "$WORK/data/simplepush.redb" >"$WORK/startup.bytes"
    time_start >"$WORK/startup.clean"
    grep -o 'disk store [^:]*: [0-9]* UAIDs[^)]*)' "$WORK/server.log" | tail -1 >"$WORK/startup.log"
    # kill -9 in the middle of writes (registrations arriving), so the next start finds a file
    # that was not closed.
    "$TESTER_BIN" churn --connections 200 --rate 2000 --duration 4 --max-seconds 30 --ws-url "$WS" \
        --source-addrs "$SRC" --no-progress >"$WORK/startup-writes.txt" 2>&1 &
    WRITER=$!
    sleep 2
    kill -KILL "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
    wait "$WRITER" 2>/dev/null || true
    time_start >"$WORK/startup.crash"
    grep -o 'disk store [^:]*: [0-9]* UAIDs[^)]*)' "$WORK/server.log" | tail -1 >"$WORK/startup.crashlog"
    stop_server
fi

ELAPSED=$(($(date +%s) - STARTED))

# ---- markdown ----
j() { jq -r "$2" "$WORK/$1.json" 2>/dev/null || echo "?"; }
ms() { awk -v x="$1" 'BEGIN { if (x !~ /^-?[0-9.eE+]+$/) print "?"; else printf "%.2f ms", x / 1000 }'; }
mib() { awk -v x="$1" 'BEGIN { if (x !~ /^-?[0-9.eE+]+$/) print "?"; else printf "%.1f MiB", x / 1048576 }'; }
num() { awk -v x="$1" 'BEGIN { if (x !~ /^-?[0-9.eE+]+$/) print "?"; else printf "%.0f", x }'; }
lat() { # name -> "p50 / p99 / p99.9 / max"
    echo "$(ms "$(j "$1" .latency_us.p50)") / $(ms "$(j "$1" .latency_us.p99)") / $(ms "$(j "$1" .latency_us.p99_9)") / $(ms "$(j "$1" .latency_us.max)")"
}
answers() { j "$1" '[.notifications.responses | to_entries[] | "\(.key): \(.value)"] | join(", ")'; }
failures() { j "$1" '[.connections.failures | to_entries[] | "\(.key): \(.value)"] | join(", ") | if . == "" then "none" else . end'; }
cmdline() { echo "\`$(cat "$WORK/$1.cmd" 2>/dev/null || echo "not run")\`"; }
# memcached's CPU per unit ($2 units) and the server's memcached commands and syscalls per command.
mc_cpu() { awk -v t="$(cut -d' ' -f1 "$WORK/$1.mc" 2>/dev/null)" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { if (t == "" || n + 0 == 0) print "?"; else printf "%.1f µs", t * 1e6 / hz / n }'; }
mc_calls() { awk '{ if ($2 + 0 == 0) print "?"; else printf "%d commands, %d system calls: %.2f per command", $2, $3, $3 / $2 }' "$WORK/$1.mc" 2>/dev/null || echo "?"; }
slab_rows() { # scenario, connections held at the peak
    local g
    g="$(slab_growth "$WORK/$1.slab")"
    echo "| kernel slab growth at the peak per connection, both ends (sockets, inodes, dentries, files, epoll, kmalloc) | $(awk -v k="${g% *}" -v n="$2" 'BEGIN { if (k !~ /^[0-9]+$/ || n + 0 == 0) print "?"; else printf "%.0f B", k * 1024 / n }') |"
    echo "| of it, proc_inode_cache per connection (grows only when something lists /proc/PID/fd) | $(awk -v k="${g#* }" -v n="$2" 'BEGIN { if (k !~ /^[0-9]+$/ || n + 0 == 0) print "?"; else printf "%.0f B", k * 1024 / n }') |"
}
mc_rows() { # scenario, units, unit name
    [ "$BACKEND" = memcached ] || return 0
    echo "| memcached's own CPU per $3 | $(mc_cpu "$1" "$2") |"
    echo "| server ↔ memcached | $(mc_calls "$1") |"
    [ "$1" = connect ] || return 0
    echo "| memcached items / bytes held per device (item sizes, before slab rounding) | $(awk -v n="$2" '{ if (n + 0 == 0) print "?"; else printf "%d items, %.0f B", $1, $2 / n }' "$WORK/$1.mcmem" 2>/dev/null || echo "?") |"
}

disk_row() { # scenario, units, unit name
    [ "$BACKEND" = disk ] || return 0
    echo "| store file bytes per $3 | $(awk -v b="$(cat "$WORK/$1.diskbytes" 2>/dev/null)" -v n="$2" 'BEGIN { if (b == "" || n + 0 == 0) print "?"; else printf "%.0f B (%.1f MiB in all)", b / n, b / 1048576 }') |"
}

BEST="none"
LADDER_ROWS=""
for r in $RATES; do
    n="ladder-$r"
    p99=$(j "$n" .latency_us.p99)
    lost=$(j "$n" '.notifications.lost + .notifications.unanswered')
    achieved=$(j "$n" .notifications.put_rate_per_sec)
    ok=$(awk -v p="$p99" -v l="$lost" -v a="$achieved" -v r="$r" 'BEGIN {
        numeric = p ~ /^[0-9.]+$/ && l ~ /^[0-9]+$/ && a ~ /^[0-9.eE+]+$/
        print (numeric && p + 0 <= 10000 && l + 0 == 0 && a + 0 >= 0.95 * r) ? "yes" : "no" }')
    [ "$ok" = yes ] && BEST="$r/s"
    LADDER_ROWS+="| $r/s | $(num "$achieved")/s | $(j "$n" .notifications.sent) / $(j "$n" .notifications.received) / $(j "$n" .notifications.lost) | $(lat "$n") | $(j "$n" '.server.cpu_us_per_notification // "?" | if type == "number" then (. * 10 | round / 10) else . end') µs | $ok |
"
done

{
    [ -s "$OUT" ] || printf '# simplepush benchmarks\n\nSections are appended by `loadtest/bench.sh` (newest last).\n'
    echo
    echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- 2>/dev/null || echo ' (work tree modified)')"
    echo
    echo "Machine: $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), Linux $(uname -r); load average before the run: $LOAD_BEFORE."
    [ -n "$BUSY_BEFORE" ] && echo "Other busy processes when the run started (they compete for the same CPUs): $BUSY_BEFORE."
    echo "Server and tester share the machine (loopback); the tester binds to $SRC. Total bench time: ${ELAPSED} s."
    echo "Storage backend: **$BACKEND**$([ "$BACKEND" = memcached ] && echo " (\`memcached $(memcached --version | cut -d' ' -f2) -m 4096 -M\` on loopback, fresh for every scenario)")$([ "$BACKEND" = disk ] && echo " (a fresh data directory under $(df -P /tmp | awk 'NR == 2 { print $6 }') for every scenario)")."
    echo
    echo '```'
    echo "\$ nproc"; nproc
    echo "\$ free -g"; free -g
    echo '```'
    echo
    echo "Server: \`RUST_LOG=warn target/release/simplepush --config server.toml\`, restarted for every run, with:"
    echo
    echo '```toml'
    sed 's/^token_keys = .*/token_keys = ["<random per bench run>"]/' "$CONFIG"
    echo '```'
    echo
    echo "Reports with charts (\`--html\`): $(for f in "$REPORTS/$STAMP"-*.html; do [ -e "$f" ] && printf '[%s](%s) ' "$(basename "$f" .html | sed "s/^$STAMP-//")" "$(realpath --relative-to="$(dirname "$OUT")" "$f")"; done)"
    echo
    echo "### 1. connect: $DEVICES devices × 1 channel, held 10 s"
    echo
    echo "$(cmdline connect)"
    echo
    echo "| figure | value |"
    echo "|---|---|"
    echo "| connections ok / failed | $(j connect .connections.ok) / $(j connect .connections.failed) ($(failures connect)) |"
    echo "| connect+hello+register rate | $(num "$(j connect .connect_rate_per_sec)")/s |"
    echo "| connect latency p50 / p99 / p99.9 / max | $(lat connect) |"
    echo "| still answering a ping after the hold | $(j connect .connections.ping_ok) of $(j connect .connections.ok) |"
    echo "| server RSS before → after connect | $(mib "$(j connect .server.rss_before_bytes)") → $(mib "$(j connect .server.rss_after_bytes)") |"
    echo "| **server RSS per connection** | **$(num "$(j connect .server.rss_per_connection_bytes)") bytes** |"
    echo "| **server CPU per hello+register** | **$(j connect '.server.cpu_us_per_hello_register | . * 10 | round / 10') µs** |"
    echo "| kernel listen-queue overflows during the run | $(cat "$WORK/connect.overflows" 2>/dev/null || echo "?") |"
    slab_rows connect "$(j connect .connections.ok)"
    mc_rows connect "$(j connect .connections.ok)" "hello+register"
    disk_row connect "$(j connect .connections.ok)" "registered device (1 channel)"
    echo
    echo "### 2. notify: 1,000 PUT/s for 20 s, $DEVICES devices held"
    echo
    echo "$(cmdline notify)"
    echo
    echo "| figure | value |"
    echo "|---|---|"
    echo "| PUTs sent / notifications received / lost / unanswered | $(j notify .notifications.sent) / $(j notify .notifications.received) / $(j notify .notifications.lost) / $(j notify .notifications.unanswered) |"
    echo "| PUT answers | $(answers notify) |"
    echo "| **latency PUT → notification p50 / p99 / p99.9 / max** | **$(lat notify)** |"
    echo "| server CPU per notification | $(j notify '.server.cpu_us_per_notification | . * 10 | round / 10') µs |"
    mc_rows notify "$(j notify .notifications.sent)" "notification"
    echo
    echo "### 3. notify ladder: 10 s per rate, $DEVICES devices held"
    echo
    echo "\`simplepush-loadtest notify --connections $DEVICES --channels 1 --rate R --duration 10 --grace 3 --http-conns $HTTP_CONNS ...\`"
    echo
    echo "| target rate | achieved | sent / received / lost | p50 / p99 / p99.9 / max | server CPU per notification | p99 ≤ 10 ms, no loss |"
    echo "|---|---|---|---|---|---|"
    printf '%s' "$LADDER_ROWS"
    echo
    LAST_RATE="${RATES##* }"
    if [ "$BEST" = "$LAST_RATE/s" ]; then
        echo "**Highest rate with p99 ≤ 10 ms and zero loss: $BEST, the top of the ladder (higher rates not tried; set BENCH_RATES).**"
    else
        echo "**Highest rate with p99 ≤ 10 ms and zero loss: $BEST.**"
    fi
    echo
    echo "### 4. churn: connect / hello / register / close for 30 s"
    echo
    echo "$(cmdline churn)"
    echo
    echo "| figure | value |"
    echo "|---|---|"
    echo "| cycles ok / failed | $(j churn .churn.cycles_ok) / $(j churn .churn.cycles_failed) ($(failures churn)) |"
    echo "| cycles per second | $(num "$(j churn .churn.cycles_per_sec)")/s |"
    echo "| cycle latency p50 / p99 / p99.9 / max | $(lat churn) |"
    echo "| server CPU per cycle | $(j churn '.server.cpu_us_per_cycle | . * 10 | round / 10') µs |"
    echo "| server RSS before → after | $(mib "$(j churn .server.rss_before_bytes)") → $(mib "$(j churn .server.rss_end_bytes)") |"
    echo
    echo "### 5. offline: 2,000 devices closed, one PUT each, reconnect"
    echo
    echo "$(cmdline offline)"
    echo
    echo "| figure | value |"
    echo "|---|---|"
    echo "| devices / reconnected / reconnect failed | $(j offline .connections.ok) / $(j offline .offline.reconnect_ok) / $(j offline .offline.reconnect_failed) |"
    echo "| PUT answers | $(answers offline) |"
    echo "| versions flushed / missing | $(j offline .notifications.received) / $(j offline .offline.missing) |"
    echo "| **hello → flushed version p50 / p99 / p99.9 / max** | **$(lat offline)** |"
    echo "| connect latency p50 / p99 / max (first connect) | $(ms "$(j offline .connect_latency_us.p50)") / $(ms "$(j offline .connect_latency_us.p99)") / $(ms "$(j offline .connect_latency_us.max)") |"
    disk_row offline "$(j offline .connections.ok)" "device with a version waiting"
    echo
    if [ -s "$WORK/startup.clean" ]; then
        echo "### 6. startup: the disk store with $(num "$(j startup .churn.cycles_ok)") devices registered"
        echo
        echo "$(cmdline startup), then the server started again on that data after SIGTERM, and after SIGKILL."
        echo
        echo "| figure | value |"
        echo "|---|---|"
        echo "| devices registered (churn cycles ok / failed) | $(j startup .churn.cycles_ok) / $(j startup .churn.cycles_failed) at $(num "$(j startup .churn.cycles_per_sec)")/s |"
        echo "| store file | $(mib "$(cat "$WORK/startup.bytes")"), $(awk -v b="$(cat "$WORK/startup.bytes")" -v n="$(j startup .churn.cycles_ok)" 'BEGIN { if (n + 0 == 0) print "?"; else printf "%.0f", b / n }') B per device |"
        echo "| **start to serving after a clean stop** | **$(cat "$WORK/startup.clean") ms** ($(cat "$WORK/startup.log")) |"
        echo "| **start to serving after kill -9 during writes** | **$(cat "$WORK/startup.crash") ms** ($(cat "$WORK/startup.crashlog")) |"
    fi
    echo
    if [ -s "$WORK/notes" ]; then
        echo "Notes:"
        sed 's/^/- /' "$WORK/notes"
        echo
    fi
} >>"$OUT"

echo
echo "== done in ${ELAPSED} s; markdown appended to $OUT"

#!/usr/bin/env bash
# Soak test of simplepush on this machine (loopback only), `make soak`: SOAK_SECS (default 600) of
# churn over a fixed population of devices while app-server PUTs flow, in two identical rounds,
# checking that no accepted notification is lost and that the server's memory does not grow.
#
#   1. setup: SOAK_DEVICES devices x SOAK_CHANNELS channels created once (hello + registers),
#      closed; after a settle the server's RSS is the baseline.
#   2. two rounds of SOAK_SECS/2 each: devices reconnect with their uaid and channelIDs at
#      SOAK_RATE per second (at most SOAK_ONLINE online at once), stay online SOAK_DWELL s on
#      average, sometimes replace a channel (unregister + register), and close with a close
#      frame or just drop the socket; PUTs go at SOAK_PUT_RATE per second to random channels,
#      online (200) or offline (202). Each round ends with every device reconnected: a channel
#      whose highest version answered 200/202 never arrived is lost. Everything is closed and,
#      after a settle, the server's RSS is sampled.
#   3. pass: nothing lost or unverified, no errors (failed cycles, reconnects or rotations,
#      sockets dropped by the server, PUTs unanswered or answered other than 200/202), the
#      server still running, RSS after round 2 at most SOAK_GROWTH_KIB above RSS after round 1
#      (no growth per round), and RSS after round 2 at most baseline + 10% + SOAK_SLACK_MIB.
#      Why two rounds: see loadtest/README.md ("soak.sh").
#
# The server's RSS is sampled every SOAK_SAMPLE_SECS into rss.csv. Artifacts (server config and
# log, tester output and JSON, rss.csv) are kept in SOAK_KEEP (default target/soak, replaced by
# each run). A markdown section is appended to FILE; one summary line is printed; the exit
# status is 0 on pass, 1 on failure, 2 on a usage error.
#
# Usage: loadtest/soak.sh [FILE]      FILE defaults to BENCHMARKS.md in the repository root
#                                     ("-" = append nothing).
# Environment (defaults): SOAK_SECS 600 (churn time, both rounds), SOAK_DEVICES 6000,
# SOAK_CHANNELS 2, SOAK_ONLINE 3000, SOAK_RATE 600 (cycles/s), SOAK_DWELL 4 (s, mean),
# SOAK_PUT_RATE 1000 (/s), SOAK_ROTATE 0.1, SOAK_DROP 0.1, SOAK_SETTLE 10 (s),
# SOAK_SAMPLE_SECS 10, SOAK_GROWTH_KIB 1024, SOAK_SLACK_MIB 4, SOAK_BACKEND memory|memcached,
# SOAK_WORKERS 0 (= one event loop per core), SOAK_PROCS 1 (tester processes),
# SOAK_PORT 18680 (first port tried), SOAK_SRC 127.0.0.2-127.0.0.20 (tester source addresses).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
. loadtest/lib.sh
OUT="${1:-$ROOT/BENCHMARKS.md}"
SECS="${SOAK_SECS:-600}"
DEVICES="${SOAK_DEVICES:-6000}"
CHANNELS="${SOAK_CHANNELS:-2}"
ONLINE="${SOAK_ONLINE:-3000}"
RATE="${SOAK_RATE:-600}"
DWELL="${SOAK_DWELL:-4}"
PUT_RATE="${SOAK_PUT_RATE:-1000}"
ROTATE="${SOAK_ROTATE:-0.1}"
DROP="${SOAK_DROP:-0.1}"
SETTLE="${SOAK_SETTLE:-10}"
SAMPLE="${SOAK_SAMPLE_SECS:-10}"
GROWTH_KIB="${SOAK_GROWTH_KIB:-1024}"
SLACK_MIB="${SOAK_SLACK_MIB:-4}"
BACKEND="${SOAK_BACKEND:-memory}"
WORKERS="${SOAK_WORKERS:-0}"
PROCS="${SOAK_PROCS:-1}"
SRC="${SOAK_SRC:-127.0.0.2-127.0.0.20}"
KEEP="${SOAK_KEEP:-$ROOT/target/soak}"
ROUNDS=2
SERVER_BIN="$ROOT/target/release/simplepush"
TESTER_BIN="$ROOT/target/release/simplepush-loadtest"
SERVER_PID=""
MC_PID=""

usage() { echo "soak.sh: $*" >&2; exit 2; }
for v in SECS DEVICES CHANNELS ONLINE SETTLE SAMPLE GROWTH_KIB SLACK_MIB WORKERS PROCS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || usage "SOAK_$v must be a whole number (got '${!v}')"
done
[ "$SECS" -ge 20 ] || usage "SOAK_SECS must be at least 20 (two rounds of at least 10 s)"
[ "$SECS" -le 86400 ] || usage "SOAK_SECS must be at most 86400"
case "$BACKEND" in memory | memcached) ;; *) usage "SOAK_BACKEND must be memory or memcached" ;; esac
for tool in jq curl; do
    command -v "$tool" >/dev/null || usage "needs $tool (apt-get install $tool)"
done
if [ "$BACKEND" = memcached ]; then
    command -v memcached >/dev/null || usage "SOAK_BACKEND=memcached needs memcached (apt-get install memcached)"
fi
ROUND_SECS=$((SECS / ROUNDS))

stop_pid() { # pid: TERM, up to 5 s, then KILL
    local pid=$1
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    stop_pid "$SERVER_PID"
    SERVER_PID=""
    stop_pid "$MC_PID"
    MC_PID=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$KEEP"
mkdir -p "$KEEP"

PORT="$(free_port_from "${SOAK_PORT:-18680}")" || { echo "soak.sh: no free port from ${SOAK_PORT:-18680}" >&2; exit 1; }
WS="ws://127.0.0.1:$PORT/"

echo "== building (release)"
cargo build --release -p simplepush -p simplepush-loadtest

STORAGE=""
if [ "$BACKEND" = memcached ]; then
    MC_PORT="$(free_port_from $((PORT + 1)))" || { echo "soak.sh: no free port for memcached" >&2; exit 1; }
    memcached -l 127.0.0.1 -p "$MC_PORT" -U 0 -m 256 -M -c 4096 -u "$(id -un)" >"$KEEP/memcached.log" 2>&1 &
    MC_PID=$!
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$MC_PORT") 2>/dev/null && break
        kill -0 "$MC_PID" 2>/dev/null || { echo "soak.sh: memcached did not start:" >&2; cat "$KEEP/memcached.log" >&2; exit 1; }
        sleep 0.1
    done
    STORAGE="
[storage]
backend = \"memcached\"
servers = [\"127.0.0.1:$MC_PORT\"]"
fi

KEY="$(head -c32 /dev/urandom | basenc --base64url)"
CONFIG="$KEEP/server.toml"
server_config "$PORT" "$WORKERS" "$KEY" "$STORAGE" >"$CONFIG"

RUST_LOG=warn "$SERVER_BIN" --config "$CONFIG" >"$KEEP/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 50); do
    curl -sf "http://127.0.0.1:$PORT/status" >/dev/null 2>&1 && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
if ! curl -sf "http://127.0.0.1:$PORT/status" >/dev/null 2>&1; then
    echo "soak.sh: the server did not start; its log:" >&2
    cat "$KEEP/server.log" >&2
    exit 1
fi

# Setup, two rounds with their checks and settles: generous, but bounded.
MAX=$((SECS + 300 + 4 * SETTLE))
ARGS=(churn --devices "$DEVICES" --connections "$ONLINE" --channels "$CHANNELS" --rate "$RATE"
    --dwell "$DWELL" --put-rate "$PUT_RATE" --rotate "$ROTATE" --drop "$DROP"
    --duration "$ROUND_SECS" --rounds "$ROUNDS" --settle "$SETTLE" --procs "$PROCS")
SHOWN="simplepush-loadtest ${ARGS[*]} --ws-url $WS --source-addrs $SRC --server-pid \$PID --sample-secs $SAMPLE --rss-csv rss.csv --json soak.json"
PROGRESS=()
[ -t 2 ] || PROGRESS=(--no-progress)
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
BUSY_BEFORE="$(top -b -n2 -d1 -w512 | awk '/^top -/ { n++ } n == 2 && $1 ~ /^[0-9]+$/ && $9 + 0 >= 5 { printf "%s%s (pid %s) %s%% CPU", sep, $12, $1, $9; sep = "; " }')"
[ -z "$BUSY_BEFORE" ] || echo "soak.sh: warning: other processes are busy: $BUSY_BEFORE" >&2
STARTED=$(date +%s)
echo
echo "== soak ($BACKEND store): $SHOWN"
echo "   about $((SECS / 60 + 1)) min; server RSS every $SAMPLE s in $KEEP/rss.csv, server log in $KEEP/server.log"
TESTER_RC=0
timeout $((MAX + 60)) "$TESTER_BIN" "${ARGS[@]}" --ws-url "$WS" --source-addrs "$SRC" \
    --server-pid "$SERVER_PID" --sample-secs "$SAMPLE" --rss-csv "$KEEP/rss.csv" \
    --json "$KEEP/soak.json" --max-seconds "$MAX" "${PROGRESS[@]}" | tee "$KEEP/tester.txt" || TESTER_RC=$?
ELAPSED=$(($(date +%s) - STARTED))

SERVER_ALIVE=yes
kill -0 "$SERVER_PID" 2>/dev/null || SERVER_ALIVE=no
# Sockets the server still holds (none expected: every device closed before the last sample).
STATUS_CLIENTS="$(curl -sf "http://127.0.0.1:$PORT/status" 2>/dev/null | jq -r '.clients // "?"' 2>/dev/null || echo '?')"
stop_pid "$SERVER_PID"
SERVER_PID=""
LOG_LINES=$(grep -c . "$KEEP/server.log" || true)

# ---- verdict ----
J="$KEEP/soak.json"
j() { jq -r "$1" "$J" 2>/dev/null || echo "?"; }
FAILS=()
if [ ! -s "$J" ]; then
    FAILS+=("the tester wrote no result (exit $TESTER_RC)")
else
    [ "$TESTER_RC" -eq 0 ] || FAILS+=("the tester exited with $TESTER_RC")
    LOST=$(j .soak.lost)
    UNVERIFIED=$(j .soak.unverified)
    [ "$LOST" = 0 ] || FAILS+=("$LOST channels lost an accepted version")
    [ "$UNVERIFIED" = 0 ] || FAILS+=("$UNVERIFIED owed channels could not be checked (device did not reconnect)")
    ERRS=$(j '[(.connections.failed), (.churn.cycles_failed), (.connections.dropped_by_server), ([.soak.rounds[].reconnect_failed] | add // 0),
        (.soak.rotations_failed), (.soak.uaid_changed), (.notifications.unanswered),
        ([.notifications.responses | to_entries[] | select(.key != "200" and .key != "202") | .value] | add // 0)] | add')
    [ "$ERRS" = 0 ] || FAILS+=("$ERRS errors (failed setups, cycles, rotations or reconnects, server drops, changed uaids, PUTs unanswered or not 200/202)")
    [ "$(j '.soak.rounds | length')" = "$ROUNDS" ] || FAILS+=("only $(j '.soak.rounds | length') of $ROUNDS rounds completed")
    [ "$(j '.soak.population')" = "$DEVICES" ] || FAILS+=("only $(j .soak.population) of $DEVICES devices could be set up")
fi
[ "$SERVER_ALIVE" = yes ] || FAILS+=("the server died")
BASE=$(j '.soak.baseline_rss_bytes // "?"')
R1=$(j '.soak.rounds[0].rss_after_bytes // "?"')
R2=$(j '.soak.rounds[1].rss_after_bytes // "?"')
PEAK=$(j '.soak.peak_rss_bytes // "?"')
num() { [[ "$1" =~ ^[0-9]+$ ]]; }
GROWTH="?"
LIMIT_ABS="?"
if num "$BASE" && num "$R1" && num "$R2"; then
    GROWTH=$((R2 - R1))
    LIMIT_ABS=$((BASE + BASE / 10 + SLACK_MIB * 1048576))
    [ "$GROWTH" -le $((GROWTH_KIB * 1024)) ] || FAILS+=("RSS grew $((GROWTH / 1024)) KiB from round 1 to round 2 (limit $GROWTH_KIB KiB)")
    [ "$R2" -le "$LIMIT_ABS" ] || FAILS+=("final RSS $((R2 / 1024)) KiB above baseline + 10% + $SLACK_MIB MiB ($((LIMIT_ABS / 1024)) KiB)")
else
    FAILS+=("server RSS samples missing")
fi

ms() { awk -v x="$1" 'BEGIN { if (x !~ /^-?[0-9.eE+]+$/) print "?"; else printf "%.1f ms", x / 1000 }'; }
mib() { awk -v x="$1" 'BEGIN { if (x !~ /^-?[0-9.eE+]+$/) print "?"; else printf "%.2f MiB", x / 1048576 }'; }
kib() { awk -v x="$1" 'BEGIN { if (x !~ /^-?[0-9.eE+]+$/) print "?"; else printf "%+.0f KiB", x / 1024 }'; }
VERDICT=PASS
[ ${#FAILS[@]} -eq 0 ] || VERDICT=FAIL
CYCLES=$(j '.churn.cycles_ok')
SENT=$(j '.notifications.sent')
ACCEPTED=$(j '[.notifications.responses["200"] // 0, .notifications.responses["202"] // 0] | add')
SUMMARY="soak $VERDICT ($BACKEND store, ${SECS} s churn): lost $(j .soak.lost), unverified $(j .soak.unverified); $CYCLES cycles, $SENT PUTs ($ACCEPTED accepted); server RSS baseline $(mib "$BASE"), peak $(mib "$PEAK"), after round 1 $(mib "$R1"), after round 2 $(mib "$R2") (round-to-round $(kib "$GROWTH"), limit +$GROWTH_KIB KiB; limit vs baseline $(mib "$LIMIT_ABS")); server log: $LOG_LINES lines"

# ---- markdown ----
if [ "$OUT" != "-" ]; then
    {
        echo
        echo "## Soak ($BACKEND store, $((SECS / 60)) min of churn): $(date -u '+%Y-%m-%d %H:%M UTC') — commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- 2>/dev/null || echo ' (work tree modified)') — **$VERDICT**"
        echo
        echo "\`make soak\` (\`loadtest/soak.sh\`; SOAK_SECS=$SECS). Machine: $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(free -g | awk '/^Mem:/ { print $2 }') GiB, Linux $(uname -r); load average before: $LOAD_BEFORE. Total time ${ELAPSED} s."
        [ -z "$BUSY_BEFORE" ] || echo "Other busy processes when the run started: $BUSY_BEFORE."
        echo "Server: \`RUST_LOG=warn target/release/simplepush\` (workers = $WORKERS, $BACKEND store, \`min_ping_interval_ms = 0\`); tester: \`$SHOWN\`."
        echo
        echo "| figure | value |"
        echo "|---|---|"
        echo "| devices × channels (set up once) | $(j .soak.population) × $CHANNELS |"
        echo "| churn | 2 rounds × $ROUND_SECS s; $RATE cycles/s, mean dwell $DWELL s, at most $ONLINE online; $(awk -v r="$ROTATE" 'BEGIN { printf "%.0f", r * 100 }')% of cycles replace a channel, $(awk -v r="$DROP" 'BEGIN { printf "%.0f", r * 100 }')% drop the socket |"
        echo "| devices online (sampled every $SAMPLE s): mean / max during churn | $(awk -F, 'NR > 1 && $2 == "churn" { n++; s += $6; if ($6 > m) m = $6 } END { if (n) printf "%.0f / %d", s / n, m; else print "?" }' "$KEEP/rss.csv") |"
        echo "| connections churned (cycles ok / failed) | $CYCLES / $(j .churn.cycles_failed); $(j .soak.drops) socket drops, $(j .soak.rotations_ok) channel rotations ($(j .soak.rotations_failed) failed) |"
        echo "| PUTs sent / answered 200 / 202 / other / unanswered | $SENT / $(j '.notifications.responses["200"] // 0') / $(j '.notifications.responses["202"] // 0') / $(j '[.notifications.responses | to_entries[] | select(.key != "200" and .key != "202") | .value] | add // 0') / $(j .notifications.unanswered) |"
        echo "| **lost** (channels whose highest accepted version never arrived) / unverified | **$(j .soak.lost)** / $(j .soak.unverified) |"
        echo "| accepted versions overwritten by a newer one before delivery (normal) | $(j .soak.superseded) |"
        echo "| PUT → notification p50 / p99 / max (offline waits included) | $(ms "$(j .latency_us.p50)") / $(ms "$(j .latency_us.p99)") / $(ms "$(j .latency_us.max)") |"
        echo "| server RSS: start → baseline (after setup) | $(mib "$(j .server.rss_before_bytes)") → $(mib "$BASE") |"
        echo "| server RSS after round 1 / after round 2 | $(mib "$R1") / $(mib "$R2") |"
        echo "| **round 1 → round 2** (limit +$GROWTH_KIB KiB) | **$(kib "$GROWTH")** |"
        echo "| after round 2 vs baseline + 10% + $SLACK_MIB MiB | $(mib "$R2") ≤ $(mib "$LIMIT_ABS") |"
        echo "| server peak RSS (VmHWM) | $(mib "$PEAK") |"
        echo "| server CPU per cycle (PUTs included) | $(j '.server.cpu_us_per_cycle | . * 10 | round / 10') µs |"
        echo "| server still running / sockets left (/status) / log lines (warn+) | $SERVER_ALIVE / $STATUS_CLIENTS / $LOG_LINES |"
        echo
        if [ ${#FAILS[@]} -gt 0 ]; then
            echo "Failures:"
            printf -- '- %s\n' "${FAILS[@]}"
            echo
        fi
        if [ "$LOG_LINES" -gt 0 ]; then
            echo "Server log (first lines):"
            echo
            echo '```'
            head -n 10 "$KEEP/server.log"
            echo '```'
            echo
        fi
        echo "Server RSS over the run (\`rss.csv\`, one row a minute and at every phase end):"
        echo
        echo "| t (s) | phase | RSS | online | cycles | PUTs |"
        echo "|---|---|---|---|---|---|"
        awk -F, 'NR > 1 { barrier = ($2 ~ /^(start|connected|round[0-9]+|end)$/); if (barrier || $1 >= next_t) { printf "| %.0f | %s | %.2f MiB | %s | %s | %s |\n", $1, $2, $3 / 1024, $6, $7, $8; if (!barrier) next_t = $1 + 60 } }' "$KEEP/rss.csv"
    } >>"$OUT"
fi

echo
if [ ${#FAILS[@]} -gt 0 ]; then
    printf 'soak.sh: FAIL: %s\n' "${FAILS[@]}" >&2
fi
[ "$OUT" = "-" ] || echo "markdown appended to $OUT; artifacts in $KEEP"
echo "$SUMMARY"
[ "$VERDICT" = PASS ]

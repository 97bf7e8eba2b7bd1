#!/usr/bin/env bash
# LoomCache (memory-only single node) beside Redis (persistence off), the
# same load from the same generator, each server pinned to core 0 and the
# generator to core 1. Prints a ratio table; also checks the generator
# against redis-benchmark so it is known not to be the bottleneck.
# Beside each run it prints the server's CPU per request, user and system
# (kernel) apart, from /proc/<pid>/stat over the measured seconds (at
# pipeline depth 1 both servers make one read and one write per request,
# and the kernel's part is most of the cost).
#
# Usage: scripts/side-by-side.sh [seconds per run, default 10]
# Loopback only; every server it starts is stopped (by pid) on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN="${1:-10}"
WARMUP=2
REDIS_PORT=7392
LOOMD_PORT=7391
OUT=target/side-by-side
mkdir -p "$OUT"

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    echo "installing redis-server and redis-tools (Debian packages)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi
command -v taskset >/dev/null || { echo "taskset (util-linux) is required"; exit 1; }
if [ "$(nproc)" -lt 2 ]; then echo "needs 2 cores: one for the server, one for the generator"; exit 1; fi

cargo build --release --bin loomd --bin loomcache-bench >/dev/null 2>&1 || cargo build --release --bin loomd --bin loomcache-bench

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize no --loglevel warning >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
# One core for each server: Redis is single-threaded, and loomd applies
# requests on its event-loop thread (--workers 0: no worker hand-off).
taskset -c 0 ./target/release/loomd --listen "127.0.0.1:$LOOMD_PORT" --memory-only --workers 0 >"$OUT/loomd.log" 2>&1 &
LOOMD_PID=$!
PIDS+=("$LOOMD_PID")
for _ in $(seq 50); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && grep -q listening "$OUT/loomd.log" && break
    sleep 0.1
done

bench() { # backend port pipeline read_ratio preload
    local extra=()
    [ "$5" = yes ] && extra+=(--preload)
    taskset -c 1 ./target/release/loomcache-bench --backend "$1" --addr "127.0.0.1:$2" \
        --connections 50 --pipeline "$3" --value-size 256 --keys 100000 --read-ratio "$4" \
        --duration "$SECONDS_PER_RUN" --warmup "$WARMUP" "${extra[@]}" --json
}
field() { sed -E "s/.*\"$2\":([0-9.]+).*/\1/" <<<"$1"; }
# CPU clock ticks (user, system) the process has used so far.
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
TICKS_PER_SEC=$(getconf CLK_TCK)
# measured PID backend port pipeline read_ratio preload: `bench` into
# $OUT/run.json (a preload, if asked, done first on its own), and `cpu`
# set to "user+system", PID's CPU microseconds per request over the
# measured seconds (sampled after the warm-up and at the end).
measured() {
    local pid="$1" u0 s0 u1 s1 t0 t1 gen
    shift
    if [ "$5" = yes ]; then
        taskset -c 1 ./target/release/loomcache-bench --backend "$1" --addr "127.0.0.1:$2" --connections 1 \
            --value-size 256 --keys 100000 --preload --duration 0 --warmup 0 >/dev/null
    fi
    bench "$1" "$2" "$3" "$4" no >"$OUT/run.json" &
    gen=$!
    sleep "$WARMUP"
    read -r u0 s0 < <(ticks "$pid")
    t0=$(date +%s.%N)
    wait "$gen"
    read -r u1 s1 < <(ticks "$pid")
    t1=$(date +%s.%N)
    cpu=$(awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$TICKS_PER_SEC" -v t0="$t0" -v t1="$t1" \
        -v ops="$(field "$(cat "$OUT/run.json")" ops_per_sec)" \
        'BEGIN { n = ops * (t1 - t0); if (n > 0) printf "%.2f+%.2f", u / hz / n * 1e6, s / hz / n * 1e6; else print "-" }')
}

for p in 1 16; do
    echo "== generator check: loomcache-bench --backend resp vs redis-benchmark (SET, 50 conns, P$p, 256 B, 100k keys)"
    mine=$(bench resp "$REDIS_PORT" "$p" 0 no)
    theirs=$(taskset -c 1 redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c 50 -P "$p" -d 256 -r 100000 \
        -n $((SECONDS_PER_RUN * 60000 * (p == 1 ? 1 : 8))) -t set --csv 2>/dev/null | awk -F'"' '/"SET"/ {print $4}')
    printf 'loomcache-bench %s ops/s, redis-benchmark %s ops/s\n' "$(field "$mine" ops_per_sec)" "$theirs"
done

printf '\n%-10s %-4s %12s %12s %8s %10s %10s %12s %12s\n' workload P loomd_ops/s redis_ops/s ratio loomd_p99 redis_p99 \
    loomd_cpu redis_cpu
{
for p in 1 16; do
    for w in set:0:no get:1:yes mix90:0.9:yes; do
        IFS=: read -r name ratio pre <<<"$w"
        measured "$LOOMD_PID" native "$LOOMD_PORT" "$p" "$ratio" "$pre"
        l=$(cat "$OUT/run.json") lcpu="$cpu"
        measured "$REDIS_PID" resp "$REDIS_PORT" "$p" "$ratio" "$pre"
        r=$(cat "$OUT/run.json") rcpu="$cpu"
        lo=$(field "$l" ops_per_sec); ro=$(field "$r" ops_per_sec)
        printf '%-10s %-4s %12.0f %12.0f %7.2fx %8sus %8sus %12s %12s\n' "$name" "$p" "$lo" "$ro" \
            "$(awk -v a="$lo" -v b="$ro" 'BEGIN {print a / b}')" "$(field "$l" p99_us)" "$(field "$r" p99_us)" \
            "$lcpu" "$rcpu"
        echo "$l" >>"$OUT/raw.jsonl"; echo "$r" >>"$OUT/raw.jsonl"
    done
done
} | tee "$OUT/table.txt"
echo "cpu: the server's user+system CPU microseconds per request over the measured seconds"

#!/usr/bin/env bash
# LoomCache beside etcd, each as a 3-member cluster on loopback with durable
# (fsync'd) writes, driven by the same generator (loomcache-bench, built with
# the `etcd` feature): writes, then linearizable reads, at every
# connections x pipeline point of the matrix. Each row runs both systems one
# after the other (alternating which goes first) so drift affects both
# alike; LoomCache is driven at its leader's client address, etcd at all
# three client endpoints (a follower forwards to the leader). Also measures a
# single memory-only `loomd` at 50 connections x 16 in flight, GET only,
# twice: with default settings (a worker pool) and with `--workers 0`
# (requests applied on the event loop); the target is linearizable reads on
# the cluster at >= 0.8x the faster of the two. These run in READ_ROUNDS
# rounds after the matrix, each round the two single nodes and then the
# cluster's reads back to back (the cluster idles meanwhile), so that the
# VM's drift between the runs of a round stays small. Then, when the
# matrix has the 1000x1 point and etcd answered it, a ceiling there: the
# same 1000x1 writes against a single memory-only loomd (no replication,
# no disk), set beside etcd's 1000x1 writes of the same run. Last, the
# published SLO's load: 1,000 writes/s, open loop.
#
# Usage: scripts/cluster-side-by-side.sh
#
# Environment (defaults in brackets):
#   DURATION     measured seconds per run [8]
#   WARMUP       unmeasured seconds before each run [2]
#   CONNECTIONS  connection counts of the matrix ["1 50 1000"]
#   PIPELINES    requests in flight per connection ["1 16"]
#   SKIP         points left out, as CxP words ["1000x16"; "" runs all]
#   VALUE_SIZE   value bytes [1024]
#   KEYS         distinct keys, all written once before the runs [10000]
#   SLO_CONNECTIONS  connections sharing the 1,000 writes/s of the SLO run [10]
#   READ_ROUNDS  rounds of single-node GET beside cluster reads, 50x16 [3]
#   KEEP_DATA    1 keeps the data directories (printed at the end) [0]
#
# Needs: etcd and etcdctl (Debian `etcd-server`, `etcd-client`) and protoc
# (Debian `protobuf-compiler`, for the etcd client's generated code); as
# root it installs whichever is missing with apt-get. Servers and generator
# share every core (nothing is pinned: three members per system do not fit
# one core each on a small machine). Results go to target/cluster-side-by-side
# (table.md, read-rounds.md, raw.jsonl, bench.log, logs/). Traffic stays on 127.0.0.1; every
# process started here is stopped by pid on exit (TERM, then KILL after 5 s).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${DURATION:-8}"
WARMUP="${WARMUP:-2}"
SLO_CONNECTIONS="${SLO_CONNECTIONS:-10}"
READ_ROUNDS="${READ_ROUNDS:-3}"
CONNECTIONS="${CONNECTIONS:-1 50 1000}"
PIPELINES="${PIPELINES:-1 16}"
# 1000 x 16 puts 16,000 requests in flight, past both systems' admission
# bounds at their defaults: loomd's work queue high watermark (4,096) makes
# it answer SERVER_BUSY and refuse further connections, and etcd answers
# "too many requests" once its apply loop trails commit by 5,000 entries.
# That point measures refusals, not throughput, so it is left out unless
# SKIP says otherwise.
SKIP="${SKIP-1000x16}"
VALUE_SIZE="${VALUE_SIZE:-1024}"
KEYS="${KEYS:-10000}"
KEEP_DATA="${KEEP_DATA:-0}"

SINGLE_PORT=7380
LOOM_PORTS=(7001 7002 7003 7101 7102 7103)
ETCD_CLIENT_PORTS=(2379 22379 32379)
ETCD_PEER_PORTS=(2380 22380 32380)
OUT=target/cluster-side-by-side
rm -rf "$OUT/logs"
mkdir -p "$OUT/logs"
: >"$OUT/raw.jsonl"
: >"$OUT/bench.log"

# --- tools -------------------------------------------------------------------
missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]} (Debian packages)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$SINGLE_PORT" "${LOOM_PORTS[@]}" "${ETCD_CLIENT_PORTS[@]}" "${ETCD_PEER_PORTS[@]}"; do
    if port_busy "$p"; then
        echo "port $p on 127.0.0.1 is already in use (another cluster, or an etcd service started by its package?)" >&2
        exit 1
    fi
done

echo "building loomd, loomctl and loomcache-bench --features etcd (release)"
cargo build --release --bin loomd --bin loomctl
cargo build --release -p loomcache-benches --features etcd --bin loomcache-bench

RUN="$(mktemp -d "${TMPDIR:-/tmp}/cluster-side-by-side.XXXXXX")"
# A private copy, so that a rebuild in the tree during the run (without the
# feature) does not swap the generator under it.
mkdir -p "$RUN/bin"
cp target/release/loomcache-bench "$RUN/bin/"
BENCH="$RUN/bin/loomcache-bench"
export LOOMCACHE_CLUSTER_DIR="$RUN/loomcache"

# --- cleanup -----------------------------------------------------------------
PIDS=()
# stop_pids PID...: TERM, then KILL whatever still runs after 5 s.
stop_pids() {
    local p alive
    for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
        alive=0
        for p in "$@"; do
            if kill -0 "$p" 2>/dev/null; then alive=1; fi
        done
        if [ "$alive" = 0 ]; then break; fi
        sleep 0.1
    done
    for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM
    stop_pids "${PIDS[@]}"
    cp "$RUN"/etcd-*.log "$OUT/logs/" 2>/dev/null
    cp "$RUN"/single/loomd-*.log "$OUT/logs/" 2>/dev/null
    for log in "$LOOMCACHE_CLUSTER_DIR"/node-*/loomd.log; do
        if [ -f "$log" ]; then cp "$log" "$OUT/logs/$(basename "$(dirname "$log")")-loomd.log"; fi
    done
    if [ "$KEEP_DATA" = 1 ]; then
        echo "data kept in $RUN"
    else
        rm -rf "$RUN"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the generator -------------------------------------------------------------
# bench BACKEND ADDR CONNECTIONS PIPELINE READ_RATIO [extra flags]: one JSON
# line on stdout, or nothing if the run failed (its stderr is in bench.log).
bench() {
    local backend="$1" addr="$2" conns="$3" pipe="$4" reads="$5"
    shift 5
    echo "== $backend $addr c=$conns p=$pipe reads=$reads $*" >>"$OUT/bench.log"
    "$BENCH" --backend "$backend" --addr "$addr" --connections "$conns" --pipeline "$pipe" \
        --value-size "$VALUE_SIZE" --keys "$KEYS" --read-ratio "$reads" \
        --duration "$DURATION" --warmup "$WARMUP" --json "$@" 2>>"$OUT/bench.log" || true
}
field() { sed -nE "s/.*\"$2\":([0-9.]+).*/\1/p" <<<"$1"; }
# "ops/s | p50 | p99" cells of one result; an error count follows the ops.
cells() {
    if [ -z "$1" ]; then
        printf 'failed | - | -'
        return
    fi
    local errors
    errors="$(field "$1" errors)"
    printf '%.0f%s | %s us | %s us' "$(field "$1" ops_per_sec)" \
        "$([ "${errors:-0}" = 0 ] || echo " ($errors errors)")" "$(field "$1" p50_us)" "$(field "$1" p99_us)"
}
ratio() {
    local a b
    a="$(field "$1" ops_per_sec)"
    b="$(field "$2" ops_per_sec)"
    if [ -n "$a" ] && [ -n "$b" ]; then
        awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'
    else
        printf -- '-'
    fi
}
preload() { # backend addr
    "$BENCH" --backend "$1" --addr "$2" --connections 1 --value-size "$VALUE_SIZE" --keys "$KEYS" \
        --preload --duration 0 --warmup 0 >/dev/null 2>>"$OUT/bench.log" || {
        echo "preloading $1 at $2 failed; see $OUT/bench.log" >&2
        exit 1
    }
}

# --- single-node baseline ------------------------------------------------------
mkdir -p "$RUN/single"
# single_node NAME [loomd flags]: the load `single_load` (connections,
# pipeline, read ratio; GET at 50x16 unless set) on a fresh memory-only
# node, into $single_result.
single_load=(50 16 1)
single_node() {
    local name="$1"
    shift
    echo "single memory-only loomd on 127.0.0.1:$SINGLE_PORT (--memory-only $*)"
    target/release/loomd --listen "127.0.0.1:$SINGLE_PORT" --memory-only "$@" \
        >"$RUN/single/loomd-$name.out" 2>"$RUN/single/loomd-$name.log" &
    single_pid=$!
    PIDS+=("$single_pid")
    for _ in $(seq 100); do
        grep -q "listening on" "$RUN/single/loomd-$name.out" 2>/dev/null && break
        sleep 0.1
    done
    single_result=""
    # A node that failed to start or load counts as a failed run (the
    # round is then left out), not as the end of the script.
    if "$BENCH" --backend native --addr "127.0.0.1:$SINGLE_PORT" --connections 1 --value-size "$VALUE_SIZE" \
        --keys "$KEYS" --preload --duration 0 --warmup 0 >/dev/null 2>>"$OUT/bench.log"; then
        single_result="$(bench native "127.0.0.1:$SINGLE_PORT" "${single_load[@]}")"
    else
        echo "preloading the single node ($name) failed; see $OUT/bench.log" >&2
    fi
    echo "$single_result" >>"$OUT/raw.jsonl"
    stop_pids "$single_pid"
    local keep=() p
    for p in "${PIDS[@]}"; do
        if [ "$p" != "$single_pid" ]; then keep+=("$p"); fi
    done
    PIDS=("${keep[@]}")
}

# --- the clusters --------------------------------------------------------------
echo "3-member LoomCache cluster (scripts/local-cluster.sh 3, data in $LOOMCACHE_CLUSTER_DIR)"
cluster_up=1
scripts/local-cluster.sh 3 >"$OUT/logs/local-cluster.out" 2>&1 || cluster_up=0
for pidfile in "$LOOMCACHE_CLUSTER_DIR"/node-*/loomd.pid; do
    if [ -f "$pidfile" ]; then PIDS+=("$(cat "$pidfile")"); fi
done
if [ "$cluster_up" = 0 ]; then
    cat "$OUT/logs/local-cluster.out" >&2
    exit 1
fi
loom_leader() {
    scripts/local-cluster.sh status | awk '/: leader,/ { sub(/:$/, "", $4); print $4; exit }'
}

echo "3-member etcd cluster ($(etcd --version | head -1))"
initial_cluster=""
for i in 0 1 2; do
    initial_cluster="${initial_cluster:+$initial_cluster,}e$((i + 1))=http://127.0.0.1:${ETCD_PEER_PORTS[$i]}"
done
ETCD_ENDPOINTS=""
for i in 0 1 2; do
    client="127.0.0.1:${ETCD_CLIENT_PORTS[$i]}"
    ETCD_ENDPOINTS="${ETCD_ENDPOINTS:+$ETCD_ENDPOINTS,}$client"
    etcd --name "e$((i + 1))" --data-dir "$RUN/etcd-$((i + 1))" \
        --listen-client-urls "http://$client" --advertise-client-urls "http://$client" \
        --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
        --initial-cluster "$initial_cluster" --initial-cluster-state new \
        --initial-cluster-token loomcache-side-by-side \
        --quota-backend-bytes $((8 * 1024 * 1024 * 1024)) \
        --logger zap --log-outputs stderr >"$RUN/etcd-$((i + 1)).log" 2>&1 &
    PIDS+=("$!")
done
etcdctl_() { ETCDCTL_API=3 etcdctl --endpoints "$ETCD_ENDPOINTS" --command-timeout 10s "$@"; }
for _ in $(seq 100); do
    etcdctl_ endpoint health >/dev/null 2>&1 && break
    sleep 0.1
done
etcdctl_ endpoint health >/dev/null 2>&1 || {
    echo "etcd did not become healthy; see $OUT/logs after exit" >&2
    exit 1
}
# History grows by one revision per Put; compacting after each write run
# keeps every run starting from the same small history.
etcd_compact() {
    local rev
    rev="$(etcdctl_ endpoint status -w json 2>/dev/null | grep -o '"revision":[0-9]*' | head -1 | cut -d: -f2)" || true
    if [ -n "$rev" ]; then etcdctl_ compact "$rev" --physical >/dev/null 2>&1 || true; fi
}

leader="$(loom_leader)"
[ -n "$leader" ] || { echo "the LoomCache cluster has no leader" >&2; exit 1; }
echo "preloading $KEYS keys of $VALUE_SIZE B into each"
preload native "$leader"
preload etcd "$ETCD_ENDPOINTS"
etcd_compact

# --- the matrix ----------------------------------------------------------------
echo "running: ${DURATION}s measured after ${WARMUP}s warm-up per run, value ${VALUE_SIZE} B, ${KEYS} keys"
table="$OUT/table.md"
{
    echo "| config | LoomCache ops/s | LoomCache p50 | LoomCache p99 | etcd ops/s | etcd p50 | etcd p99 | LoomCache ÷ etcd |"
    echo "|---|---|---|---|---|---|---|---|"
} >"$table"
cat "$table"
# run_loom / run_etcd: one run at the current point ($conns, $pipe,
# $read_ratio) into $l / $e.
run_loom() {
    local leader
    leader="$(loom_leader)"
    l="$(bench native "${leader:-127.0.0.1:7001}" "$conns" "$pipe" "$read_ratio")"
}
run_etcd() {
    e="$(bench etcd "$ETCD_ENDPOINTS" "$conns" "$pipe" "$read_ratio")"
    if [ "$read_ratio" = 0 ]; then etcd_compact; fi
}
row=0
for conns in $CONNECTIONS; do
    for pipe in $PIPELINES; do
        case " $SKIP " in *" ${conns}x${pipe} "*) continue ;; esac
        for kind in write read; do
            read_ratio=0
            if [ "$kind" = read ]; then read_ratio=1; fi
            if [ $((row % 2)) = 0 ]; then
                run_loom
                run_etcd
            else
                run_etcd
                run_loom
            fi
            row=$((row + 1))
            echo "$l" >>"$OUT/raw.jsonl"
            echo "$e" >>"$OUT/raw.jsonl"
            if [ "$kind $conns $pipe" = "write 1000 1" ]; then etcd_writes_1000="$e"; fi
            printf '| %s %sx%s | %s | %s | %s |\n' "$kind" "$conns" "$pipe" "$(cells "$l")" "$(cells "$e")" \
                "$(ratio "$l" "$e")" | tee -a "$table"
        done
    done
done

# --- linearizable reads beside a single node ---------------------------------------
# Each round: GET 50x16 on a fresh single node with its worker pool, then
# with --workers 0, and the cluster's linearizable reads 50x16 at its
# leader, after the single nodes in odd rounds and before them in even
# ones. A round's ratio is the cluster over the faster single node.
rounds="$OUT/read-rounds.md"
{
    echo
    echo "| round | single, pool ops/s | p50 | p99 | single, --workers 0 ops/s | p50 | p99 | cluster read ops/s | p50 | p99 | cluster ÷ faster single |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
} >"$rounds"
cat "$rounds"
sum_cluster=0
sum_single=0
counted=0
conns=50 pipe=16 read_ratio=1
for round in $(seq "$READ_ROUNDS"); do
    if [ $((round % 2)) = 0 ]; then run_loom; fi
    single_node "pool-$round"
    single_pool="$single_result"
    single_node "inline-$round" --workers 0
    single_inline="$single_result"
    if [ $((round % 2)) = 1 ]; then run_loom; fi
    single="$single_inline"
    if awk -v a="$(field "$single_pool" ops_per_sec)" -v b="$(field "$single_inline" ops_per_sec)" \
        'BEGIN { exit !(a + 0 > b + 0) }'; then
        single="$single_pool"
    fi
    echo "$l" >>"$OUT/raw.jsonl"
    printf '| %s | %s | %s | %s | %s |\n' "$round" "$(cells "$single_pool")" "$(cells "$single_inline")" \
        "$(cells "$l")" "$(ratio "$l" "$single")" | tee -a "$rounds"
    # A round with a failed run is left out of the sums.
    if [ -n "$l" ] && [ -n "$single" ]; then
        counted=$((counted + 1))
        read -r sum_cluster sum_single < <(awk -v c="$sum_cluster" -v s="$sum_single" \
            -v a="$(field "$l" ops_per_sec)" -v b="$(field "$single" ops_per_sec)" \
            'BEGIN { printf "%.3f %.3f\n", c + a, s + b }')
    fi
done

# --- the ceiling at 1000 clients -------------------------------------------------
ceiling=""
if [ -n "${etcd_writes_1000:-}" ]; then
    single_load=(1000 1 0)
    single_node ceiling-pool
    ceiling_pool="$single_result"
    single_node ceiling-inline --workers 0
    ceiling="$single_result"
    if awk -v a="$(field "$ceiling_pool" ops_per_sec)" -v b="$(field "$ceiling" ops_per_sec)" \
        'BEGIN { exit !(a + 0 > b + 0) }'; then
        ceiling="$ceiling_pool"
    fi
fi

# --- the published SLO ----------------------------------------------------------
# Writes at 1,000 per second, open loop (latency counted from when each
# request was due) over SLO_CONNECTIONS connections; the SLO is p99 <= 100 ms.
leader="$(loom_leader)"
slo="$(bench native "${leader:-127.0.0.1:7001}" "$SLO_CONNECTIONS" 1 0 --rate 1000)"
echo "$slo" >>"$OUT/raw.jsonl"

{
    echo
    if [ -n "$slo" ]; then
        echo "LoomCache writes at 1000/s open loop over $SLO_CONNECTIONS connections: $(cells "$slo"), p99.9 $(field "$slo" p999_us) us;" \
            "the SLO (p99 <= 100 ms) over the p99: $(awk -v p="$(field "$slo" p99_us)" 'BEGIN { printf "%.0fx", 100000 / p }')"
    else
        echo "LoomCache writes at 1000/s: failed (see $OUT/bench.log)"
    fi
    if [ -n "$ceiling" ]; then
        echo
        echo "Ceiling at write 1000x1: a single memory-only loomd (faster of the pool and --workers 0): $(cells "$ceiling");" \
            "over etcd's write 1000x1 above: $(ratio "$ceiling" "$etcd_writes_1000") (the cluster's target is 25x)"
    fi
    cat "$rounds"
    echo
    echo "3-member LoomCache linearizable read 50x16 ÷ the faster single-node GET 50x16, over $counted of $READ_ROUNDS rounds" \
        "(sum of the cluster's ops/s over the sum of the faster single node's):" \
        "$(awk -v a="$sum_cluster" -v b="$sum_single" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }')" \
        "(target >= 0.80x)"
} | tee -a "$table"
echo "table in $OUT/table.md, raw results in $OUT/raw.jsonl"

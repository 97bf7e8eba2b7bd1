#!/usr/bin/env bash
# A local replicated cluster in one command.
#
#   scripts/local-cluster.sh 3          # build, start 3 members, wait for a leader
#   scripts/local-cluster.sh status     # each member's role, term and commit index
#   scripts/local-cluster.sh stop       # stop every member started here
#
# Member i listens for clients on 127.0.0.1:(7000+i) and for peers on
# 127.0.0.1:(7100+i); its log, hard state and snapshots go to
# loomcache-data/local-cluster/node-i under the repository
# (LOOMCACHE_CLUSTER_DIR overrides the parent; a relative path is taken
# from the directory the script is run in). Logs are in node-i/loomd.log,
# pids in node-i/loomd.pid.
set -euo pipefail

base="${LOOMCACHE_CLUSTER_DIR:-}"
if [ -n "$base" ] && [ "${base#/}" = "$base" ]; then
    base="$PWD/$base"
fi
cd "$(dirname "$0")/.."
base="${base:-loomcache-data/local-cluster}"
loomd="target/release/loomd"
loomctl="target/release/loomctl"

stop() {
    local stopped=0
    for pidfile in "$base"/node-*/loomd.pid; do
        [ -f "$pidfile" ] || continue
        pid="$(cat "$pidfile")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            stopped=$((stopped + 1))
        fi
        rm -f "$pidfile"
    done
    echo "stopped $stopped member(s)"
}

status() {
    for dir in "$base"/node-*; do
        [ -d "$dir" ] || continue
        i="${dir##*-}"
        addr="127.0.0.1:$((7000 + i))"
        if out="$("$loomctl" --addr "$addr" info 2>/dev/null)"; then
            role="$(echo "$out" | awk '$1 == "raft_role:" {print $2}')"
            term="$(echo "$out" | awk '$1 == "raft_term:" {print $2}')"
            commit="$(echo "$out" | awk '$1 == "raft_commit:" {print $2}')"
            echo "node $i at $addr: $role, term $term, commit $commit"
        else
            echo "node $i at $addr: not answering"
        fi
    done
}

case "${1:-3}" in
    stop) stop; exit 0 ;;
    status) status; exit 0 ;;
esac

n="${1:-3}"
if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt 9 ]; then
    echo "usage: $0 [1-9 | status | stop]" >&2
    exit 2
fi

cargo build --release --bin loomd --bin loomctl
stop >/dev/null
members=""
for i in $(seq 1 "$n"); do
    members="${members:+$members,}$i=127.0.0.1:$((7000 + i))/127.0.0.1:$((7100 + i))"
done
for i in $(seq 1 "$n"); do
    dir="$base/node-$i"
    mkdir -p "$dir"
    "$loomd" --node-id "$i" --listen "127.0.0.1:$((7000 + i))" --members "$members" \
        --data-dir "$dir" >"$dir/loomd.out" 2>"$dir/loomd.log" &
    echo $! >"$dir/loomd.pid"
done
for i in $(seq 1 "$n"); do
    for _ in $(seq 1 100); do
        grep -q "listening on" "$base/node-$i/loomd.out" 2>/dev/null && break
        sleep 0.1
    done
    grep -q "listening on" "$base/node-$i/loomd.out" || { echo "node $i did not start; see $base/node-$i/loomd.log" >&2; exit 1; }
done
# Wait for an election.
for _ in $(seq 1 100); do
    if status | grep -c leader >/dev/null; then
        status
        echo "cluster up: try  $loomctl --addr 127.0.0.1:7001 map put m k v"
        if [ -n "${LOOMCACHE_CLUSTER_DIR:-}" ]; then
            echo "stop with:       LOOMCACHE_CLUSTER_DIR=$base $0 stop"
        else
            echo "stop with:       $0 stop"
        fi
        exit 0
    fi
    sleep 0.1
done
status
echo "no leader elected within 10 s; see $base/node-*/loomd.log" >&2
exit 1

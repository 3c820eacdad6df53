#!/usr/bin/env bash
# Benchmark (not a test): redis-benchmark -t set,get against a 3-node kvs cluster's leader over
# RESP and against redis-server, in the same run, alternating targets; prints the median
# requests/s of each and kvs's share of Redis's. Results go in docs/benchmarks.md (## RESP).
#
#   bash tests/bench/resp-vs-redis.sh [runs] [requests] [clients]
#
# Uses the release kvs-node (cargo build --release -p kvs-node) and redis-server/redis-benchmark
# (Debian packages redis-server redis-tools). Stops only the processes it started.
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
RUNS=${1:-5}
REQUESTS=${2:-50000}
CLIENTS=${3:-50}
BASE_PORT=${KVS_BENCH_BASE_PORT:-17379}
REDIS_PORT=$((BASE_PORT + 1000))
KVS_RESP_PORT=$((BASE_PORT + 100))
NODE=target/release/kvs-node

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
"$NODE" demo --nodes 3 --in-memory --base-port "$BASE_PORT" --dir "$work/kvs" >"$work/demo.out" 2>&1 &
pids+=($!)

wait_for() { # description, command...
    local what=$1; shift
    for _ in $(seq 1 300); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "timed out waiting for $what" >&2
    cat "$work/demo.out" >&2
    exit 1
}
wait_for "redis-server" redis-cli -p "$REDIS_PORT" ping
wait_for "the kvs demo cluster" grep -q "Ctrl-C stops the cluster" "$work/demo.out"
wait_for "node 0 to lead" sh -c "redis-cli -p $KVS_RESP_PORT info replication | grep -q role:master"

bench() { # port test -> requests per second
    redis-benchmark -p "$1" -t "$2" -n "$REQUESTS" -c "$CLIENTS" -r 100000 -q --csv |
        awk -F'","' 'NR > 1 || !/^"test"/ { gsub(/"/, "", $2); print $2; exit }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo "runs=$RUNS requests=$REQUESTS clients=$CLIENTS cores=$(nproc) $(redis-server --version | cut -d' ' -f1-3)"
for test in set get; do
    : >"$work/kvs-$test"; : >"$work/redis-$test"
    for _ in $(seq 1 "$RUNS"); do
        bench "$KVS_RESP_PORT" "$test" >>"$work/kvs-$test"
        bench "$REDIS_PORT" "$test" >>"$work/redis-$test"
    done
    kvs=$(median <"$work/kvs-$test")
    redis=$(median <"$work/redis-$test")
    echo "$test: kvs $(paste -sd' ' "$work/kvs-$test") -> median $kvs req/s;" \
        "redis $(paste -sd' ' "$work/redis-$test") -> median $redis req/s;" \
        "kvs/redis $(awk -v a="$kvs" -v b="$redis" 'BEGIN { printf "%.3f", a / b }')"
done

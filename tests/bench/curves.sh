#!/usr/bin/env bash
# Scaling curves: how throughput and p99 latency grow with the number of clients, the value size
# and the number of keys, for kvs, etcd and redis-server measured in the same run. Not a test:
# it records numbers, it does not judge them. Results and how to read them: docs/benchmarks.md.
#
#   bash tests/bench/curves.sh [--seconds S] [--rounds N] [--max-keys N] [--out FILE]
#
# Systems, each on 127.0.0.1:
#   kvs        3 kvs nodes (`kvs-node demo`), log fsynced before every acknowledgement, over gRPC
#   kvs-resp   the same cluster through its RESP ports (clients sweep only)
#   etcd       3 etcd members (Debian's etcd-server), WAL fsynced before every acknowledgement,
#              run with the flags its operations guide gives (lib.sh, ETCD_FLAGS)
#   redis      one redis-server, no persistence, no replication: the single-node ceiling
# Every point is a kvs-bench run of S seconds (default 5), all writes (PUT) then all
# linearizable reads (GET), spread over all members. gRPC clients share min(clients, 8)
# HTTP/2 connections; RESP clients get a connection each, as redis-benchmark's do. Reads find
# values: each key space is loaded (kvs-bench --load) before it is measured, and etcd's members
# are restarted after each load (lib.sh, restart_etcd).
#   clients     1, 4, 16, 64, 256      256-byte values, 100k keys
#   value size  16 B, 256 B, 4 KiB, 64 KiB   64 clients, 1,000 keys
#   keys        10k, 100k, 1M (up to --max-keys)   64 clients, 256-byte values
# Each point runs every system in turn, --rounds times (default 1), so drift hits all alike;
# the output keeps the median. Writes FILE (default docs/bench-curves.json), then draws
# docs/bench-{clients,value_size,keys}.svg from it with kvs-bench-plot.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

SECONDS_PER_RUN=5
ROUNDS=1
MAX_KEYS=1000000
OUT=docs/bench-curves.json
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_PER_RUN="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --max-keys) MAX_KEYS="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        *) echo "usage: $0 [--seconds S] [--rounds N] [--max-keys N] [--out FILE]" >&2; exit 2 ;;
    esac
    shift
done

# shellcheck source=tests/bench/lib.sh
source tests/bench/lib.sh
install_peers
# The same build as run.sh's: a narrower package set resolves dependencies' features
# differently and rebuilds most of the workspace in release.
cargo build --release --bins >&2
PLOT=target/release/kvs-bench-plot

read -r pid _ KVS_GRPC KVS_RESP < <(start_kvs durable); PIDS+=("$pid")
read -r ETCD_PIDS ETCD_GRPC < <(start_etcd); IFS=, read -r -a etcd_pids <<<"$ETCD_PIDS"; PIDS+=("${etcd_pids[@]}")
read -r pid port < <(start_redis); PIDS+=("$pid"); REDIS="127.0.0.1:$port"
for started in "$KVS_GRPC" "$KVS_RESP" "$ETCD_GRPC" "$REDIS"; do
    [ -n "$started" ] || { echo "a system did not start; see the messages above" >&2; exit 1; }
done
endpoints_of() {
    case "$1" in
        kvs) echo "$KVS_GRPC" ;;
        kvs-resp) echo "$KVS_RESP" ;;
        etcd) echo "$ETCD_GRPC" ;;
        redis) echo "$REDIS" ;;
    esac
}
conns_for() {
    local system=$1 clients=$2
    case "$system" in
        kvs | etcd) echo $((clients < 8 ? clients : 8)) ;;
        *) echo "$clients" ;;
    esac
}

# Writes every key of the key space once with values of the given size, in every system; then
# restarts etcd's members.
load() {
    local keys=$1 value_size=$2 system
    for system in kvs etcd redis; do
        "$BENCH" --target "$system" --endpoints "$(endpoints_of "$system")" --load \
            --clients 16 --conns "$(conns_for "$system" 16)" --keys "$keys" \
            --value-size "$value_size" --json |
            python3 -c '
import json, sys
r = json.load(sys.stdin)
print("  loaded {ops} keys of {value_size} B into {target} in {seconds:.1f} s ({errors} errors)".format(**r))' >&2
    done
    ETCD_PIDS=$(restart_etcd "$ETCD_PIDS" "$ETCD_GRPC")
    IFS=, read -r -a etcd_pids <<<"$ETCD_PIDS"; PIDS+=("${etcd_pids[@]}")
}

# One point of a sweep: every system, PUT then GET, --rounds times; appends kvs-bench's JSON
# with the sweep's name and x value to $WORK/results.
point() {
    local sweep=$1 x=$2 clients=$3 value_size=$4 keys=$5
    shift 5
    local round system test ratio
    for round in $(seq 1 "$ROUNDS"); do
        for test in PUT GET; do
            ratio=0; [ "$test" = GET ] && ratio=1
            for system in "$@"; do
                "$BENCH" --target "$system" --endpoints "$(endpoints_of "$system")" \
                    --clients "$clients" --conns "$(conns_for "$system" "$clients")" \
                    --duration "$SECONDS_PER_RUN" --value-size "$value_size" --keys "$keys" \
                    --read-ratio "$ratio" --json |
                    python3 -c '
import json, sys
r = json.load(sys.stdin)
r.update(sweep=sys.argv[1], x=int(sys.argv[2]), test=sys.argv[3])
print(json.dumps(r))
print("  {sweep}={x:<7} {target:<8} {test} {ops_per_sec:>9.0f} ops/s  p99 {p99_ms:>8.2f} ms  {errors} errors"
      .format(**r), file=sys.stderr)' "$sweep" "$x" "$test" >>"$WORK/results"
            done
        done
    done
}

started=$SECONDS
echo "machine: $(machine_note); $SECONDS_PER_RUN s per run, $ROUNDS round(s)" >&2
for keys in 10000 100000 1000000 10000000; do
    [ "$keys" -le "$MAX_KEYS" ] || break
    echo "key space of $keys keys ($((SECONDS - started)) s so far)" >&2
    load "$keys" 256
    point keys "$keys" 64 256 "$keys" kvs etcd redis
    if [ "$keys" = 100000 ]; then
        for clients in 1 4 16 64 256; do
            point clients "$clients" "$clients" 256 100000 kvs kvs-resp etcd redis
        done
    fi
done
for value_size in 16 256 4096 65536; do
    echo "values of $value_size B ($((SECONDS - started)) s so far)" >&2
    load 1000 "$value_size"
    point value_size "$value_size" 64 "$value_size" 1000 kvs etcd redis
done
echo "measured in $((SECONDS - started)) s" >&2

python3 - "$WORK/results" "$OUT" "$(machine_note)" "$SECONDS_PER_RUN" "$ROUNDS" <<'EOF'
import json, statistics, sys
from collections import defaultdict
results, out, machine, seconds, rounds = sys.argv[1:]
runs = defaultdict(list)
for line in open(results):
    r = json.loads(line)
    runs[(r["sweep"], r["x"], r["target"], r["test"])].append(r)
points = []
for (sweep, x, target, test), rs in runs.items():
    points.append({
        "sweep": sweep, "x": x, "system": target, "test": test,
        "clients": rs[0]["clients"], "conns": rs[0]["conns"],
        "value_size": rs[0]["value_size"], "keys": rs[0]["keys"], "rounds": len(rs),
        "ops_per_sec": statistics.median(r["ops_per_sec"] for r in rs),
        "p50_ms": statistics.median(r["p50_ms"] for r in rs),
        "p99_ms": statistics.median(r["p99_ms"] for r in rs),
        "errors": sum(r["errors"] for r in rs),
    })
with open(out, "w") as f:
    json.dump({"machine": machine, "seconds_per_run": int(seconds), "rounds": int(rounds),
               "points": points}, f, indent=1)
    f.write("\n")
for sweep in ("clients", "value_size", "keys"):
    rows = [p for p in points if p["sweep"] == sweep]
    systems = list(dict.fromkeys(p["system"] for p in rows))
    xs = sorted({p["x"] for p in rows})
    print(f"\n{sweep}: ops/s (p99 ms)")
    print(f"| {sweep} | test | " + " | ".join(systems) + " |")
    print("| ---: | --- |" + " ---: |" * len(systems))
    for test in ("PUT", "GET"):
        for x in xs:
            cells = []
            for system in systems:
                p = next((p for p in rows if (p["x"], p["system"], p["test"]) == (x, system, test)), None)
                cells.append(f"{p['ops_per_sec']:,.0f} ({p['p99_ms']:.1f})" if p else "—")
            print(f"| {x:,} | {test} | " + " | ".join(cells) + " |")
EOF
for sweep in clients value_size keys; do
    "$PLOT" --data "$OUT" --sweep "$sweep" --out "docs/bench-$sweep.svg"
done
echo "wrote $OUT and docs/bench-{clients,value_size,keys}.svg" >&2

#!/usr/bin/env bash
# kvs side by side with etcd and redis-server, every system measured in the same run so machine
# noise hits all alike. Not a test: it prints numbers, it does not judge them. Results and how
# to read them: docs/benchmarks.md.
#
#   bash tests/bench/run.sh [--quick] [--rounds N]
#
# Systems, each on 127.0.0.1:
#   kvs-durable   3 kvs nodes (`kvs-node demo`), log fsynced before every acknowledgement
#   kvs-memory    3 kvs nodes, `demo --in-memory` (replicated, nothing on disk)
#   etcd          3 etcd members (Debian's etcd-server), WAL fsynced before every acknowledgement,
#                 run with the flags its operations guide gives (lib.sh, ETCD_FLAGS)
#   redis         one redis-server, no persistence, no replication
# gRPC (kvs-bench): 64 clients over 8 connections spread over all three members, 256-byte
# values, 100k keys, each key written once first (`kvs-bench --load`; etcd is restarted after
# it, see restart_etcd): all writes, then all linearizable reads. RESP (redis-benchmark):
# -t set,get, 64 clients, against the kvs leader and redis-server. Rounds alternate the systems;
# tables show medians over rounds; gRPC rows also show the servers' CPU time per operation
# (user + system, load generator excluded), steadier than throughput on a shared machine.
# Every peer is also read by a second, independent client in the same round: etcd through the
# `etcd-client` crate (kvs-bench --target etcd-client), redis-server by kvs-bench beside
# redis-benchmark; the cross-check table marks a row whose two readings differ by more than 20%.
# Then memory: RSS of the kvs leader and of redis-server after loading 1M keys x 256 B.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

ROUNDS=3
REQUESTS=200000
MEMORY_KEYS=1000000
QUICK=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) ROUNDS=1; REQUESTS=50000; MEMORY_KEYS=100000; QUICK=1 ;;
        --rounds) ROUNDS="$2"; shift ;;
        *) echo "usage: $0 [--quick] [--rounds N]" >&2; exit 2 ;;
    esac
    shift
done
CLIENTS=64
VALUE_BYTES=256
KEYSPACE=100000

# shellcheck source=tests/bench/lib.sh
source tests/bench/lib.sh
install_peers
cargo build --release --bins >&2
SECONDS_PER_RUN=10

# CPU seconds (user + system) the given processes have used so far.
cpu_seconds() {
    local ticks=0 pid
    for pid in "$@"; do
        ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$ticks $(getconf CLK_TCK)" | awk '{print $1 / $2}'
}

# One kvs-bench run against the system made of the processes $6 (comma-separated), its clients
# sharing $7 connections; appends "system test ops/s p50 p99 cpu-us-per-op" to $WORK/results.
# CPU per operation counts the servers' processes only (not the load generator) and is much
# steadier than ops/s on a shared box.
bench_measure() {
    local system=$1 target=$2 endpoints=$3 test=$4 ratio=$5 conns=$7 before after
    local -a pids
    IFS=, read -r -a pids <<<"$6"
    before=$(cpu_seconds "${pids[@]}")
    "$BENCH" --target "$target" --endpoints "$endpoints" --clients "$CLIENTS" --conns "$conns" \
        --duration "$SECONDS_PER_RUN" --value-size "$VALUE_BYTES" --keys "$KEYSPACE" \
        --read-ratio "$ratio" --json >"$WORK/run.json"
    after=$(cpu_seconds "${pids[@]}")
    python3 -c '
import json, sys
r = json.load(open(sys.argv[3]))
cpu_us = (float(sys.argv[5]) - float(sys.argv[4])) * 1e6 / max(r["ops"], 1)
print(sys.argv[1], sys.argv[2], r["ops_per_sec"], r["p50_ms"], r["p99_ms"], round(cpu_us))
' "$system" "$test" "$WORK/run.json" "$before" "$after" >>"$WORK/results"
}

# One redis-benchmark run; appends "system test rps p50 p99" lines to $WORK/results.
measure() {
    local system=$1 port=$2
    redis-benchmark -h 127.0.0.1 -p "$port" -t set,get -n "$REQUESTS" -c "$CLIENTS" \
        -d "$VALUE_BYTES" -r "$KEYSPACE" --csv 2>/dev/null |
        python3 -c '
import csv, sys
rows = list(csv.reader(sys.stdin))
head = rows[0]
for row in rows[1:]:
    r = dict(zip(head, row))
    print(sys.argv[1], r["test"], r["rps"], r["p50_latency_ms"], r["p99_latency_ms"])
' "$system" >>"$WORK/results"
}

# The node processes a `kvs-node demo` started.
nodes_of() { pgrep -d, -P "$1"; }
read -r pid port endpoints _ < <(start_kvs durable); PIDS+=("$pid"); KVS_DURABLE=$port; KVS_DURABLE_GRPC=$endpoints
KVS_DURABLE_PIDS=$(nodes_of "$pid")
read -r pid port endpoints _ < <(start_kvs memory); PIDS+=("$pid"); KVS_MEMORY=$port; KVS_MEMORY_GRPC=$endpoints
KVS_MEMORY_PIDS=$(nodes_of "$pid")
read -r pids endpoints < <(start_etcd); IFS=, read -r -a etcd_pids <<<"$pids"; PIDS+=("${etcd_pids[@]}"); ETCD_GRPC=$endpoints
ETCD_PIDS=$pids
read -r pid port < <(start_redis); PIDS+=("$pid"); REDIS=$port; REDIS_PID=$pid
for started in "$KVS_DURABLE_GRPC" "$KVS_MEMORY_GRPC" "$ETCD_GRPC" "$REDIS"; do
    [ -n "$started" ] || { echo "a system did not start; see the messages above" >&2; exit 1; }
done
if [ "$QUICK" = 1 ]; then SECONDS_PER_RUN=5; fi

# Reads must find stored values, as in YCSB and etcd's own benchmark: every key of the key space
# is written once into each gRPC system before the first round. (redis-benchmark's SET phase
# fills the RESP systems before their GETs.)
for system in "kvs $KVS_DURABLE_GRPC" "kvs $KVS_MEMORY_GRPC" "etcd $ETCD_GRPC"; do
    read -r target endpoints <<<"$system"
    "$BENCH" --target "$target" --endpoints "$endpoints" --load --clients 16 --conns 8 \
        --keys "$KEYSPACE" --value-size "$VALUE_BYTES" --json |
        python3 -c '
import json, sys
r = json.load(sys.stdin)
print("loaded {ops} keys of {value_size} B into {target} in {seconds:.1f} s ({errors} errors)".format(**r))' >&2
done
ETCD_PIDS=$(restart_etcd "$ETCD_PIDS" "$ETCD_GRPC")
IFS=, read -r -a etcd_pids <<<"$ETCD_PIDS"; PIDS+=("${etcd_pids[@]}")
echo "restarted etcd's members after the load" >&2

echo "machine: $(machine_note)" >&2
echo "workload: redis-benchmark -t set,get -n $REQUESTS -c $CLIENTS -d $VALUE_BYTES -r $KEYSPACE; $ROUNDS round(s)" >&2
# Each of etcd's two clients goes first in every other round, so neither always meets the state
# the other left.
etcd_both() {
    local test=$1 ratio=$2 round=$3 first=etcd second=etcd-client
    if [ $((round % 2)) = 0 ]; then first=etcd-client; second=etcd; fi
    bench_measure "grpc:$first" "$first" "$ETCD_GRPC" "$test" "$ratio" "$ETCD_PIDS" 8
    bench_measure "grpc:$second" "$second" "$ETCD_GRPC" "$test" "$ratio" "$ETCD_PIDS" 8
}
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round/$ROUNDS" >&2
    bench_measure grpc:kvs-durable kvs "$KVS_DURABLE_GRPC" PUT 0 "$KVS_DURABLE_PIDS" 8
    etcd_both PUT 0 "$round"
    bench_measure grpc:kvs-memory kvs "$KVS_MEMORY_GRPC" PUT 0 "$KVS_MEMORY_PIDS" 8
    bench_measure grpc:kvs-durable kvs "$KVS_DURABLE_GRPC" GET 1 "$KVS_DURABLE_PIDS" 8
    etcd_both GET 1 "$round"
    measure kvs-durable "$KVS_DURABLE"
    measure kvs-memory "$KVS_MEMORY"
    measure redis "$REDIS"
    # redis-server through kvs-bench, a connection per client as redis-benchmark has them.
    bench_measure bench:redis redis "127.0.0.1:$REDIS" SET 0 "$REDIS_PID" "$CLIENTS"
    bench_measure bench:redis redis "127.0.0.1:$REDIS" GET 1 "$REDIS_PID" "$CLIENTS"
done

# Memory: fresh systems, so nothing else is stored. RSS of the kvs leader (3 durable nodes,
# snapshotting every 1,000 entries so the log is purged behind a snapshot as in steady state)
# and of redis-server, before and after loading MEMORY_KEYS distinct keys of VALUE_BYTES with
# MSET (100 keys per command) through `redis-cli --pipe`.
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
PIDS=()
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
listening_pid() {
    # The process listening on 127.0.0.1:$1.
    local inode
    inode=$(awk -v port="$(printf '%04X' "$1")" '$2 ~ ":"port"$" && $4 == "0A" {print $10; exit}' /proc/net/tcp)
    for fd in /proc/[0-9]*/fd/*; do
        if [ "$(readlink "$fd" 2>/dev/null)" = "socket:[$inode]" ]; then
            echo "$fd" | cut -d/ -f3
            return
        fi
    done
}
python3 -c '
import sys
n, size, per = int(sys.argv[1]), int(sys.argv[2]), 100
out = sys.stdout.buffer
value = b"v" * size
for first in range(0, n, per):
    keys = [b"mem:%010d" % i for i in range(first, min(n, first + per))]
    out.write(b"*%d\r\n$4\r\nMSET\r\n" % (1 + 2 * len(keys)))
    for key in keys:
        out.write(b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, size, value))
' "$MEMORY_KEYS" "$VALUE_BYTES" >"$WORK/load.resp"
read -r pid port _ _ < <(start_kvs memory-test); PIDS+=("$pid"); KVS_MEM_TEST=$port
read -r pid port < <(start_redis); PIDS+=("$pid"); REDIS_MEM_TEST=$port
for target in "kvs-durable $KVS_MEM_TEST" "redis $REDIS_MEM_TEST"; do
    read -r system port <<<"$target"
    pid=$(listening_pid "$port")
    before=$(rss_kib "$pid")
    # A failed load leaves its memory row out; the speed tables above it are still printed.
    if ! redis-cli -p "$port" --pipe --pipe-timeout 600 <"$WORK/load.resp" >"$WORK/pipe-$system.out" 2>&1; then
        echo "loading $system failed, its memory row is left out:" >&2
        sort "$WORK/pipe-$system.out" | uniq -c | sort -rn | head -n 5 >&2
        continue
    fi
    echo "memory $system $(redis-cli -p "$port" dbsize) $before $(rss_kib "$pid")" >>"$WORK/results"
done

python3 - "$WORK/results" <<'EOF'
import statistics, sys
from collections import defaultdict
runs = defaultdict(list)
memory = {}
for line in open(sys.argv[1]):
    if line.startswith("memory "):
        _, system, keys, before, after = line.split()
        memory[system] = (int(keys), int(before), int(after))
        continue
    system, test, rps, p50, p99, *cpu = line.split()
    runs[(system, test)].append((float(rps), float(p50), float(p99), float(cpu[0]) if cpu else None))
def med(system, test, i):
    return statistics.median(r[i] for r in runs[(system, test)])
def table(title, tests, systems, peer):
    label = "vs " + peer.split(":")[-1]
    cpu = any(r[3] is not None for (system, _), rs in runs.items() if system in systems for r in rs)
    print(f"{title:<17} {'test':<4} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8} {label:>10}"
          + (f" {'cpu us/op':>10} {label:>8}" if cpu else ""))
    for test in tests:
        for system in systems:
            if (system, test) not in runs:
                continue
            rps = med(system, test, 0)
            ratio = rps / med(peer, test, 0)
            line = (f"{system:<17} {test:<4} {rps:>10.0f} {med(system, test, 1):>8.3f} "
                    f"{med(system, test, 2):>8.3f} {ratio:>9.2f}x")
            if cpu:
                us = med(system, test, 3)
                line += f" {us:>10.0f} {us / med(peer, test, 3):>7.2f}x"
            print(line)
    print()
table("gRPC system", ("PUT", "GET"), ("grpc:kvs-durable", "grpc:kvs-memory", "grpc:etcd"), "grpc:etcd")
table("RESP system", ("SET", "GET"), ("kvs-durable", "kvs-memory", "redis"), "redis")
# The same peer read by two clients: kvs-bench, which drives kvs and gives the ratios above, and
# an independent one. A row whose readings differ by more than 20% is marked: then a client, not
# the system, sets the number.
print(f"{'cross-check':<11} {'test':<4} {'kvs-bench':>10} {'second client':>24} {'differ':>7}")
for peer, second, name, tests in (("grpc:etcd", "grpc:etcd-client", "etcd-client", ("PUT", "GET")),
                                  ("bench:redis", "redis", "redis-benchmark", ("SET", "GET"))):
    for test in tests:
        if (peer, test) not in runs or (second, test) not in runs:
            continue
        a, b = med(peer, test, 0), med(second, test, 0)
        differ = abs(a - b) / b
        mark = "  <- differ by more than 20%" if differ > 0.20 else ""
        print(f"{peer.split(':')[-1]:<11} {test:<4} {a:>10.0f} {b:>8.0f} {name:>15} {differ:>6.0%}{mark}")
print()
for system, (keys, before, after) in memory.items():
    print(f"memory {system:<12} {keys} keys: RSS {after / 1024:.0f} MiB "
          f"({before / 1024:.0f} MiB empty, {(after - before) * 1024 / max(keys, 1):.0f} B per key)")
if len(memory) == 2:
    print(f"memory kvs/redis: {memory['kvs-durable'][2] / memory['redis'][2]:.2f}x RSS, "
          f"{(memory['kvs-durable'][2] - memory['kvs-durable'][1]) / max(1, memory['redis'][2] - memory['redis'][1]):.2f}x growth")
d, m = med("grpc:kvs-durable", "PUT", 0), med("grpc:kvs-memory", "PUT", 0)
print(f"durable/in-memory gRPC PUT throughput: {d / m:.2f}x; "
      f"p99 {med('grpc:kvs-durable', 'PUT', 2):.3f} vs {med('grpc:kvs-memory', 'PUT', 2):.3f} ms")
EOF

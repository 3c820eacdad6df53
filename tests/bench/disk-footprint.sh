#!/usr/bin/env bash
# A node's disk footprint under steady load: a durable 3-node demo cluster takes the same mixed
# RESP load every minute (SETs and GETs of 384-byte values over a bounded key space, through
# redis-benchmark), and each node's data directory is measured once a minute. The load is a fixed
# number of requests per minute, not "as fast as possible", so runs of two builds on a busy
# machine write the same bytes and their footprints can be compared.
#
#   bash tests/bench/disk-footprint.sh [--minutes N] [--bin DIR] [--keys N] [--per-minute N]
#                                      [-- extra kvs-node flags passed through KVS_* env]
#
# Prints one line per minute: minute, then for each node its data directory's total, the Raft
# log (journals and segments) and the snapshots, in MiB. docs/storage.md records runs of it.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

MINUTES=30
BIN=target/release
KEYS=100001
PER_MINUTE=60000
while [ $# -gt 0 ]; do
    case $1 in
        --minutes) MINUTES=$2; shift 2 ;;
        --bin) BIN=$2; shift 2 ;;
        --keys) KEYS=$2; shift 2 ;;
        --per-minute) PER_MINUTE=$2; shift 2 ;;
        *) echo "disk-footprint.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
command -v redis-benchmark >/dev/null || { echo "disk-footprint.sh: redis-benchmark is missing (Debian redis-tools)" >&2; exit 1; }
[ -x "$BIN/kvs-node" ] || { echo "disk-footprint.sh: no $BIN/kvs-node; build with cargo build --release" >&2; exit 1; }

WORK=$(mktemp -d)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

base=$(shuf -i 20000-40000 -n 1)
"$BIN/kvs-node" demo --nodes 3 --base-port "$base" --dir "$WORK/demo" >"$WORK/demo.out" 2>&1 &
PID=$!
resp=$((base + 100))
deadline=$((SECONDS + 60))
until redis-cli -p "$resp" SET disk-footprint-probe 1 2>/dev/null | grep -q OK; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "disk-footprint.sh: the cluster did not take a write; see below" >&2
        cat "$WORK/demo.out" >&2
        exit 1
    fi
    sleep 0.5
done

mib() { du -sb "$1" 2>/dev/null | awk '{printf "%.0f", $1 / 1048576}'; }
sample() {
    local line="$1" i d
    for i in 0 1 2; do
        d="$WORK/demo/node-$i"
        line+=" | $(mib "$d") $(mib "$d/raft") $(mib "$d/snapshots")"
    done
    echo "$line"
}

echo "# $(nproc) cores; $PER_MINUTE SET + $PER_MINUTE GET per minute over $KEYS keys, 384-byte values; $BIN"
echo "# minute | node-0 total raft snapshots | node-1 ... | node-2 ... (MiB)"
for minute in $(seq 1 "$MINUTES"); do
    start=$SECONDS
    redis-benchmark -p "$resp" -t set,get -n "$PER_MINUTE" -r "$KEYS" -d 384 -c 16 -q >/dev/null
    sample "$minute"
    rest=$((60 - (SECONDS - start)))
    [ "$rest" -gt 0 ] && sleep "$rest"
done
echo "# keys at the end: $(redis-cli -p "$resp" DBSIZE)"

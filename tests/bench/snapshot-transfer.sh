#!/usr/bin/env bash
# Measures a Raft snapshot transfer: loads KEYS keys of VALUE_BYTES into a 2-node durable
# cluster (release build, snapshotting every 10,000 entries, so the log is purged behind a
# snapshot), then adds a third node, which can only catch up by installing the leader's snapshot.
# Prints the snapshot's size, the transfer and catch-up times, and the peak RSS (VmHWM) of the
# leader (sender) and the new node (receiver) against their RSS holding the state.
#
#   bash tests/bench/snapshot-transfer.sh [KEYS] [VALUE_BYTES]     # default 4194304 x 256
#   PROFILE=debug NO_BUILD=1 bash tests/bench/snapshot-transfer.sh 1048576   # debug, as built
#
# Everything runs on 127.0.0.1 and is removed at the end. Needs redis-cli (redis-tools).
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

KEYS=${1:-4194304}
VALUE_BYTES=${2:-256}
command -v redis-cli >/dev/null || { echo "needs redis-cli (apt-get install redis-tools)" >&2; exit 1; }
PROFILE=${PROFILE:-release}
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --profile "${PROFILE/debug/dev}" -p kvs-node >&2
    cargo build --profile "${PROFILE/debug/dev}" -p kvs-client --bin kvsctl >&2
fi
# The scratch directory and the cleanup of everything started, shared with the other benches.
source tests/bench/lib.sh
NODE=target/$PROFILE/kvs-node
KVSCTL=target/$PROFILE/kvsctl

BASE=$(shuf -i 20000-40000 -n 1)
# Starts node $1 (0, 1, 2); extra flags follow. Prints nothing; waits until it serves.
start_node() {
    local i=$1; shift
    "$NODE" --data-dir "$WORK/node-$i" --listen "127.0.0.1:$((BASE + i))" \
        --resp-listen "127.0.0.1:$((BASE + 100 + i))" --snapshot-every 10000 \
        --election-timeout-ms 1500 --heartbeat-interval-ms 300 "$@" \
        >"$WORK/node-$i.out" 2>"$WORK/node-$i.log" </dev/null &
    PIDS+=($!)
    local deadline=$((SECONDS + 30))
    until grep -q serving "$WORK/node-$i.out"; do
        [ "$SECONDS" -lt "$deadline" ] || { echo "node $i did not start" >&2; cat "$WORK/node-$i.log" >&2; exit 1; }
        sleep 0.2
    done
}
kib() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
mib() { echo $(($1 / 1024)); }

start_node 0 --bootstrap
start_node 1
"$KVSCTL" --endpoints "127.0.0.1:$BASE" member add "127.0.0.1:$((BASE + 1))" >/dev/null

python3 - "$KEYS" "$VALUE_BYTES" >"$WORK/load.resp" <<'EOF'
import sys
n, size, per = int(sys.argv[1]), int(sys.argv[2]), 100
out = sys.stdout.buffer
value = b"v" * size
for first in range(0, n, per):
    keys = [b"key:%010d" % i for i in range(first, min(n, first + per))]
    out.write(b"*%d\r\n$4\r\nMSET\r\n" % (1 + 2 * len(keys)))
    for key in keys:
        out.write(b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, size, value))
EOF
load_start=$SECONDS
redis-cli -p "$((BASE + 100))" --pipe --pipe-timeout 1200 <"$WORK/load.resp" >"$WORK/pipe.out" 2>&1 ||
    { echo "loading failed:" >&2; cat "$WORK/pipe.out" >&2; exit 1; }
rm "$WORK/load.resp"
echo "loaded $(redis-cli -p "$((BASE + 100))" dbsize) keys in $((SECONDS - load_start)) s"

# Wait for the leader's newest snapshot to cover the load (building one takes a while).
last_index() { "$KVSCTL" --endpoints "127.0.0.1:$BASE" status -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["applied_index"])'; }
# Snapshots land at indexes 9999, 19999, ...: the newest one at or below the last entry.
target=$(( ($(last_index) + 1) / 10000 * 10000 - 1 ))
deadline=$((SECONDS + 600))
until ls "$WORK/node-0/snapshots/" | awk -F'[-.]' -v t="$target" '$2 + 0 >= t {found=1} END {exit !found}'; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "no snapshot at $target" >&2; exit 1; }
    sleep 1
done
sleep 2 # let the snapshot writer finish and the log purge settle
snapshot=$(ls "$WORK/node-0/snapshots/"*.snap | tail -1)
leader=${PIDS[0]}
leader_rss=$(kib "$leader" VmRSS)
echo 5 >"/proc/$leader/clear_refs" # reset the leader's VmHWM to its current RSS

start_node 2
add_start=$(date +%s.%N)
"$KVSCTL" --endpoints "127.0.0.1:$BASE" member add --timeout 10m "127.0.0.1:$((BASE + 2))" >/dev/null
add_end=$(date +%s.%N)
receiver=${PIDS[2]}
grep -q "installed snapshot" "$WORK/node-2.log" || { echo "the new member did not install a snapshot" >&2; exit 1; }
received=$(grep "received snapshot" "$WORK/node-2.log" | tail -1)

echo "snapshot file: $(stat -c %s "$snapshot") bytes ($(mib $(($(stat -c %s "$snapshot") / 1024))) MiB)"
echo "receive: ${received#*received snapshot}"
echo "member add (transfer + install + catch-up + promotion): $(echo "$add_end - $add_start" | bc) s"
echo "leader (sender): RSS before $(mib "$leader_rss") MiB, peak during transfer $(mib "$(kib "$leader" VmHWM)") MiB"
echo "new node (receiver): RSS after install $(mib "$(kib "$receiver" VmRSS)") MiB, peak since start $(mib "$(kib "$receiver" VmHWM)") MiB"

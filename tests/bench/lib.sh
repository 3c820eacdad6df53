# Sourced by the bench scripts (run.sh, curves.sh, snapshot-transfer.sh): installs the peers, starts each system on
# 127.0.0.1 and stops everything started when the script exits. Expects the workspace root as
# the current directory and release binaries in target/release.

NODE=target/release/kvs-node
KVSCTL=target/release/kvsctl
BENCH=target/release/kvs-bench

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# Installs etcd and redis (servers and their command-line tools) from Debian if missing.
install_peers() {
    local missing=() pkg
    for pkg in redis-server redis-tools etcd-server etcd-client; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        sudo_if() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
        sudo_if apt-get update
        sudo_if env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}

machine_note() {
    echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
}

free_base_port() {
    # A base port whose client (P..P+2) and RESP (P+100..P+102) ports are all free.
    local base port busy
    for base in $(shuf -i 20000-40000 -n 50); do
        busy=0
        for port in $base $((base + 1)) $((base + 2)) $((base + 100)) $((base + 101)) $((base + 102)); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then busy=1; break; fi
        done
        if [ "$busy" -eq 0 ]; then echo "$base"; return; fi
    done
    echo "no free ports" >&2
    exit 1
}

# Starts a 3-node demo cluster (mode durable, memory, or memory-test: durable and snapshotting
# every 1,000 entries); prints "PID RESP_PORT_OF_LEADER CLIENT_ENDPOINTS RESP_ENDPOINTS".
start_kvs() {
    local mode=$1 base dir endpoints resp_endpoints leader deadline
    base=$(free_base_port)
    dir="$WORK/$mode"
    local flags=() env=()
    if [ "$mode" = memory ]; then flags=(--in-memory); fi
    if [ "$mode" = memory-test ]; then env=(KVS_SNAPSHOT_EVERY=1000); fi
    env "${env[@]}" "$NODE" demo --nodes 3 --base-port "$base" --dir "$dir" "${flags[@]}" >"$WORK/$mode.out" 2>&1 &
    local pid=$!
    endpoints="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
    resp_endpoints="127.0.0.1:$((base + 100)),127.0.0.1:$((base + 101)),127.0.0.1:$((base + 102))"
    deadline=$((SECONDS + 60))
    until leader=$("$KVSCTL" --endpoints "$endpoints" endpoint status -o json 2>/dev/null |
        python3 -c 'import json,sys; print(next(i for i, e in enumerate(json.load(sys.stdin)) if e.get("leader") and e.get("leader") == e.get("node_id")))' 2>/dev/null); do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "kvs ($mode) did not elect a leader; see $WORK/$mode.out" >&2
            cat "$WORK/$mode.out" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "$pid $((base + 100 + leader)) $endpoints $resp_endpoints"
}

# etcd's members run as its operations guide has them (docs/benchmarks.md, "How etcd is run"):
# the documented 8 GiB ceiling for the backend quota (the default 2 GiB is too small for the
# curves' larger key spaces), auto-compaction on with the guide's own revision example (every
# 5 minutes, keeping the newest 1,000 revisions), the structured logger 3.4 asks for, and the
# default Raft timing written out: heartbeat 100 ms, election 1 s, both far above a loopback
# round trip and wide enough for a starved 2-core machine; snapshots every 100,000 entries.
ETCD_FLAGS=(
    --quota-backend-bytes=$((8 * 1024 * 1024 * 1024))
    --auto-compaction-mode=revision --auto-compaction-retention=1000
    --snapshot-count=100000
    --heartbeat-interval=100 --election-timeout=1000
    --logger=zap
)

# Starts member $1 (0, 1 or 2) of the etcd cluster whose client ports start at $2, in
# $WORK/etcd-$1 (a new member, or the same member again over its data); prints its PID.
start_etcd_member() {
    local i=$1 base=$2 cluster="" m
    for m in 0 1 2; do
        cluster+="${cluster:+,}e$m=http://127.0.0.1:$((base + 100 + m))"
    done
    etcd --name "e$i" --data-dir "$WORK/etcd-$i" \
        --listen-client-urls "http://127.0.0.1:$((base + i))" \
        --advertise-client-urls "http://127.0.0.1:$((base + i))" \
        --listen-peer-urls "http://127.0.0.1:$((base + 100 + i))" \
        --initial-advertise-peer-urls "http://127.0.0.1:$((base + 100 + i))" \
        --initial-cluster "$cluster" --initial-cluster-state new \
        --initial-cluster-token kvs-bench "${ETCD_FLAGS[@]}" >>"$WORK/etcd-$i.out" 2>&1 &
    echo $!
}

# Waits until every member of the etcd cluster at the endpoints $1 answers.
await_etcd() {
    local deadline=$((SECONDS + 60))
    until ETCDCTL_API=3 etcdctl --endpoints "$1" endpoint health >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "etcd did not become healthy; see $WORK/etcd-0.out" >&2
            tail -n 20 "$WORK/etcd-0.out" >&2
            exit 1
        fi
        sleep 0.5
    done
}

# Starts a 3-member etcd cluster; prints "PIDS CLIENT_ENDPOINTS" (PIDS comma-separated).
start_etcd() {
    local base i endpoints="" pids=""
    base=$(free_base_port)
    for i in 0 1 2; do
        endpoints+="${endpoints:+,}127.0.0.1:$((base + i))"
        pids+="${pids:+,}$(start_etcd_member "$i" "$base")"
    done
    await_etcd "$endpoints"
    echo "$pids $endpoints"
}

# Restarts the etcd members $1 (comma-separated PIDs) serving the endpoints $2 over their data;
# prints the new PIDS. Run after a bulk load: etcd 3.4 sizes a buffer of its backend by the
# most writes one backend commit ever held and copies all of it into every read from then on
# (3.5 reuses the copy), so a load of 100-key transactions would leave every later read paying
# for the load's burst instead of for the benchmark's own writes. A restart starts the buffer
# afresh; the data is on disk.
restart_etcd() {
    local pid i base=${2%%,*} pids="" deadline=$((SECONDS + 60))
    local -a old
    base=${base##*:}
    IFS=, read -r -a old <<<"$1"
    for pid in "${old[@]}"; do kill "$pid"; done
    for pid in "${old[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do
            [ "$SECONDS" -lt "$deadline" ] || { echo "etcd member $pid did not stop" >&2; exit 1; }
            sleep 0.1
        done
    done
    for i in 0 1 2; do
        pids+="${pids:+,}$(start_etcd_member "$i" "$base")"
    done
    await_etcd "$2"
    echo "$pids"
}

# Starts one redis-server without persistence; prints "PID PORT".
start_redis() {
    local port
    port=$(free_base_port)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
        >"$WORK/redis.out" 2>&1 &
    local pid=$!
    local deadline=$((SECONDS + 20))
    until redis-cli -p "$port" ping >/dev/null 2>&1; do
        [ "$SECONDS" -ge "$deadline" ] && { echo "redis-server did not start" >&2; exit 1; }
        sleep 0.2
    done
    echo "$pid $port"
}

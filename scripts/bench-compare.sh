#!/usr/bin/env bash
# Run one `raftmq bench` scenario against Mosquitto and raftmq on this machine
# and print the median figures side by side, with ratios against Mosquitto.
#
#   scripts/bench-compare.sh [--runs N] [bench options...]
#   scripts/bench-compare.sh                      # pairs, 10 -> 10, 10,000 msgs each, QoS 0
#   scripts/bench-compare.sh fanout --clients 50 --qos 1
#   scripts/bench-compare.sh --runs 5 latency --rate 20000
#
# Every run gets a freshly started broker on a free loopback port (Mosquitto
# with its defaults plus `persistence false`; $MOSQUITTO_CONF_EXTRA adds
# lines, e.g. "set_tcp_nodelay true"), so no run inherits queues, sessions or
# a warmed-up heap from the one before; that matters most for the conns
# scenario, which gets --broker-pid and reports the RSS growth per
# connection. Runs alternate between the brokers (A B A B ...) so that a
# burst of load elsewhere on the machine hurts both alike. Everything this
# script started is stopped on exit, whatever happens.
#
# Another broker is one more `start_<name>` function that sets PORT[<name>]
# and PID[<name>], plus its name in $BENCH_BROKERS (default "mosquitto
# raftmq"; the first one is the baseline).
#
# Exit status: 0 if every run was clean, 1 otherwise, 2 if a broker would not start.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

PYTHON=.venv/bin/python
RAFTMQ=.venv/bin/raftmq
START_TIMEOUT=15
read -r -a BROKERS <<<"${BENCH_BROKERS:-mosquitto raftmq}"

runs=3
if [[ "${1:-}" == "--runs" ]]; then
    runs=$2
    shift 2
fi
bench_args=("$@")
if ((${#bench_args[@]} == 0)); then
    bench_args=(pairs --clients 10 --messages 10000 --qos 0)
fi

say() { echo "bench-compare: $*" >&2; }

tmp=$(mktemp -d -t raftmq-bench-compare.XXXXXX)
declare -A PORT PID
cleanup() {
    local name
    for name in "${!PID[@]}"; do
        kill "${PID[$name]}" 2>/dev/null || true
    done
    for name in "${!PID[@]}"; do
        wait "${PID[$name]}" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Wait until something accepts connections on 127.0.0.1:$1, while process $2 lives.
wait_for_port() {
    local deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$2" 2>/dev/null; then
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

start_mosquitto() {
    local port conf=$tmp/mosquitto.conf
    port=$(free_port)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n%b\n' \
        "$port" "${MOSQUITTO_CONF_EXTRA:-}" >"$conf"
    mosquitto -c "$conf" >"$tmp/mosquitto.log" 2>&1 &
    PID[mosquitto]=$!
    PORT[mosquitto]=$port
    wait_for_port "$port" "${PID[mosquitto]}"
}

start_raftmq() {
    local port
    port=$(free_port)
    rm -rf "$tmp/raftmq-data"
    "$RAFTMQ" node --listen "tcp://127.0.0.1:$port" --data-dir "$tmp/raftmq-data" \
        >"$tmp/raftmq.log" 2>&1 &
    PID[raftmq]=$!
    PORT[raftmq]=$port
    local deadline=$((SECONDS + START_TIMEOUT))
    until grep -q "listening on" "$tmp/raftmq.log"; do
        if ((SECONDS >= deadline)) || ! kill -0 "${PID[raftmq]}" 2>/dev/null; then
            return 1
        fi
        sleep 0.05
    done
}

stop_broker() {
    kill "${PID[$1]}" 2>/dev/null || true
    wait "${PID[$1]}" 2>/dev/null || true
    unset "PID[$1]"
}

mkdir "$tmp/runs"
for ((run = 1; run <= runs; run++)); do
    for name in "${BROKERS[@]}"; do
        if ! "start_$name"; then
            say "$name did not start; its output:"
            cat "$tmp/$name.log" >&2 || true
            exit 2
        fi
        extra=()
        if [[ "${bench_args[0]}" == conns ]]; then
            extra=(--broker-pid "${PID[$name]}")
        fi
        say "run $run/$runs: $name (pid ${PID[$name]}, port ${PORT[$name]}): bench ${bench_args[*]}"
        # A failed run still leaves its report (or an empty file): the table shows it.
        "$RAFTMQ" bench "${bench_args[@]}" "${extra[@]}" \
            --host 127.0.0.1 --port "${PORT[$name]}" --json --quiet \
            >"$tmp/runs/$name.$run.json" || true
        stop_broker "$name"
    done
done

echo "bench ${bench_args[*]}  ($runs runs per broker, interleaved)"
"$PYTHON" -m raftmq.cluster.bench.compare "$tmp/runs" "${BROKERS[@]}"

#!/usr/bin/env bash
# Run `raftmq bench` against Mosquitto, amqtt and raftmq on this machine, side by side.
#
#   scripts/bench-compare.sh --all                  # issue 3's table -> BENCHMARKS.md + charts
#   scripts/bench-compare.sh                        # pairs 10 -> 10, 10,000 msgs each, QoS 0
#   scripts/bench-compare.sh fanout --clients 50 --qos 1
#   scripts/bench-compare.sh --runs 5 --brokers mosquitto,raftmq latency --rate 20000
#
# Options (the rest goes to `raftmq bench`):
#   --all              every scenario of the table (about 20 minutes on 2 cores); writes
#                      BENCHMARKS.md, docs/bench/results.json and docs/bench/*.png
#   --runs N           runs per broker and scenario, median reported (default 3)
#   --brokers A,B,...  from mosquitto, amqtt, raftmq; the first is the baseline
#                      (default mosquitto,amqtt,raftmq)
#   --only CASE,...    with --all: only these cases (names as in docs/bench/results.json)
#   --smoke            with --all: every case at a tiny size, to check the pipeline
#   --slow-timeout S   seconds amqtt gets for a full-size run before its runs are made
#                      smaller, which BENCHMARKS.md then says (default 10)
#
# What it installs when missing: Mosquitto from Debian (apt-get, as root or with
# password-less sudo; otherwise it says what to run), raftmq's own .venv (through
# scripts/setup.sh), and a separate .bench-venv with amqtt and matplotlib from
# PyPI, which raftmq itself does not depend on.
#
# Every run gets a freshly started broker on a free loopback port; runs go
# A B C A B C ... so a burst of load elsewhere hurts every broker alike. Each
# broker and each bench run is a process group of its own, recorded as it
# starts; on exit, whatever happens, every recorded group still alive is killed.
# $MOSQUITTO_CONF_EXTRA adds lines to Mosquitto's config, e.g. "set_tcp_nodelay true";
# $RAFTMQ_NODE_ARGS adds `raftmq node` options, e.g. "--acl-file /tmp/bench.acl".
#
# Exit status: 0 if every counted run was clean, 1 otherwise (a broker that
# would not start makes its runs fail), 2 if something needed is missing.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

AMQTT_SPEC="amqtt==0.12.1"
MATPLOTLIB_SPEC="matplotlib>=3.8"
BENCH_VENV=.bench-venv
# Enough descriptors for 20,000 connections plus the broker's own.
WANTED_OPEN_FILES=65536

say() { echo "bench-compare: $*" >&2; }

all=0
brokers="mosquitto,amqtt,raftmq"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
    --all) all=1 ;;
    --brokers) brokers="${args[i + 1]:-}" ;;
    --brokers=*) brokers="${args[i]#--brokers=}" ;;
    esac
done

# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
ensure_raftmq
if [[ ",$brokers," == *,mosquitto,* ]]; then
    ensure_mosquitto
fi

# --- amqtt and matplotlib, in their own venv ------------------------------------
need_venv=0
[[ ",$brokers," == *,amqtt,* || $all -eq 1 ]] && need_venv=1
if ((need_venv)) && ! "$BENCH_VENV/bin/python" -c 'import amqtt, matplotlib' 2>/dev/null; then
    say "installing $AMQTT_SPEC and matplotlib into $BENCH_VENV"
    base_python=$(.venv/bin/python -c 'import sys; print(sys._base_executable)')
    "$base_python" -m venv "$BENCH_VENV"
    "$BENCH_VENV/bin/pip" install -q --disable-pip-version-check "$AMQTT_SPEC" "$MATPLOTLIB_SPEC"
fi

# --- open files: 20,000 idle connections need as many descriptors per process ---
if (($(ulimit -Hn) < WANTED_OPEN_FILES)); then
    ulimit -Hn "$WANTED_OPEN_FILES" 2>/dev/null ||
        say "cannot raise the hard open-files limit above $(ulimit -Hn); conns will be capped"
fi
ulimit -Sn "$(ulimit -Hn)"

# --- run -------------------------------------------------------------------------
track_process_groups raftmq-bench-compare

extra=()
if ((need_venv)); then
    extra+=(--amqtt "$BENCH_VENV/bin/amqtt" --charts-python "$BENCH_VENV/bin/python")
fi
status=0
.venv/bin/python -m raftmq.cluster.tools.bench.compare \
    --groups-file "$BENCH_TMP/groups" --command "scripts/bench-compare.sh $*" \
    "${extra[@]}" "$@" || status=$?
exit "$status"

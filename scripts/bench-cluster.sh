#!/usr/bin/env bash
# Cross-node and same-node figures of a 3-node raftmq cluster, beside one raftmq node and
# Mosquitto, with `raftmq bench`; a Markdown table on stdout.
#
#   scripts/bench-cluster.sh                      # median of 3, about 6 minutes on 2 cores
#   scripts/bench-cluster.sh --json results.json  # also every figure and run as JSON
#   scripts/bench-cluster.sh --smoke --runs 1     # tiny sizes, to check the pipeline
#
# What it measures, each run on a freshly started deployment on loopback:
#   pairs 10 -> 10, 5,000 msgs each, QoS 1        msgs/s
#   latency, 10 pairs at 2,000 msgs/s, QoS 1, 10 s p99 ms
#   connect-rate, 50 clients, 10 s                 connects/s
# on Mosquitto, one `raftmq node`, and `raftmq cluster up --nodes 3` with the clients
# on node 1 (same node), publishers on node 1 and subscribers on node 2 (cross-node),
# and, for connect-rate, round-robin over the three nodes. Every figure comes with its
# ratio to Mosquitto measured in the same run: the machine is shared and noisy.
#
# Options: --runs N (default 3), --json FILE, --smoke.
#
# What it installs when missing: Mosquitto from Debian (apt-get, as root or with
# password-less sudo; otherwise it says what to run) and raftmq's own .venv (through
# scripts/setup.sh).
#
# Runs go A B C D A B C D ..., so a burst of load elsewhere hurts every deployment
# alike. Each broker, cluster and bench run is a process group of its own, recorded as
# it starts; on exit, whatever happens, every recorded group still alive is killed.
#
# Exit status: 0 if every run was clean, 1 otherwise, 2 if something needed is missing.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

say() { echo "bench-cluster: $*" >&2; }

# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
ensure_raftmq
ensure_mosquitto

# --- open files: 50 clients cycling connections, and three nodes ------------------
ulimit -Sn "$(ulimit -Hn)"

# --- run -------------------------------------------------------------------------
track_process_groups raftmq-bench-cluster

status=0
.venv/bin/python -m raftmq.cluster.tools.bench.cluster_compare \
    --groups-file "$BENCH_TMP/groups" --command "scripts/bench-cluster.sh $*" "$@" || status=$?
exit "$status"

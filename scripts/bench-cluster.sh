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

# --- raftmq itself --------------------------------------------------------------
if [[ ! -x .venv/bin/raftmq ]]; then
    say "no .venv yet: running scripts/setup.sh --no-start"
    scripts/setup.sh --no-start
fi

# --- Mosquitto, from Debian -----------------------------------------------------
if ! command -v mosquitto >/dev/null; then
    if [[ $EUID -eq 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    else
        say "Mosquitto is not installed and this needs root; please run:"
        say "  sudo apt-get install --no-install-recommends mosquitto"
        exit 2
    fi
    say "installing mosquitto from Debian"
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
fi

# --- open files: 50 clients cycling connections, and three nodes ------------------
ulimit -Sn "$(ulimit -Hn)"

# --- run -------------------------------------------------------------------------
tmp=$(mktemp -d -t raftmq-bench-cluster.XXXXXX)
# Members of process group $1 that are still running (zombies only wait for a reaper).
# shellcheck disable=SC2317  # called from cleanup
running_in_group() { ps -o pid=,stat=,args= -g "$1" 2>/dev/null | awk '$2 !~ /^Z/'; }

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local pgid alive=()
    if [[ -f "$tmp/groups" ]]; then
        while read -r pgid; do
            if [[ -n "$(running_in_group "$pgid")" ]]; then
                say "stopping what is left of process group $pgid: $(running_in_group "$pgid")"
                kill -TERM -- "-$pgid" 2>/dev/null || true
                alive+=("$pgid")
            fi
        done <"$tmp/groups"
        if ((${#alive[@]})); then
            sleep 1
            for pgid in "${alive[@]}"; do
                kill -KILL -- "-$pgid" 2>/dev/null || true
            done
        fi
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

status=0
.venv/bin/python -m raftmq.cluster.bench.cluster_compare \
    --groups-file "$tmp/groups" --command "scripts/bench-cluster.sh $*" "$@" || status=$?
exit "$status"

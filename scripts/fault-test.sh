#!/usr/bin/env bash
# Jepsen-style fault campaigns on a lab of network namespaces (tests/faults/).
#
#   scripts/fault-test.sh [--nodes N] [--nemesis mixed|KIND,...] [--duration SECONDS]
#                         [--seed S] [--out DIR]
#
# Needs root (namespaces, a bridge, nftables). Builds the lab, runs the workload
# under the nemesis for --duration seconds on a seeded schedule, heals, drains,
# runs the checkers, and prints the report. DIR (default faults-out/<time>) keeps
# history.jsonl, report.md, timeline.png and the nodes' logs; they are removed again
# when every checker passed, unless --keep. Exit status: 0 all checkers passed,
# 1 a violation, 2 the lab cannot run here. Kinds: partition-one, halves,
# isolate-leader, bridge, ring (5 nodes), kill-restart, pause. A crashed run leaves nothing behind that
# scripts/fault-teardown.sh does not remove (the next run calls it too).
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

out="faults-out/$(date +%Y%m%d-%H%M%S)"
keep=0
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    --out) out="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    *) args+=("$1"); shift ;;
    esac
done
scripts/setup.sh --no-start >/dev/null
mkdir -p "$out"
out_abs=$(readlink -f "$out")
status=0
(cd tests/faults && ../../.venv/bin/python run_campaign.py --out "$out_abs" "${args[@]}") || status=$?
if [[ $status -eq 0 && $keep -eq 0 ]]; then
    rm -rf "$out"
else
    echo "fault-test: history and logs kept in $out" >&2
fi
exit "$status"

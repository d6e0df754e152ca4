#!/usr/bin/env bash
# What an ACL costs: raftmq with and without a 20-rule ACL file, Mosquitto as the yardstick.
#
#   scripts/bench-acl.sh [--rounds N] [--messages M]
#
# Each round runs pairs 10 QoS 0, pairs 10 QoS 1 and fanin 10 QoS 0 (one
# wildcard subscriber that a deny rule overlaps, so every delivery is checked
# message by message), each without and then with docs/bench/acl-20-rules.acl,
# every run against a fresh Mosquitto too (scripts/bench-compare.sh --runs 1).
# Rounds interleave the variants so that load elsewhere on the machine hurts
# both alike. Prints one line per run and, at the end, the medians and the
# median per-round ratio ACL / no ACL.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

rounds=7
messages=30000
while [[ $# -gt 0 ]]; do
    case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --messages) messages="$2"; shift 2 ;;
    *) echo "bench-acl: unknown option $1" >&2; exit 2 ;;
    esac
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'acl_file = "%s"\nallow_anonymous = true\n' "$PWD/docs/bench/acl-20-rules.acl" > "$work/acl.toml"
results="$work/results.txt"

for ((round = 1; round <= rounds; round++)); do
    for case in "pairs --qos 0" "pairs --qos 1" "fanin --qos 0"; do
        for variant in none acl; do
            if [[ $variant == acl ]]; then
                export RAFTMQ_NODE_ARGS="--config $work/acl.toml"
            else
                unset RAFTMQ_NODE_ARGS
            fi
            # shellcheck disable=SC2086 # $case is several words on purpose
            table=$(scripts/bench-compare.sh --runs 1 --brokers mosquitto,raftmq \
                $case --messages "$messages" 2>/dev/null | grep -E '^(mosquitto|raftmq) ')
            line="$round|$case|$variant|$(echo "$table" | tr '\n' ' ')"
            echo "$line" | tee -a "$results"
        done
    done
done

.venv/bin/python - "$results" <<'PY'
import re, statistics, sys

runs = {}
for line in open(sys.argv[1]):
    _, case, variant, rest = line.rstrip("\n").split("|", 3)
    found = re.search(r"mosquitto\s+([\d,]+).*raftmq\s+([\d,]+)", rest)
    if found is None:
        continue
    mosquitto, raftmq = (int(x.replace(",", "")) for x in found.groups())
    runs.setdefault((case, variant), []).append((mosquitto, raftmq))
for case in dict.fromkeys(case for case, _ in runs):
    plain, acl = runs.get((case, "none"), []), runs.get((case, "acl"), [])
    if not plain or not acl:
        continue
    ratios = [a[1] / p[1] for p, a in zip(plain, acl)]
    print(
        f"{case}: no ACL {statistics.median(r for _, r in plain):,.0f} msgs/s, "
        f"ACL {statistics.median(r for _, r in acl):,.0f} msgs/s, "
        f"ACL/no ACL per round: median {statistics.median(ratios):.2f} "
        f"(range {min(ratios):.2f}-{max(ratios):.2f}, {len(ratios)} rounds)"
    )
PY

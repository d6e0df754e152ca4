#!/usr/bin/env bash
# Remove everything a fault lab (tests/faults/lab.py) may have left behind.
#
#   scripts/fault-teardown.sh [PREFIX [SUBNET]]     (defaults: rmqlab 10.77.0.0/24; root only)
#
# The one teardown of the lab: tests/faults/labnet.py runs this script at set-up and at
# the end, and it is also the worst-case cleanup after a SIGKILLed test run. It is
# idempotent, safe when nothing exists, and never touches a name without PREFIX.
# The order matters (see /work/shared/faultlab-notes.md):
#   1. kill every process inside the lab's namespaces;
#   2. kill the root namespace's sockets to the lab subnet (ss -K);
#   3. delete the namespaces AND the root-side veths: a deleted namespace lingers
#      unnamed while its sockets close and keeps its veth alive, which would break
#      the next set-up;
#   4. the bridge and the nft table;
#   5. the blackhole safety route, last, once no socket to the subnet but TIME-WAIT
#      remains, so that nothing can leak out of the machine's default route meanwhile.
set -uo pipefail

prefix=${1:-rmqlab}
subnet=${2:-10.77.0.0/24}
bridge="$prefix-br"
safety_metric=4242
socket_wait_tries=40 # x 0.05 s

if [[ $(id -u) != 0 ]]; then
    echo "fault-teardown: must run as root" >&2
    exit 1
fi

lab_namespaces() {
    ip netns list 2>/dev/null | awk -v p="$prefix-" 'index($1, p) == 1 { print $1 }'
}

lab_links() {
    # "ip -o link" prints "3: rmqlab-n1@if2: ..."; keep the name before any "@".
    ip -o link show 2>/dev/null | awk -F': ' -v p="$prefix-" \
        'index($2, p) == 1 { split($2, name, "@"); print name[1] }'
}

# 1. processes inside the namespaces
for ns in $(lab_namespaces); do
    pids=$(ip netns pids "$ns" 2>/dev/null)
    if [[ -n $pids ]]; then
        # SIGKILL also ends a SIGSTOPped (paused) node.
        kill -KILL $pids 2>/dev/null || true
    fi
done
for ns in $(lab_namespaces); do
    for _ in $(seq 50); do
        [[ -z $(ip netns pids "$ns" 2>/dev/null) ]] && break
        sleep 0.02
    done
done

# 2. root-namespace sockets to the subnet (clients of the nodes)
ss -K dst "$subnet" >/dev/null 2>&1 || true

# 3. namespaces and root-side veths (the bridge is a lab link too: keep it for step 4)
for ns in $(lab_namespaces); do
    ip netns delete "$ns" 2>/dev/null || true
done
for link in $(lab_links); do
    [[ $link == "$bridge" ]] && continue
    ip link delete "$link" 2>/dev/null || true
done

# 4. the bridge and the partition table
ip link delete "$bridge" 2>/dev/null || true
nft delete table bridge "$prefix" 2>/dev/null || true

# 5. the safety route, once only TIME-WAIT sockets to the subnet remain
for _ in $(seq "$socket_wait_tries"); do
    [[ -z $(ss -tanH state all exclude time-wait dst "$subnet" 2>/dev/null) ]] && break
    sleep 0.05
done
ip route delete blackhole "$subnet" metric "$safety_metric" 2>/dev/null || true

# Anything still there is worth an error: the next set-up would trip over it.
left=$(lab_namespaces; lab_links; nft list table bridge "$prefix" >/dev/null 2>&1 && echo "nft table bridge $prefix")
if [[ -n $left ]]; then
    echo "fault-teardown: still present after teardown:" $left >&2
    exit 1
fi
exit 0

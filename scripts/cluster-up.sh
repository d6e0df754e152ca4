#!/usr/bin/env bash
# Run a local raftmq cluster on loopback until Ctrl-C or SIGTERM: `raftmq cluster up`.
#
#   scripts/cluster-up.sh --nodes 3 --base-port 21883 --dir /tmp/raftmq-cluster
#
# Arguments go to `raftmq cluster up` unchanged (see `raftmq cluster up --help`).
# Uses this repository's .venv/bin/raftmq when there is one (scripts/setup.sh
# makes it), else the raftmq on PATH. The script execs it, so Ctrl-C and
# SIGTERM reach raftmq itself, which stops every node before it exits.
# Then, from another terminal: raftmq cluster status --dir /tmp/raftmq-cluster
set -euo pipefail
root="$(readlink -f "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/..")"

raftmq="$root/.venv/bin/raftmq"
if [[ ! -x "$raftmq" ]]; then
    if ! raftmq="$(command -v raftmq)"; then
        echo "cluster-up: no $root/.venv/bin/raftmq and no raftmq on PATH; run scripts/setup.sh" >&2
        exit 1
    fi
fi
exec "$raftmq" cluster up "$@"

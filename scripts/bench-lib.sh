# shellcheck shell=bash
# Shared by the bench scripts (sourced, not run): what they install and how they clean up.
# The sourcing script defines say() and runs from the repository root.

# raftmq's own .venv, made by setup.sh when missing.
ensure_raftmq() {
    if [[ ! -x .venv/bin/raftmq ]]; then
        say "no .venv yet: running scripts/setup.sh --no-start"
        scripts/setup.sh --no-start
    fi
}

# Mosquitto from Debian when missing: as root, or with password-less sudo; otherwise it says
# what to run and exits 2.
ensure_mosquitto() {
    command -v mosquitto >/dev/null && return
    local as_root
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
}

# Members of process group $1 that are still running (zombies only wait for a reaper).
running_in_group() { ps -o pid=,stat=,args= -g "$1" 2>/dev/null | awk '$2 !~ /^Z/'; }

# On exit, whatever happens: every process group listed in $BENCH_TMP/groups (one per
# line, recorded by the Python side as each broker or run starts) that is still alive gets
# TERM, then KILL; then $BENCH_TMP goes.
# shellcheck disable=SC2317  # called by the EXIT trap
stop_recorded_groups() {
    local pgid alive=()
    if [[ -f "$BENCH_TMP/groups" ]]; then
        while read -r pgid; do
            if [[ -n "$(running_in_group "$pgid")" ]]; then
                say "stopping what is left of process group $pgid: $(running_in_group "$pgid")"
                kill -TERM -- "-$pgid" 2>/dev/null || true
                alive+=("$pgid")
            fi
        done <"$BENCH_TMP/groups"
        if ((${#alive[@]})); then
            sleep 1
            for pgid in "${alive[@]}"; do
                kill -KILL -- "-$pgid" 2>/dev/null || true
            done
        fi
    fi
    rm -rf "$BENCH_TMP"
}

# Make $BENCH_TMP (prefix $1) and arm the cleanup.
track_process_groups() {
    BENCH_TMP=$(mktemp -d -t "$1.XXXXXX")
    trap stop_recorded_groups EXIT
    trap 'exit 130' INT TERM
}

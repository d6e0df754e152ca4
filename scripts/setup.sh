#!/usr/bin/env bash
# Make this checkout ready on a fresh Debian 12 machine, then run a node.
#
#   scripts/setup.sh [--no-start] [raftmq node options...]
#
# Installs the system packages the tests use (mosquitto as the reference
# broker, nftables and iproute2 for fault tests), creates .venv and installs
# raftmq into it in editable mode. Each step is skipped when already done, so
# a second run takes about a second. Without --no-start it then replaces
# itself with `raftmq node`, passing the other arguments through.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

start=1
node_args=()
for arg in "$@"; do
    if [[ "$arg" == "--no-start" ]]; then start=0; else node_args+=("$arg"); fi
done

say() { echo "setup: $*" >&2; }

# Root directly, or sudo when it needs no password: never prompt, CI has no terminal.
if [[ $EUID -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    as_root=(none)
fi
have_root() { [[ "${as_root[*]}" != none ]]; }

find_python() {
    local candidate
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

# --- System packages ---------------------------------------------------------
packages=(mosquitto mosquitto-clients nftables iproute2)
python=$(find_python || true)
if [[ -z "$python" ]]; then
    packages+=(python3 python3-venv) # Debian 12's python3 is 3.11
elif [[ ! -x .venv/bin/python ]] && ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    packages+=(python3-venv) # Debian's python3 cannot create a venv without it
fi

missing=()
if command -v dpkg-query >/dev/null; then
    for pkg in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
else
    say "not a Debian system: make sure these are installed: ${packages[*]}"
fi

if ((${#missing[@]})); then
    if have_root; then
        say "installing ${missing[*]}"
        "${as_root[@]}" apt-get update -qq
        "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        say "cannot install system packages without root; please run:"
        say "  sudo apt-get install --no-install-recommends ${missing[*]}"
    fi
fi

# The Debian mosquitto package may start a broker on port 1883, which raftmq
# uses by default and which the tests must never reach by mistake.
if [[ "$(cat /proc/1/comm 2>/dev/null)" == systemd ]]; then
    if systemctl is-enabled --quiet mosquitto 2>/dev/null ||
        systemctl is-active --quiet mosquitto 2>/dev/null; then
        if have_root; then
            say "disabling the system mosquitto service"
            "${as_root[@]}" systemctl disable --now mosquitto >/dev/null 2>&1
        else
            say "warning: the mosquitto service holds port 1883;" \
                "run: sudo systemctl disable --now mosquitto"
        fi
    fi
elif [[ -x /etc/init.d/mosquitto ]] && /etc/init.d/mosquitto status >/dev/null 2>&1; then
    if have_root; then
        say "stopping the system mosquitto service"
        "${as_root[@]}" /etc/init.d/mosquitto stop >/dev/null
    else
        say "warning: the mosquitto service holds port 1883; run: sudo service mosquitto stop"
    fi
fi

# --- Virtual environment and editable install --------------------------------
if [[ ! -x .venv/bin/python ]]; then
    python=${python:-$(find_python || true)}
    if [[ -z "$python" ]]; then
        say "error: Python 3.11 or newer is needed (python3.11 or python3 on PATH)"
        exit 1
    fi
    say "creating .venv with $("$python" --version)"
    "$python" -m venv .venv
fi

# Install again only when what pip reads changed. The stamp lives inside .venv,
# so a new venv always gets a fresh install.
stamp=.venv/.raftmq-installed
want=$(cat pyproject.toml <(.venv/bin/python --version) | sha256sum | cut -d' ' -f1)
if [[ ! -x .venv/bin/raftmq || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    say "installing raftmq and its test dependencies into .venv"
    log=$(mktemp)
    if ! .venv/bin/python -m pip install -q -e '.[test]' >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        say "error: pip install failed"
        exit 1
    fi
    rm -f "$log"
    echo "$want" >"$stamp"
fi

if ((start)); then
    exec .venv/bin/raftmq node "${node_args[@]}"
fi

# shellcheck shell=bash
# Shared helpers for scripts/stack, scripts/test and scripts/install-deps.
# Source it; it expects `set -euo pipefail` in the caller.

# Repo root: the parent of scripts/, resolved physically.
ALLOT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
export ALLOT_ROOT

# Colour only on a terminal, never under CI or NO_COLOR.
if [[ -t 2 && "${CI:-}" != "true" && -z "${NO_COLOR:-}" && "${TERM:-dumb}" != "dumb" ]]; then
    C_BOLD=$'\e[1m' C_RED=$'\e[31m' C_GREEN=$'\e[32m' C_YELLOW=$'\e[33m' C_RESET=$'\e[0m'
else
    C_BOLD='' C_RED='' C_GREEN='' C_YELLOW='' C_RESET=''
fi
# shellcheck disable=SC2034 # used by the sourcing scripts
ALLOT_COLOR_OK="$C_GREEN"

log() { printf '%s\n' "$*" >&2; }
warn() { printf '%swarning:%s %s\n' "$C_YELLOW" "$C_RESET" "$*" >&2; }
die() {
    printf '%serror:%s %s\n' "$C_RED" "$C_RESET" "$*" >&2
    exit 1
}
bold() { printf '%s%s%s' "$C_BOLD" "$*" "$C_RESET"; }

# A loopback port with no socket on it. Ports are drawn at random below Linux's ephemeral range
# (32768+), never asked of the kernel, which may hand out one port to every caller.
port_busy() {
    if command -v ss >/dev/null 2>&1 && [[ -n "$(ss -Htan "( sport = :$1 )" 2>/dev/null)" ]]; then
        return 0
    fi
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
free_port() { # [PORT-TO-AVOID...]
    local p i
    for ((i = 0; i < 500; i++)); do
        p=$((20000 + RANDOM % 12000))
        [[ " $* " != *" $p "* ]] || continue
        port_busy "$p" || {
            printf '%s\n' "$p"
            return 0
        }
    done
    die "no free loopback port found"
}

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# Run a command as root (directly, or through sudo when available).
as_root() {
    if is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@" || die "need root for: $* (sudo -n failed; run as root or configure sudo)"
    else
        die "need root for: $* (no sudo available)"
    fi
}

# Directory holding the PostgreSQL 15 server binaries, or empty if none.
# Prefers Debian's versioned dir, then whatever initdb is on PATH.
pg_bindir() {
    local d=/usr/lib/postgresql/15/bin
    if [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
        printf '%s\n' "$d"
        return 0
    fi
    if command -v initdb >/dev/null 2>&1; then
        d="$(dirname "$(readlink -f "$(command -v initdb)")")"
        if [[ -x "$d/pg_ctl" && -x "$d/postgres" ]]; then
            printf '%s\n' "$d"
            return 0
        fi
    fi
    return 0
}

# apt_install PKG... : installs the given Debian packages (noninteractive).
# Runs apt-get update first (only called when something is missing).
# While installing, keeps Debian from creating/starting the packaged
# services (the default "main" PostgreSQL cluster on 5432, redis on 6379):
# the stack runs its own private instances.
apt_install() {
    [[ $# -gt 0 ]] || return 0
    command -v apt-get >/dev/null 2>&1 || die "missing packages ($*) and no apt-get: install them by hand"
    log "installing with apt: $*"
    local created_policy=0 rc=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
        created_policy=1
    fi
    if [[ " $* " == *" postgresql-"* && ! -e /etc/postgresql-common/createcluster.d/allot-no-main.conf ]]; then
        as_root mkdir -p /etc/postgresql-common/createcluster.d
        as_root sh -c 'echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/allot-no-main.conf'
    fi
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -q >&2 || warn "apt-get update failed; trying to install anyway"
    as_root apt-get install -y -q --no-install-recommends --no-upgrade "$@" >&2 || rc=$?
    if [[ $created_policy -eq 1 ]]; then
        as_root rm -f /usr/sbin/policy-rc.d
    fi
    [[ $rc -eq 0 ]] || die "apt-get failed (exit $rc) installing: $*"
}

# Packages the local stack needs that are missing right now.
stack_missing_packages() {
    local pkgs=()
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        pkgs+=(redis-server redis-tools)
    fi
    if [[ -z "$(pg_bindir)" ]]; then
        pkgs+=(postgresql-15 postgresql-client-15)
    fi
    if ! command -v runuser >/dev/null 2>&1 && is_root; then
        pkgs+=(util-linux)
    fi
    if ! command -v flock >/dev/null 2>&1; then
        pkgs+=(util-linux)
    fi
    if [[ ${#pkgs[@]} -gt 0 ]]; then
        printf '%s\n' "${pkgs[@]}" | sort -u
    fi
}

install_stack_packages() {
    local missing
    mapfile -t missing < <(stack_missing_packages)
    if [[ ${#missing[@]} -gt 0 ]]; then
        apt_install "${missing[@]}"
    fi
    [[ -n "$(pg_bindir)" ]] || die "PostgreSQL server binaries (initdb/pg_ctl/postgres) still not found after install"
    command -v redis-server >/dev/null 2>&1 || die "redis-server still not found after install"
}

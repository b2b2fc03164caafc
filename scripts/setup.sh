#!/usr/bin/env bash
# scripts/setup.sh -- what `make setup` runs: system packages, .venv, pip install.
#
# Steps, each skipped when already satisfied:
#   1. pick the first Python >= 3.11: $PYTHON if set, else python3.13,
#      python3.12, python3.11, python3 (each one is run, so pyenv shims for
#      versions that are not selected are skipped);
#   2. make sure the system can build pyscard (a yubikey-manager dependency with
#      no Linux wheel: it compiles against PC/SC-lite's winscard.h) and can make
#      a venv: libpcsclite-dev + pkg-config, a C compiler, Python.h, and the
#      venv/ensurepip modules (Debian's pythonX.Y-venv). As root they are
#      installed with apt-get; otherwise the script stops and prints the exact
#      command to run;
#   3. create .venv unless a working one exists (an existing venv is reused),
#      upgrade pip on creation, then `pip install -e '.[test]'`.
# The Makefile touches .venv/.installed after this succeeds, so a second
# `make setup` does nothing until pyproject.toml or this script changes.
#
# Usage:  scripts/setup.sh           full setup
#         scripts/setup.sh --check   only report missing system packages
#                                    (exit 1 if any), install nothing
# Environment:
#   PYTHON=/path/to/python          interpreter to build the venv from
#   KEYSWARM_VENV=.venv             venv directory (relative to the repo root)
#   KEYSWARM_ASSUME_NONROOT=1       behave as a non-root user even as root
#                                   (to see the message a normal user gets)
#   KEYSWARM_ASSUME_MISSING="pcsc compiler headers venv"
#                                   treat these prerequisites as missing
#                                   (tests of the detection and messages)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${KEYSWARM_VENV:-.venv}"
MIN_PY="3.11"
PY_CANDIDATES=(python3.13 python3.12 python3.11 python3)

say()  { printf 'setup: %s\n' "$*"; }
fail() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

is_root() {
    [[ -z "${KEYSWARM_ASSUME_NONROOT:-}" && "$(id -u)" == 0 ]]
}

# True when $1 is listed in KEYSWARM_ASSUME_MISSING.
assumed_missing() {
    [[ " ${KEYSWARM_ASSUME_MISSING:-} " == *" $1 "* ]]
}

# Prints the absolute path of an interpreter >= MIN_PY, or fails.
find_python() {
    local candidates=("${PY_CANDIDATES[@]}") c exe
    if [[ -n "${PYTHON:-}" ]]; then
        candidates=("$PYTHON")
    fi
    for c in "${candidates[@]}"; do
        command -v "$c" >/dev/null 2>&1 || continue
        exe="$("$c" -c 'import sys
if sys.version_info >= (3, 11): print(sys.executable)' 2>/dev/null)" || continue
        if [[ -n "$exe" ]]; then
            printf '%s\n' "$exe"
            return 0
        fi
    done
    if [[ -n "${PYTHON:-}" ]]; then
        fail "PYTHON=$PYTHON is not a working Python >= $MIN_PY"
    fi
    fail "no Python >= $MIN_PY found (tried: ${PY_CANDIDATES[*]}).
  Install one (Debian 12 / Ubuntu 24.04: sudo apt-get install -y python3 python3-venv python3-dev)
  or point to it: make setup PYTHON=/path/to/python3.11"
}

# "3.11" for the given interpreter.
py_version() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'
}

pcsc_ok() {
    assumed_missing pcsc && return 1
    [[ "$(uname -s)" != Linux ]] && return 0   # macOS ships PC/SC as a framework
    command -v pkg-config >/dev/null 2>&1 || return 1
    pkg-config --exists libpcsclite 2>/dev/null || return 1
    local flag dir
    for flag in $(pkg-config --cflags-only-I libpcsclite 2>/dev/null) -I/usr/include/PCSC; do
        dir="${flag#-I}"
        [[ -f "$dir/winscard.h" ]] && return 0
    done
    return 1
}

compiler_ok() {
    assumed_missing compiler && return 1
    command -v gcc >/dev/null 2>&1 || command -v cc >/dev/null 2>&1
}

python_headers_ok() {
    assumed_missing headers && return 1
    "$1" -c 'import os, sys, sysconfig
sys.exit(0 if os.path.isfile(os.path.join(sysconfig.get_path("include"), "Python.h")) else 1)' \
        2>/dev/null
}

venv_module_ok() {
    assumed_missing venv && return 1
    "$1" -c 'import venv, ensurepip' >/dev/null 2>&1
}

# Debian/Ubuntu name for a per-version Python package ("venv" -> python3.11-venv),
# falling back to the default-version name (python3-venv) when apt does not know
# the versioned one.
py_pkg() {
    local suffix="$1" ver="$2"
    if command -v apt-cache >/dev/null 2>&1 \
        && apt-cache policy "python$ver-$suffix" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        printf 'python%s-%s\n' "$ver" "$suffix"
    else
        printf 'python3-%s\n' "$suffix"
    fi
}

existing_venv_python() {
    [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null
}

# Sets MISSING (what is wanted, for messages) and APT_PKGS (what apt should install).
detect_missing() {
    local py="$1" need_venv="$2" ver
    ver="$(py_version "$py")"
    MISSING=()
    APT_PKGS=()
    if ! pcsc_ok; then
        MISSING+=("PC/SC-lite headers (winscard.h) and pkg-config, to build pyscard")
        APT_PKGS+=(libpcsclite-dev pkg-config)
    fi
    if ! compiler_ok; then
        MISSING+=("a C compiler, to build pyscard")
        APT_PKGS+=(gcc libc6-dev)
    fi
    if ! python_headers_ok "$py"; then
        MISSING+=("Python $ver headers (Python.h), to build pyscard")
        APT_PKGS+=("$(py_pkg dev "$ver")")
    fi
    if [[ "$need_venv" == yes ]] && ! venv_module_ok "$py"; then
        MISSING+=("the venv/ensurepip modules for Python $ver")
        APT_PKGS+=("$(py_pkg venv "$ver")")
    fi
}

print_missing() {
    local m
    printf 'setup: missing system prerequisites:\n' >&2
    for m in "${MISSING[@]}"; do printf '  - %s\n' "$m" >&2; done
}

# Installs APT_PKGS as root, or stops with the command a non-root user must run.
install_system_packages() {
    local py="$1"
    print_missing
    if ! command -v apt-get >/dev/null 2>&1; then
        fail "no apt-get here: install the equivalents of: ${APT_PKGS[*]}
  (Fedora: pcsc-lite-devel pkgconf-pkg-config gcc python3-devel), then run 'make setup' again"
    fi
    if ! is_root; then
        {
            printf 'setup: run this, then run '"'"'make setup'"'"' again:\n\n'
            printf '    sudo apt-get install -y %s\n\n' "${APT_PKGS[*]}"
            printf '  (on a fresh machine run '"'"'sudo apt-get update'"'"' first)\n'
        } >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    say "installing with apt-get: ${APT_PKGS[*]}"
    apt-get update -qq
    # Re-resolve versioned Python package names now that the lists are fresh.
    detect_missing "$py" "$NEED_VENV"
    ((${#APT_PKGS[@]})) || return 0
    apt-get install -y -qq --no-install-recommends "${APT_PKGS[@]}" >/dev/null
    detect_missing "$py" "$NEED_VENV"
    if ((${#MISSING[@]})); then
        print_missing
        fail "still missing after apt-get install ${APT_PKGS[*]}"
    fi
}

# pip, quiet, minus one harmless warning some pip configs print per package
# ("Location 'file:///...' is ignored: it is neither a file nor a directory").
pip_quiet() {
    "$VENV/bin/python" -m pip --disable-pip-version-check --no-input -q "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

main() {
    local check_only=no
    case "${1:-}" in
        --check) check_only=yes ;;
        "") ;;
        *) fail "unknown argument: $1 (use --check or nothing)" ;;
    esac

    local py venv_flags=()
    NEED_VENV=yes
    if existing_venv_python && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
        NEED_VENV=no
        py="$(cd "$VENV/bin" && pwd)/python"
    elif existing_venv_python; then
        # A venv without pip: what `python3 -m venv` leaves behind when Debian's
        # pythonX.Y-venv is missing. Nothing is installed in it; rebuild it.
        venv_flags=(--clear)
        py="$(find_python)"
    else
        [[ -e "$VENV" && ! -e "$VENV/pyvenv.cfg" ]] && \
            fail "$VENV exists but is not a virtualenv; move it away or run 'make clean'"
        if [[ -e "$VENV/bin/python" ]]; then
            fail "$VENV exists but its Python is broken or older than $MIN_PY; run 'make clean' and 'make setup'"
        fi
        py="$(find_python)"
    fi

    detect_missing "$py" "$NEED_VENV"
    if [[ "$check_only" == yes ]]; then
        if ((${#MISSING[@]})); then
            print_missing
            printf 'setup: to fix: sudo apt-get install -y %s\n' "${APT_PKGS[*]}" >&2
            exit 1
        fi
        say "system prerequisites present (python: $py)"
        exit 0
    fi
    ((${#MISSING[@]})) && install_system_packages "$py"

    if [[ "$NEED_VENV" == yes ]]; then
        say "creating $VENV with $py (Python $(py_version "$py"))"
        "$py" -m venv "${venv_flags[@]}" "$VENV"
        pip_quiet install --upgrade pip
    else
        say "reusing $VENV (Python $(py_version "$VENV/bin/python"))"
    fi

    say "pip install -e '.[test]'"
    pip_quiet install -e '.[test]'
    say "done: $VENV is ready"
}

main "$@"

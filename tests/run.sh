#!/usr/bin/env bash
# The whole test suite: unit, integration (root tests included when run as root) and real-client
# interop (pywinrm, pypsrp against a live keyhole on 127.0.0.1). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: PAM headers and libclang for the pam crate's bindings (auth), ping (Test-Connection), useradd/chpasswd (root tests).
if [ "$(id -u)" = 0 ]; then
    missing=()
    for pkg in libpam0g-dev libclang-dev iputils-ping passwd; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi

# Pinned real clients in a venv.
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check pywinrm==0.5.0 pypsrp==0.9.1 psrpcore==0.3.1 pytest==8.3.4

# Rust: lints, then unit + integration tests (root-only tests run when root, as in CI).
cargo clippy --all-targets -- -D warnings
cargo build --bins
cargo test --all-targets -- --test-threads=2

# The load benchmark in smoke mode (benches/README.md): the real `keyhole serve` and the in-run
# baseline, every figure with tiny sizes; asserts only that every figure was produced, never a time.
cargo test --bench load -- --smoke

# psrpcore's client state machine (modelled on PowerShell's own client) drives PsrpShell through
# the line bridge in tests/psrp_stdio.rs.
.venv/bin/python tests/interop/check_psrpcore_client.py

# Real-client interop (pywinrm, pypsrp) against the real `keyhole serve` just built; as root it also
# creates, and removes again, a PAM test account (see tests/interop/README.md).
KEYHOLE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/keyhole" timeout 600 .venv/bin/python -m pytest -q -rfEx tests/interop

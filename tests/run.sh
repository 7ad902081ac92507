#!/usr/bin/env bash
# The whole test suite: unit, integration (root tests included when run as root) and real-client
# interop (pywinrm, pypsrp against a live keyhole on 127.0.0.1). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every test runs here: one whose prerequisite (root, a tool, the venv) is missing FAILS rather
# than skips (tests/fixtures/prereq.rs; in pytest, tests/interop/conftest.py turns skips into
# failures). Run without this (plain `cargo test`, non-root), such tests skip, loudly.
export KEYHOLE_REQUIRE_ALL=1

# System packages (run time and tests only: building needs nothing but the Rust toolchain, see
# tests/core/build_deps.rs): ping (Test-Connection), useradd/chpasswd (root tests), promtool (metrics
# lint, Debian's prometheus package), debootstrap (the package's clean-room build), strace (the
# unit's system-call filter check; the transcript's sync order in tests/cli/cli_fsync.rs), node
# (the polkit rule is evaluated in it; Debian's nodejs when the machine has no node), MIT Kerberos: the GSSAPI library keyhole loads at run time, a KDC,
# kadmin.local and kinit for the throwaway realm of tests/krb/realm.sh (negotiate_* tests), and
# libkrb5-dev/python3-dev/gcc to build pyspnego's Kerberos (python-gssapi, krb5) and pywinrm's
# (pykerberos) in the venv; tests/interop/test_negotiate.py fails rather than skips without them
# as root.
# curl: tests/interop/test_identify.py checks a host as an administrator would. Debian's chromium and
# chromium-driver: the web console's browser tests (tests/interop/test_console.py).
# systemd: systemd-analyze (packaging/check-syscalls.sh expands the unit's filter with it;
# tests/package.sh verifies the installed unit).
if [ "$(id -u)" = 0 ]; then
    missing=()
    for pkg in iputils-ping passwd prometheus debootstrap strace systemd libgssapi-krb5-2 krb5-kdc krb5-admin-server krb5-user libkrb5-dev python3-dev gcc curl chromium chromium-driver; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    command -v node >/dev/null || missing+=(nodejs)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # promtool is there now: the metrics test must lint, not skip; Chromium too: the browser
    # tests must run, not skip.
    export KEYHOLE_REQUIRE_PROMTOOL=1
    export KEYHOLE_REQUIRE_BROWSER=1
fi

# Pinned real clients in a venv (tests/interop/requirements.txt: every version pinned).
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -r tests/interop/requirements.txt
# pypsrp 1.0 (the psrp API) is the same distribution as pypsrp 0.9.1: its own venv.
if [ ! -x .venv-psrp1/bin/python ]; then
    python3 -m venv .venv-psrp1
fi
.venv-psrp1/bin/pip install -q --disable-pip-version-check -r tests/interop/requirements-psrp1.txt

# Rust: lints, then unit + integration tests (root-only tests run when root, as in CI).
cargo clippy --all-targets -- -D warnings
cargo build --bins
cargo test --all-targets -- --test-threads=2
# The one timing assertion (issue 9: every refusal takes the same time, medians of 200
# interleaved attempts within 1 ms) runs alone, so that the other tests' load does not move it.
cargo test --test server -- --ignored --exact --test-threads=1 \
    refusals_live::every_refusal_takes_the_same_time_medians_of_200_interleaved_attempts

# The load benchmark in smoke mode (benches/README.md): the real `keyhole serve` and the in-run
# baseline, every figure with tiny sizes; asserts only that every figure was produced, never a time.
cargo test --bench load -- --smoke

# psrpcore's client state machine (modelled on PowerShell's own client) drives PsrpShell through
# the line bridge in tests/psrp_stdio.rs.
.venv/bin/python tests/interop/check_psrpcore_client.py

# Real-client interop (pywinrm, pypsrp, the psrp 1.0 API, ansible-core, and Chromium for the web
# console) against the real `keyhole serve` just built; as root it also creates, and removes again,
# a PAM test account (see tests/interop/README.md). The console tests write docs/console-sign-in.png
# and docs/console-session.png.
KEYHOLE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/keyhole" timeout 900 .venv/bin/python -m pytest -q -rfEx tests/interop

# The Debian package: built (as root inside a debootstrap clean room with only gcc, libc6-dev and
# the Rust toolchain), installed, used (check, serve, pywinrm, a metrics scrape), purged.
if [ "$(id -u)" = 0 ]; then
    # Every system call keyhole and its programs make is inside the unit's SystemCallFilter.
    bash packaging/check-syscalls.sh "${CARGO_TARGET_DIR:-$PWD/target}/debug/keyhole"
    KEYHOLE_CLEAN_ROOM=1 bash tests/package.sh
else
    bash tests/package.sh
fi

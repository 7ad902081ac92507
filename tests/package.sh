#!/usr/bin/env bash
# The Debian package, end to end (run by tests/run.sh):
#  1. build it (packaging/build-deb.sh; --clean-room when KEYHOLE_CLEAN_ROOM=1) and inspect it:
#     version from Cargo.toml, the files, conffiles, a stripped binary, man pages;
#  2. as root: install it with dpkg -i, check the run_as accounts, `keyhole check` on the
#     installed /etc/keyhole, `systemd-analyze verify` of the unit (where systemd-analyze exists),
#     then as an administrator would: choose free ports in /etc/keyhole/keyhole.toml, add a user,
#     `keyhole serve`, one pywinrm command, `keyhole sessions` (the pywinrm shell listed while it
#     is open, then closed), one metrics scrape (linted with promtool when installed), reinstall
#     (an edited conffile is kept), and purge (everything but the transcripts and the accounts is
#     gone).
# Refuses to run over a real installation (/etc/keyhole present, or the package installed).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
PY="${PYTHON:-.venv/bin/python}"
VERSION="$(sed -n '/^\[package\]/,/^\[/ s/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"

fail() { echo "package: FAILED: $*" >&2; exit 1; }
ok() { echo "package: ok: $*"; }

# 1. Build and inspect.
if [ "${KEYHOLE_CLEAN_ROOM:-0}" = 1 ]; then
    DEB="$(bash packaging/build-deb.sh --clean-room | tail -n1)"
else
    DEB="$(bash packaging/build-deb.sh | tail -n1)"
fi
[ -f "$DEB" ] || fail "no package built"
ok "built $DEB ($(du -h "$DEB" | cut -f1))"
dpkg-deb -f "$DEB" Version | grep -qx "$VERSION" || fail "package version is not Cargo.toml's $VERSION"
CONTENTS="$(dpkg-deb -c "$DEB" | awk '{print $6}')"
for f in ./usr/sbin/keyhole ./lib/systemd/system/keyhole.service ./etc/keyhole/keyhole.toml \
         ./etc/keyhole/authorization-rules.toml ./etc/keyhole/endpoints/Helpdesk.toml \
         ./etc/keyhole/endpoints/Vendor.toml ./etc/keyhole/role-capabilities/ServiceOperator.toml \
         ./usr/share/man/man8/keyhole.8.gz ./usr/share/man/man8/keyhole-polkit.8.gz \
         ./usr/share/doc/keyhole/README.md; do
    grep -qx "$f" <<<"$CONTENTS" || fail "the package has no $f"
done
if grep -q "users.toml" <<<"$CONTENTS"; then fail "the package must not ship users.toml"; fi
X="$(mktemp -d)"
dpkg-deb -R "$DEB" "$X"
for f in $(cd "$X" && find etc -type f | sort); do
    grep -qx "/$f" "$X/DEBIAN/conffiles" || fail "/$f is not a conffile"
done
if readelf -S -W "$X/usr/sbin/keyhole" | grep -Eq '\.debug_(info|line|str|abbrev|ranges)'; then fail "the binary still has debug info"; fi
BIN_BYTES="$(stat -c %s "$X/usr/sbin/keyhole")"
[ "$BIN_BYTES" -lt $((40 * 1024 * 1024)) ] || fail "the binary is $BIN_BYTES bytes"
[ "$(stat -c %a "$X/etc/keyhole/authorization-rules.toml")" = 600 ] || fail "rules file not 0600"
grep -q 'keyhole-helpdesk' "$X/DEBIAN/postinst" || fail "postinst does not create keyhole-helpdesk"
ok "contents, conffiles, stripped binary ($BIN_BYTES bytes), man pages"
rm -rf "$X"

if [ "$(id -u)" != 0 ]; then
    # Under the test command (KEYHOLE_REQUIRE_ALL=1, exported by tests/run.sh) a skip is a failure.
    [ "${KEYHOLE_REQUIRE_ALL:-0}" != 1 ] || fail "the install test needs root (dpkg -i); the test command runs as root"
    echo "package: install test SKIPPED: it needs root (dpkg -i)"
    exit 0
fi

# 2. Install, use, purge.
if [ -e /etc/keyhole ] || dpkg -s keyhole >/dev/null 2>&1; then
    fail "/etc/keyhole or the keyhole package is already here: not testing over a real installation"
fi
SERVE_PID=""
cleanup() {
    if [ -n "$SERVE_PID" ]; then kill "$SERVE_PID" 2>/dev/null || true; fi
    if dpkg -s keyhole >/dev/null 2>&1; then dpkg --purge keyhole >/dev/null 2>&1 || true; fi
    rm -rf /var/log/keyhole
}
trap cleanup EXIT

had_accounts=()
for a in keyhole-helpdesk keyhole-vendor; do
    if getent passwd "$a" >/dev/null; then had_accounts+=("$a"); fi
done
DEBIAN_FRONTEND=noninteractive dpkg -i "$DEB" >/dev/null || fail "dpkg -i"
for a in keyhole-helpdesk keyhole-vendor; do
    entry="$(getent passwd "$a")" || fail "postinst did not create $a"
    case " ${had_accounts[*]-} " in
        *" $a "*) ;;
        *) [ "$(cut -d: -f7 <<<"$entry")" = /usr/sbin/nologin ] || fail "$a has a login shell" ;;
    esac
done
ok "installed; run_as accounts present (already there before: ${had_accounts[*]-none})"
[ "$(command -v keyhole)" = /usr/sbin/keyhole ] || fail "keyhole is not /usr/sbin/keyhole"
keyhole --version | grep -q "$VERSION" || fail "keyhole --version"
keyhole check --config /etc/keyhole/keyhole.toml || fail "keyhole check on the installed configuration"
ok "keyhole check --config /etc/keyhole/keyhole.toml"
if [ -e /etc/systemd/system/multi-user.target.wants/keyhole.service ]; then
    ok "unit enabled"
else
    fail "postinst did not enable keyhole.service"
fi
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /lib/systemd/system/keyhole.service || fail "systemd-analyze verify"
    ok "systemd-analyze verify keyhole.service"
    systemd-analyze security --offline=true /lib/systemd/system/keyhole.service 2>/dev/null \
        | tail -n1 | sed 's/^/package: /' || true
else
    [ "${KEYHOLE_REQUIRE_ALL:-0}" != 1 ] || fail "systemd-analyze is missing although the test command installs it (Debian's systemd)"
    echo "package: systemd-analyze is not installed: unit not verified (SKIPPED)"
fi

# As an administrator would: ports, a user, serve.
read -r HTTPS HTTP METRICS < <("$PY" -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
sed -i -e "s|^https = \"127.0.0.1:5986\"|https = \"127.0.0.1:$HTTPS\"|" \
       -e "s|^http = \"127.0.0.1:5985\"|http = \"127.0.0.1:$HTTP\"|" \
       -e "s|^listen = \"\"|listen = \"127.0.0.1:$METRICS\"|" /etc/keyhole/keyhole.toml
grep -q "127.0.0.1:$METRICS" /etc/keyhole/keyhole.toml || fail "could not set the ports"
PASSWORD="Pkg-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
printf '%s\n' "$PASSWORD" | keyhole user add pkgtest --group helpdesk --config /etc/keyhole/keyhole.toml >/dev/null
[ "$(stat -c %a /etc/keyhole/users.toml)" = 600 ] || fail "users.toml is not 0600"
LOG="$(mktemp)"
keyhole serve --config /etc/keyhole/keyhole.toml >"$LOG" 2>&1 &
SERVE_PID=$!
for _ in $(seq 1 100); do
    if grep -q "listening on https://" "$LOG"; then break; fi
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$LOG" >&2; fail "keyhole serve exited"; }
    sleep 0.2
done
grep -q "metrics on http://127.0.0.1:$METRICS/metrics" "$LOG" || { cat "$LOG" >&2; fail "serve did not start its listeners"; }
[ -f /var/lib/keyhole/keyhole-tls-cert.pem ] || fail "no self-signed certificate in /var/lib/keyhole"
KEYHOLE_PASSWORD="$PASSWORD" "$PY" - "$HTTPS" <<'EOF' || fail "pywinrm against the installed keyhole"
import os, sys, warnings
warnings.filterwarnings("ignore")
import winrm
s = winrm.Session(f"https://127.0.0.1:{sys.argv[1]}/wsman", auth=("pkgtest", os.environ["KEYHOLE_PASSWORD"]),
                  transport="basic", server_cert_validation="ignore")
r = s.run_cmd("Get-Uptime")
assert r.status_code == 0, (r.status_code, r.std_out, r.std_err)
assert r.std_out.strip(), "no output"
r = s.run_cmd("Restart-Service sshd")
assert r.status_code == 2, ("a value outside the set must be refused", r.status_code, r.std_err)
print("package: ok: pywinrm ran Get-Uptime (exit 0), Restart-Service sshd refused (exit 2)")
EOF
# `keyhole sessions` through the control socket in /var/lib/keyhole: the open pywinrm shell is
# listed; `keyhole sessions close` ends it and the client's next request fails.
[ -S /var/lib/keyhole/control.sock ] || fail "no control socket in /var/lib/keyhole"
[ "$(stat -c %a /var/lib/keyhole/control.sock)" = 600 ] || fail "the control socket is not 0600"
[ "$(stat -c %a /var/lib/keyhole)" = 700 ] || fail "/var/lib/keyhole is not 0700"
KEYHOLE_PASSWORD="$PASSWORD" "$PY" - "$HTTPS" <<'EOF' || fail "keyhole sessions against the installed server"
import json, os, subprocess, sys, warnings
warnings.filterwarnings("ignore")
import winrm
from winrm.exceptions import WinRMError
p = winrm.protocol.Protocol(endpoint=f"https://127.0.0.1:{sys.argv[1]}/wsman", transport="basic",
                            username="pkgtest", password=os.environ["KEYHOLE_PASSWORD"],
                            server_cert_validation="ignore")
shell = p.open_shell()

def sessions(*args):
    r = subprocess.run(["keyhole", "sessions", *args, "--config", "/etc/keyhole/keyhole.toml"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
    return r.stdout

mine = [s for s in json.loads(sessions("--json")) if (s.get("shell_id") or "").upper() == shell.upper()]
assert len(mine) == 1, mine
s = mine[0]
assert (s["user"], s["endpoint"], s["transport"], s["client"]) == ("pkgtest", "Helpdesk", "winrs", "127.0.0.1"), s
assert s["session_id"] in sessions(), "the table does not show the session"
out = sessions("close", s["session_id"])
assert "closed session " + s["session_id"] in out, out
try:
    p.run_command(shell, "Get-Uptime")
except WinRMError:
    pass
else:
    raise AssertionError("the closed shell still answers")
assert s["session_id"] not in sessions(), "the closed session is still listed"
print("package: ok: keyhole sessions listed the pywinrm shell and closed it")
EOF
SCRAPE="$(mktemp)"
"$PY" - "$METRICS" >"$SCRAPE" <<'EOF' || fail "metrics scrape"
import sys, urllib.request
print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=10).read().decode(), end="")
EOF
grep -q '^keyhole_build_info{version="'"$VERSION"'"} 1$' "$SCRAPE" || fail "no keyhole_build_info in the scrape"
if command -v promtool >/dev/null; then
    promtool check metrics <"$SCRAPE" || fail "promtool check metrics"
    ok "metrics scraped and linted by promtool"
else
    [ "${KEYHOLE_REQUIRE_ALL:-0}" != 1 ] || fail "promtool is missing although the test command installs it (Debian's prometheus)"
    echo "package: promtool not installed: metrics scraped, not linted (SKIPPED)"
fi
kill -TERM "$SERVE_PID"
wait "$SERVE_PID" || true
SERVE_PID=""
[ ! -e /var/lib/keyhole/control.sock ] || fail "the control socket was left behind after SIGTERM"
ls /var/log/keyhole/transcripts/* >/dev/null 2>&1 || fail "no transcript in /var/log/keyhole/transcripts"
ok "serve, client, transcripts in /var/log/keyhole"

# An administrator's change to a conffile survives a reinstall.
echo "# changed by the administrator" >>/etc/keyhole/endpoints/Helpdesk.toml
DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold "$DEB" >/dev/null || fail "reinstall"
grep -q "changed by the administrator" /etc/keyhole/endpoints/Helpdesk.toml || fail "reinstall overwrote a conffile"
[ -f /etc/keyhole/users.toml ] || fail "reinstall removed users.toml"
ok "reinstall kept the administrator's changes"

# Purge.
dpkg --purge keyhole >/dev/null || fail "dpkg --purge"
for gone in /usr/sbin/keyhole /lib/systemd/system/keyhole.service /etc/keyhole /var/lib/keyhole \
            /etc/systemd/system/multi-user.target.wants/keyhole.service; do
    [ ! -e "$gone" ] || fail "$gone is still there after purge"
done
[ -d /var/log/keyhole/transcripts ] || fail "purge removed the transcripts (they are kept on purpose)"
getent passwd keyhole-helpdesk >/dev/null || fail "purge removed a run_as account (they are kept on purpose)"
ok "purged: files gone; transcripts and accounts kept"
rm -rf /var/log/keyhole
echo "package: 1 passed, 0 failed"

#!/usr/bin/env bash
# Measures which system calls `keyhole serve` and the programs it starts make (strace -f) during
# a session that exercises the service's paths — TLS, Basic login, built-in cmdlets reading
# /proc, a declared function (df as the run_as account, in its own cgroup), Test-Connection
# (ping with an ambient CAP_NET_RAW), Restart-Service (systemctl), Get-Journal (journalctl),
# Negotiate — Kerberos through the system's GSSAPI with a keytab (a throwaway realm,
# tests/krb/realm.sh) and NTLM, both with message encryption over plain HTTP — a
# SIGHUP reload and a SIGTERM stop — and checks each against the unit's
# SystemCallFilter=@system-service (expanded by systemd-analyze). Prints the calls outside it
# and exits 1 if there is any. Needs root, strace, systemd-analyze and the .venv (pywinrm).
#   packaging/check-syscalls.sh [path/to/keyhole]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${1:-${CARGO_TARGET_DIR:-$PWD/target}/debug/keyhole}"
PY="${PYTHON:-.venv/bin/python}"
[ "$(id -u)" = 0 ] || { echo "check-syscalls: needs root" >&2; exit 1; }
command -v strace >/dev/null || { echo "check-syscalls: needs strace" >&2; exit 1; }
W="$(mktemp -d)"
trap 'kill "$PID" 2>/dev/null || true; bash tests/krb/realm.sh stop "$W/realm" 2>/dev/null || true; rm -rf "$W"' EXIT
cp -r keyhole.toml authorization-rules.toml endpoints role-capabilities "$W/"
# Test-Connection too (ping keeps CAP_NET_RAW as an ambient capability).
sed -i 's/^  "Get-Uptime",$/  "Get-Uptime",\n  "Test-Connection",/' "$W/role-capabilities/Diagnostics.toml"
read -r HTTPS HTTP < <("$PY" -c '
import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
sed -i -e "s|^https = .*|https = \"127.0.0.1:$HTTPS\"|" -e "s|^http = .*|http = \"127.0.0.1:$HTTP\"|" "$W/keyhole.toml"
# Negotiate: a realm on loopback (alice@KEYHOLE.TEST maps to the account alice below) and NTLM.
KDC_PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
eval "$(bash tests/krb/realm.sh start "$W/realm" "$KDC_PORT" | sed 's/^/export /')"
printf '\n[auth]\nnegotiate = true\nntlm = true\nkeytab = "%s"\n' "$KEYTAB" >>"$W/keyhole.toml"
PASSWORD="Sys-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
printf '%s\n' "$PASSWORD" | "$BIN" user add straceuser --group helpdesk --config "$W/keyhole.toml" >/dev/null
printf '%s\n' "$PASSWORD" | "$BIN" user add alice --group helpdesk --config "$W/keyhole.toml" >/dev/null
strace -f -qq -c -o "$W/summary" "$BIN" serve --config "$W/keyhole.toml" >"$W/log" 2>&1 &
PID=$!
for _ in $(seq 1 150); do grep -q "listening on https://" "$W/log" && break; sleep 0.2; done
KEYHOLE_PASSWORD="$PASSWORD" "$PY" - "$HTTPS" "$HTTP" <<'EOF'
import os, sys, warnings
warnings.filterwarnings("ignore")
import winrm
s = winrm.Session(f"https://127.0.0.1:{sys.argv[1]}/wsman", auth=("straceuser", os.environ["KEYHOLE_PASSWORD"]),
                  transport="basic", server_cert_validation="ignore")
for line in ["Get-Uptime", "Get-Process -Id 1", "Get-NetTCPConnection", "Get-Volume",
             "Get-DiskUsage /", "uptime", "Get-Service cron", "Restart-Service cron",
             "Get-Journal -Unit cron.service -Newest 1", "Test-Connection 127.0.0.1 -Count 1"]:
    r = s.run_cmd(line)
    print(f"check-syscalls: {line!r} -> exit {r.status_code}")
http = f"http://127.0.0.1:{sys.argv[2]}/wsman"
for transport, user, pw in [("ntlm", "straceuser", os.environ["KEYHOLE_PASSWORD"]),
                            ("kerberos", "alice@KEYHOLE.TEST", "")]:
    r = winrm.Session(http, auth=(user, pw), transport=transport,
                      kerberos_hostname_override="localhost").run_cmd("Get-Uptime")
    print(f"check-syscalls: {transport} over encrypted HTTP -> exit {r.status_code}")
    assert r.status_code == 0, r.std_err
EOF
# Signal keyhole itself (strace's child), then wait for strace to write its summary.
KPID="$(pgrep -P "$PID")"
kill -HUP "$KPID"; sleep 3
kill -TERM "$KPID"
wait "$PID" || true
used="$(awk 'NR>2 && $NF ~ /^[a-z_0-9]+$/ && $NF != "total" {print $NF}' "$W/summary" | sort -u)"
expand() {
    systemd-analyze syscall-filter "$1" </dev/null | sed -n 's/^    \([@a-z_0-9-]*\)$/\1/p' | while read -r x; do
        case "$x" in @*) expand "$x" ;; *) echo "$x" ;; esac
    done
}
allowed="$(expand @system-service | sort -u)"
outside="$(comm -23 <(echo "$used") <(echo "$allowed"))"
echo "check-syscalls: $(echo "$used" | wc -l) distinct system calls made; allowed by @system-service: $(echo "$allowed" | wc -l)"
if [ -n "$outside" ]; then
    echo "check-syscalls: outside @system-service:" $outside
    exit 1
fi
echo "check-syscalls: every call is inside @system-service"

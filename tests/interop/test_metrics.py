"""The metrics of the real `keyhole serve` ([metrics] listen) move where things happen: sessions by
endpoint and transport, command lines by result and their latency, refusals by gate,
authentication failures, program spawns, buffered output bytes and open connections — each by
exactly what the test did through pywinrm and pypsrp. The scrape passes `promtool check metrics`
(required when KEYHOLE_REQUIRE_PROMTOOL=1, as tests/run.sh sets it as root)."""
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
from pypsrp.exceptions import WinRMError as PsrpError
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan
from winrm.exceptions import InvalidCredentialsError

from conftest import SEQ_COUNT, processes_matching, wait_until, winrm_protocol, winrm_session

ENDPOINT = "Helpdesk"
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(server):
    with urllib.request.urlopen("http://%s/metrics" % server.metrics, timeout=20) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def parse(text):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        labels = frozenset(LABEL.findall(m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before, after, name, **labels):
    return value(after, name, **labels) - value(before, name, **labels)


def make_wsman(server, user="alice", password=None):
    host, port = server.https.rsplit(":", 1)
    return WSMan(host, port=int(port), username=user, password=password or server.password(user),
                 ssl=True, auth="basic", cert_validation=False, connection_timeout=30)


def promtool_lint(text):
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("KEYHOLE_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is required (Debian package prometheus; tests/run.sh installs it as root)")
        pytest.skip("promtool not installed: the scrape was checked, not linted")
    r = subprocess.run([promtool, "check", "metrics"], input=text, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "", "promtool check metrics:\n%s\n--- scraped:\n%s" % (r.stdout, text)


def run(p, shell, command, args=()):
    cid = p.run_command(shell, command, list(args))
    out, err, code = p.get_command_output(shell, cid)
    p.cleanup_command(shell, cid)
    return code, out, err


def test_metrics_move_by_exactly_what_clients_did(server):
    before = parse(scrape(server))
    assert not processes_matching(["sleep", "304"]), "a `sleep 304` is already running on this host"

    # Refusals at gates 1-4. Gate 1: a TLS handshake that fails.
    with socket.create_connection(tuple(server.https.rsplit(":", 1)[:1]) + (server.https_port,), timeout=10) as s:
        s.sendall(b"this is not TLS\r\n\r\n")
        try:
            s.recv(100)
        except OSError:
            pass
    # Gate 2: a wrong password (also an authentication failure).
    with pytest.raises(InvalidCredentialsError):
        winrm_session(server, password="wrong-" + server.password("alice")).run_cmd("Get-Uptime")
    # Gate 3: a user no rule admits.
    with pytest.raises(InvalidCredentialsError):
        winrm_session(server, user="nobody-rule").run_cmd("Get-Uptime")
    # Gate 4: a fourth pool for carol (max_sessions_per_user = 3).
    pools = []
    try:
        for _ in range(3):
            pool = RunspacePool(make_wsman(server, user="carol"), configuration_name=ENDPOINT)
            pool.open()
            pools.append(pool)
        with pytest.raises(PsrpError):
            RunspacePool(make_wsman(server, user="carol"), configuration_name=ENDPOINT).open()
    finally:
        for pool in pools:
            pool.close()

    # One WinRS session: ran, refused, failed (stopped), and output held while nobody receives.
    p = winrm_protocol(server)
    shell = p.open_shell()
    try:
        code, out, _ = run(p, shell, "Get-Uptime")
        assert code == 0
        code, _, _ = run(p, shell, "Invoke-Expression", ["'id'"])
        assert code == 2
        code, out, _ = run(p, shell, "uptime")
        assert code == 0 and b"load average" in out
        cid = p.run_command(shell, "sleep", ["304"])
        assert wait_until(lambda: processes_matching(["sleep", "304"]), 15)
        p.cleanup_command(shell, cid)  # terminate: the line is stopped (counted as failed)
        assert wait_until(lambda: not processes_matching(["sleep", "304"]), 10)

        # Get-Numbers (seq) writes ~100 KB that nobody receives yet: it is buffered.
        numbers = p.run_command(shell, "Get-Numbers")

        def buffered():
            v = value(parse(scrape(server)), "keyhole_buffered_output_bytes")
            return v if v >= 50_000 else None

        held = wait_until(buffered, 15)
        assert held, "the unreceived output of Get-Numbers is not in keyhole_buffered_output_bytes"
        during = parse(scrape(server))
        assert moved(before, during, "keyhole_sessions_open", endpoint=ENDPOINT, transport="winrs") == 1
        assert value(during, "keyhole_connections_open") >= 1, "pywinrm's keep-alive connection"
        out, _, code = p.get_command_output(shell, numbers)
        p.cleanup_command(shell, numbers)
        assert code == 0 and out.decode().split()[-1] == str(SEQ_COUNT)
    finally:
        p.close_shell(shell)

    # One PSRP pool for alice: one line that runs.
    with RunspacePool(make_wsman(server), configuration_name=ENDPOINT) as pool:
        ps = PowerShell(pool).add_cmdlet("Get-Uptime")
        ps.invoke()
        assert not ps.had_errors

    def settled():
        a = parse(scrape(server))
        done = (value(a, "keyhole_buffered_output_bytes") == 0
                and moved(before, a, "keyhole_sessions_open", endpoint=ENDPOINT, transport="winrs") == 0
                and moved(before, a, "keyhole_sessions_open", endpoint=ENDPOINT, transport="psrp") == 0)
        return a if done else None

    after = wait_until(settled, 15)
    assert after, "sessions still open or output still buffered:\n%s" % scrape(server)

    expect = [
        (("keyhole_refusals_total",), {"gate": "1"}, 1),
        (("keyhole_refusals_total",), {"gate": "2"}, 1),
        (("keyhole_refusals_total",), {"gate": "3"}, 1),
        (("keyhole_refusals_total",), {"gate": "4"}, 1),
        (("keyhole_auth_failures_total",), {"reason": "wrong_password"}, 1),
        (("keyhole_sessions_opened_total",), {"endpoint": ENDPOINT, "transport": "winrs"}, 1),
        (("keyhole_sessions_opened_total",), {"endpoint": ENDPOINT, "transport": "psrp"}, 4),
        (("keyhole_commands_total",), {"endpoint": ENDPOINT, "result": "ran"}, 4),
        (("keyhole_commands_total",), {"endpoint": ENDPOINT, "result": "refused"}, 1),
        (("keyhole_commands_total",), {"endpoint": ENDPOINT, "result": "failed"}, 1),
        (("keyhole_command_duration_seconds_count",), {"endpoint": ENDPOINT}, 6),
        (("keyhole_program_spawns_total",), {"result": "started"}, 3),
        (("keyhole_program_spawns_total",), {"result": "failed"}, 0),
    ]
    wrong = []
    for (name,), labels, n in expect:
        got = moved(before, after, name, **labels)
        if got != n:
            wrong.append("%s%s moved by %s, expected %s" % (name, labels, got, n))
    assert not wrong, "\n".join(wrong) + "\n--- after:\n" + scrape(server)
    # The stopped sleep took at least as long as it took to see it start.
    assert moved(before, after, "keyhole_command_duration_seconds_sum", endpoint=ENDPOINT) > 0
    # Buckets are cumulative and end at the count.
    inf = value(after, "keyhole_command_duration_seconds_bucket", endpoint=ENDPOINT, le="+Inf")
    assert inf == value(after, "keyhole_command_duration_seconds_count", endpoint=ENDPOINT)
    # No user name is ever a label value.
    text = scrape(server)
    for user in ("alice", "carol", "nobody-rule"):
        assert user not in text, user
    promtool_lint(text)

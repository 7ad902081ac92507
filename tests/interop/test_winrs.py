"""pywinrm 0.5.0 against the real `keyhole serve`: run_cmd, run_ps, the gates, limits, signals,
transcripts, the audit log and PAM."""
import json
import os
import re
import time

import pytest
import requests
from winrm.exceptions import InvalidCredentialsError, WinRMError

from conftest import (
    MAX_ENVELOPE_KB,
    MAX_SHELLS_PER_USER,
    SEQ_COUNT,
    processes_matching,
    wait_until,
    winrm_protocol,
    winrm_session,
)

# What PowerShell prints for a TimeSpan (Get-Uptime): a list `Days : 0 ...` or `d.hh:mm:ss`.
UPTIME_RE = re.compile(rb"(Days\s*:\s*\d+)|(\b\d+(\.\d+)?:\d\d:\d\d)")


@pytest.fixture
def session(server):
    return winrm_session(server)


# --- granted lines ------------------------------------------------------------------------------

def test_run_cmd_of_a_granted_cmdlet_prints_what_powershell_prints(session):
    r = session.run_cmd("Get-Uptime")
    assert r.status_code == 0, r.std_err
    assert UPTIME_RE.search(r.std_out), r.std_out
    assert r.std_err == b""


def test_run_cmd_joins_its_arguments_into_one_line(session):
    pid = os.getpid()
    r = session.run_cmd("Get-Process", ["-Id", str(pid)])
    assert r.status_code == 0, r.std_err
    out = r.std_out.decode()
    # The default table of Get-Process: a header with Id and ProcessName, and our process.
    assert "ProcessName" in out and "Id" in out, out
    assert re.search(r"\b%d\b" % pid, out), out
    assert "python" in out, out


def test_run_cmd_get_service_by_name(session):
    r = session.run_cmd("Get-Service", ["-Name", "cron"])
    if os.path.isdir("/run/systemd/system"):
        # A systemd host: either the service, or PowerShell's "Cannot find any service".
        assert r.status_code in (0, 1), r.std_err
        if r.status_code == 0:
            assert b"cron" in r.std_out and b"Status" in r.std_out, r.std_out
        else:
            assert b"cron" in r.std_err, r.std_err
    else:
        # No systemd: a clear error, not a refusal (the line itself is allowed).
        assert r.status_code == 1, (r.status_code, r.std_out, r.std_err)
        assert r.std_err.strip(), "no error message on a host without systemd"


def test_external_command_by_file_name(session):
    r = session.run_cmd("uptime")
    assert r.status_code == 0, r.std_err
    assert b"load average" in r.std_out, r.std_out


def test_run_ps_decodes_the_encoded_command(session):
    r = session.run_ps("Get-Uptime")
    assert r.status_code == 0, r.std_err
    assert UPTIME_RE.search(r.std_out), r.std_out


def test_plain_http_on_loopback(server):
    r = winrm_session(server, scheme="http").run_cmd("Get-Uptime")
    assert r.status_code == 0, r.std_err


def test_large_output_arrives_whole(session):
    r = session.run_cmd("Get-Numbers")
    assert r.status_code == 0, r.std_err[:2000]
    lines = r.std_out.decode().split()
    assert len(lines) == SEQ_COUNT
    assert lines == [str(i) for i in range(1, SEQ_COUNT + 1)]


# --- refused lines ------------------------------------------------------------------------------

REFUSED = [
    ("Invoke-Expression id", r"Invoke-Expression.*not recognized|CommandNotFound"),
    ("Get-Content /etc/shadow", r"Get-Content.*not recognized|CommandNotFound"),
    ("$env:PATH", r"variable"),
    ("Restart-Service sshd", r"sshd.*(ValidateSet|does not belong to the set)|ParameterArgumentValidationError"),
    ("Get-Journal -Unit 'x.service --file=/etc/shadow'", r"ValidatePattern|does not match|ParameterArgumentValidationError"),
    ("sleep 1000", r"^(?!.*not recognized).*1000"),
]


@pytest.mark.parametrize("line,reason", REFUSED, ids=[l for l, _ in REFUSED])
def test_a_refused_line_exits_2_with_the_reason_on_stderr(session, line, reason):
    r = session.run_cmd(line)
    assert r.status_code == 2, (r.status_code, r.std_out, r.std_err)
    assert r.std_out == b""
    err = r.std_err.decode()
    assert re.search(reason, err, re.I | re.S), err
    assert "FullyQualifiedErrorId" in err, err


def test_run_ps_refuses_like_run_cmd(session):
    r = session.run_ps("Invoke-Expression 'id'")
    assert r.status_code == 2
    assert re.search(r"not recognized|CommandNotFound", r.std_err.decode()), r.std_err


def test_arguments_are_one_line_of_the_language_not_a_shell(session):
    # pywinrm joins the arguments with spaces; `;` separates statements and every statement is
    # checked before any runs: the whole line is refused.
    r = session.run_cmd("Get-Uptime", [";", "Invoke-Expression", "id"])
    assert r.status_code == 2
    assert r.std_out == b""


# --- authentication: every refusal looks the same ----------------------------------------------

def _response_fingerprint(resp):
    headers = {k.lower(): v for k, v in resp.headers.items() if k.lower() not in ("date",)}
    return resp.status_code, headers, resp.content


def test_wrong_password_and_no_rule_fail_the_same_way(server, http_log):
    seen = {}
    for label, user, password in [
        ("wrong password", "alice", "not-" + server.password("alice")),
        ("no rule", "nobody-rule", server.password("nobody-rule")),
        ("unknown user", "mallory", "whatever"),
        ("no rule for the WinRS endpoint", "victor", server.password("victor")),
    ]:
        del http_log[:]
        with pytest.raises(InvalidCredentialsError):
            winrm_session(server, user=user, password=password).run_cmd("Get-Uptime")
        assert http_log, "no HTTP exchange recorded"
        seen[label] = _response_fingerprint(http_log[-1][1])
    first = seen["wrong password"]
    assert first[0] == 401
    assert "www-authenticate" in first[1]
    assert "basic" in first[1]["www-authenticate"].lower()
    for label, fp in seen.items():
        assert fp == first, "%s is refused differently from a wrong password:\n%r\n%r" % (label, fp, first)


def test_raw_refusals_are_byte_identical(server, http_log):
    # Capture the Create envelope pywinrm really sends, then replay it with requests.
    p = winrm_protocol(server)
    shell = p.open_shell()
    p.close_shell(shell)
    create = http_log[0][0]
    body, headers = create.body, {"Content-Type": create.headers["Content-Type"]}
    results = {}
    for label, auth in [
        ("wrong password", ("alice", "x" + server.password("alice"))),
        ("no rule", ("nobody-rule", server.password("nobody-rule"))),
        ("victor on Helpdesk", ("victor", server.password("victor"))),
        ("no credentials", None),
    ]:
        r = requests.post(server.url("https"), data=body, headers=headers, auth=auth, verify=False, timeout=30)
        results[label] = _response_fingerprint(r)
    ref = results["wrong password"]
    assert ref[0] == 401
    for label in ("no rule", "victor on Helpdesk"):
        assert results[label] == ref, label
    # No credentials at all: the same 401 and challenge.
    assert results["no credentials"][0] == 401
    assert results["no credentials"][1].get("www-authenticate") == ref[1].get("www-authenticate")
    # And the right password passes with the same body.
    ok = requests.post(server.url("https"), data=body, headers=headers,
                       auth=("alice", server.password("alice")), verify=False, timeout=30)
    assert ok.status_code == 200, ok.text
    shell_id = re.search(rb"<rsp:ShellId>([^<]+)</rsp:ShellId>", ok.content)
    assert shell_id, ok.content[:2000]
    p.close_shell(shell_id.group(1).decode())


# --- limits -------------------------------------------------------------------------------------

def test_oversized_envelope_gets_a_fault_and_the_server_keeps_serving(server, http_log):
    p = winrm_protocol(server)
    shell = p.open_shell()
    try:
        with pytest.raises(WinRMError) as exc:
            p.run_command(shell, "Get-Uptime", ["x" * (MAX_ENVELOPE_KB * 1024 + 1)])
        resp = http_log[-1][1]
        assert resp.status_code == 500
        assert b"Fault" in resp.content and b"wsmanfault" in resp.content.lower(), resp.content[:2000]
        assert "EncodingLimit" in str(exc.value) or b"EncodingLimit" in resp.content
    finally:
        p.close_shell(shell)
    r = winrm_session(server).run_cmd("Get-Uptime")
    assert r.status_code == 0, r.std_err


def test_shells_per_user_are_limited(server):
    # WinRS shells count against max_shells_per_user (max_sessions_per_user counts PSRP pools).
    shells = []
    p = winrm_protocol(server, user="carol")
    try:
        for _ in range(MAX_SHELLS_PER_USER):
            shells.append(p.open_shell())
        with pytest.raises(WinRMError):
            shells.append(p.open_shell())
        assert len(shells) == MAX_SHELLS_PER_USER
        # Closing one makes room again.
        p.close_shell(shells.pop(0))
        shells.append(p.open_shell())
    finally:
        for s in shells:
            try:
                p.close_shell(s)
            except WinRMError:
                pass
    r = winrm_session(server, user="carol").run_cmd("Get-Uptime")
    assert r.status_code == 0, r.std_err


# --- Ctrl+C -------------------------------------------------------------------------------------

def test_terminate_signal_ends_a_long_command_and_its_program(server):
    argv = ["sleep", "300"]
    assert not processes_matching(argv), "a `sleep 300` is already running on this host"
    p = winrm_protocol(server)
    shell = p.open_shell()
    try:
        cmd = p.run_command(shell, "sleep", ["300"])
        # The program starts with the Command (pywinrm reads output only later).
        started = wait_until(lambda: processes_matching(argv), 15)
        if not started:
            # Some servers start the pipeline on the first Receive: poke one, briefly.
            try:
                p._raw_get_command_output(shell, cmd)
            except Exception:
                pass
            started = wait_until(lambda: processes_matching(argv), 10)
        assert started, "the granted `sleep 300` never started"
        t0 = time.monotonic()
        p.cleanup_command(shell, cmd)  # WS-Man Signal .../signal/terminate
        gone = wait_until(lambda: not processes_matching(argv), 10)
        assert gone, "`sleep 300` survived the terminate signal: %r" % processes_matching(argv)
        assert time.monotonic() - t0 < 10
    finally:
        p.close_shell(shell)
    assert not processes_matching(argv)


# --- transcripts and audit ----------------------------------------------------------------------

def test_transcript_and_audit_log(server):
    marker_pid = os.getpid()
    line = "Get-Process -Id %d" % marker_pid
    r = winrm_session(server).run_cmd(line)
    assert r.status_code == 0, r.std_err
    # Failed attempts to find in the audit log.
    with pytest.raises(InvalidCredentialsError):
        winrm_session(server, password="wrong-" + server.password("alice")).run_cmd("Get-Uptime")
    with pytest.raises(InvalidCredentialsError):
        winrm_session(server, user="nobody-rule").run_cmd("Get-Uptime")

    def alice_transcript():
        for f in server.transcripts.rglob("*"):
            if f.is_file():
                t = f.read_text(errors="replace")
                if re.search(r"(?m)^Username: alice$", t) and line in t:
                    return f, t
        return None

    found = wait_until(alice_transcript, 5)
    assert found, "no transcript of alice's session with %r in %s: %r" % (
        line, server.transcripts, [str(p) for p in server.transcripts.rglob("*")])
    path, text = found
    assert "Helpdesk" in text
    assert oct(path.stat().st_mode & 0o077) == "0o0", "transcript %s readable by others" % path

    raw = server.audit_log.read_text()
    for pw in server.all_passwords():
        assert pw not in raw, "a password is in the audit log"
        for f in server.transcripts.rglob("*"):
            if f.is_file():
                assert pw not in f.read_text(errors="replace"), "a password is in transcript %s" % f
    records = [json.loads(l) for l in raw.splitlines() if l.strip()]
    auth = [r for r in records if r.get("kind") == "authentication"]
    assert any(r.get("user") == "alice" and r.get("decision") == "allow" and r.get("gate") for r in auth)
    assert any(r.get("user") == "alice" and r.get("decision") == "deny" and r.get("gate") == "authentication"
               for r in auth), "no denied authentication of alice (wrong password) in the audit log"
    assert any(r.get("user") == "nobody-rule" and r.get("decision") == "deny" and r.get("gate") == "gateway"
               for r in records), "the refusal of nobody-rule is not recorded with gate gateway"
    assert any(r.get("kind") == "session_start" and r.get("user") == "alice" for r in records)
    assert "Authorization" not in raw and "Basic " not in raw


# --- PAM ----------------------------------------------------------------------------------------

def test_pam_account_logs_in_and_its_os_group_selects_the_role(server, pam_account, request):
    if pam_account is None:
        pytest.skip(getattr(request.config, "_keyhole_pam_skip", "PAM not available"))
    s = winrm_session(server, user=pam_account["user"], password=pam_account["password"])
    r = s.run_cmd("Get-Uptime")
    assert r.status_code == 0, r.std_err
    assert UPTIME_RE.search(r.std_out)
    # The role is Helpdesk's: a command outside it is refused, not an authentication failure.
    r = s.run_cmd("Invoke-Expression id")
    assert r.status_code == 2
    with pytest.raises(InvalidCredentialsError):
        winrm_session(server, user=pam_account["user"], password="wrong-" + pam_account["password"]).run_cmd(
            "Get-Uptime")


# --- issue 11: code pages, powershell -Command, long lines ----------------------------------------

HELLO = "héllo ✓"


def _run_in_codepage(server, codepage, command, args=()):
    p = winrm_protocol(server)
    shell = p.open_shell(codepage=codepage)
    try:
        cid = p.run_command(shell, command, list(args))
        out, err, code = p.get_command_output(shell, cid)
        p.cleanup_command(shell, cid)
    finally:
        p.close_shell(shell)
    return out, err, code


def test_run_cmd_output_is_in_code_page_437_by_default(session):
    # pywinrm's Session asks for WINRS_CODEPAGE 437; ✓ is not in 437 and becomes '?'.
    r = session.run_cmd("Select-Object -InputObject '%s'" % HELLO)
    assert r.status_code == 0, r.std_err
    assert b"h\x82llo ?" in r.std_out, r.std_out
    assert "héllo ?" in r.std_out.decode("cp437"), r.std_out


def test_code_page_65001_is_utf8(server):
    out, err, code = _run_in_codepage(server, 65001, "Select-Object -InputObject '%s'" % HELLO)
    assert code == 0, err
    assert HELLO in out.decode("utf-8"), out


def test_errors_are_in_the_shell_s_code_page_too(server):
    out, err, code = _run_in_codepage(server, 437, "Get-Process", ["-Name", "'%s'" % HELLO])
    assert code == 1, (out, err)
    assert "héllo ?" in err.decode("cp437"), err
    out, err, code = _run_in_codepage(server, 65001, "Get-Process", ["-Name", "'%s'" % HELLO])
    assert HELLO in err.decode("utf-8"), err


def test_pypsrp_execute_cmd_decodes_cp437_as_keyhole_encodes_it(server):
    from pypsrp.client import Client

    c = Client("127.0.0.1", port=server.https_port, username="alice", password=server.password("alice"),
               ssl=True, cert_validation=False, auth="basic")
    out, err, code = c.execute_cmd("Select-Object -InputObject '%s'" % HELLO)
    assert code == 0, err
    assert "héllo ?" in out, out


def test_a_code_page_keyhole_cannot_write_is_refused_saying_which_it_can(server):
    from winrm.exceptions import WSManFaultError

    p = winrm_protocol(server)
    with pytest.raises(WSManFaultError) as e:
        p.open_shell(codepage=932)
    assert "932" in e.value.reason and "65001" in e.value.reason and "437" in e.value.reason, e.value.reason


@pytest.mark.parametrize("command,args", [
    ('powershell -Command "Get-Process -Id %d"' % os.getpid(), []),
    ("powershell", ["-NoProfile", "-c", "Get-Process -Id %d" % os.getpid()]),
    ("pwsh -NonInteractive -Command Get-Process -Id %d" % os.getpid(), []),
])
def test_powershell_command_runs_the_line(session, command, args):
    r = session.run_cmd(command, args)
    assert r.status_code == 0, r.std_err
    assert str(os.getpid()).encode() in r.std_out, r.std_out


def test_powershell_command_refusal_points_into_the_line(session):
    r = session.run_cmd('powershell -Command "Get-Process -Id 1 | Stop-Process"')
    assert r.status_code == 2, (r.std_out, r.std_err)
    assert b"Stop-Process" in r.std_err and b"(at column 21)" in r.std_err, r.std_err


def test_a_line_over_the_language_limit_is_refused_saying_so(session):
    # Inside the envelope limit: the language refuses it, naming its limit (exit 2).
    r = session.run_cmd("Get-Process -Name " + "a" * 100_000)
    assert r.status_code == 2, r.std_err[:500]
    assert b"a line longer than 65536 bytes" in r.std_err, r.std_err[:500]


def test_a_line_over_the_envelope_limit_gets_a_fault_naming_the_limit(server):
    from winrm.exceptions import WSManFaultError

    # 400,000 characters do not fit in this server's 150 KiB envelope.
    with pytest.raises(WSManFaultError) as e:
        winrm_session(server).run_cmd("Get-Process -Name " + "a" * 400_000)
    reason = e.value.reason
    assert "MaxEnvelopeSize" in reason and "max_envelope_size_kb = %d" % MAX_ENVELOPE_KB in reason, reason

"""`keyhole sessions` against the real `keyhole serve`: the control socket in state_directory lists
a pywinrm shell and a pypsrp runspace pool with their fields; `keyhole sessions close ID` ends a
session as its idle time-out would (its `sleep` killed, a waiting Receive answered, the client's
next request refused, the transcript and the audit log saying why); and anyone but root and the
server's account is refused."""
import datetime
import json
import os
import pathlib
import shutil
import stat
import subprocess
import tempfile
import threading
import time

import pytest
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan
from winrm.exceptions import WinRMError

from conftest import processes_matching, wait_until, winrm_protocol

ENDPOINT = "Helpdesk"
NOBODY = 65534


def keyhole_sessions(server, *args, user=None, config=None):
    argv = [server.exe, "sessions", *args, "--config", str(config or server.config)]
    if user is not None:
        argv = ["setpriv", "--reuid=%d" % user, "--regid=%d" % user, "--clear-groups", "--"] + argv
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)


def listed(server):
    r = keyhole_sessions(server, "--json")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout)


def by_shell(server, shell_id):
    found = [s for s in listed(server) if (s.get("shell_id") or "").upper() == shell_id.upper()]
    assert len(found) <= 1, found
    return found[0] if found else None


def make_wsman(server, user="alice"):
    host, port = server.https.rsplit(":", 1)
    return WSMan(host, port=int(port), username=user, password=server.password(user), ssl=True,
                 auth="basic", cert_validation=False, connection_timeout=30)


def transcript_of(server, session_id):
    for f in server.transcripts.rglob("*%s*" % session_id):
        return f.read_text(errors="replace")
    return None


def audit_records(server, session_id):
    out = []
    for line in server.audit_log.read_text().splitlines():
        r = json.loads(line)
        if r.get("session_id") == session_id:
            out.append(r)
    return out


def test_sessions_lists_a_winrs_shell_and_a_psrp_pool_with_their_fields(server):
    p = winrm_protocol(server)
    shell = p.open_shell()
    try:
        cid = p.run_command(shell, "Get-Uptime")
        p.get_command_output(shell, cid)
        p.cleanup_command(shell, cid)
        with RunspacePool(make_wsman(server), configuration_name=ENDPOINT) as pool:
            ps = PowerShell(pool)
            ps.add_cmdlet("Get-Uptime")
            ps.invoke()
            assert not ps.had_errors, ps.streams.error
            before = datetime.datetime.now(datetime.timezone.utc)

            winrs = by_shell(server, shell)
            psrp = by_shell(server, pool.shell.id)
            assert winrs is not None, listed(server)
            assert psrp is not None, listed(server)
            for s, transport in ((winrs, "winrs"), (psrp, "psrp")):
                assert s["transport"] == transport, s
                assert s["user"] == "alice", s
                assert s["endpoint"] == ENDPOINT, s
                assert s["client"] == "127.0.0.1", s
                assert len(s["session_id"]) == 36, s
                started = datetime.datetime.fromisoformat(s["started"].replace("Z", "+00:00"))
                assert before - datetime.timedelta(minutes=5) < started <= before + datetime.timedelta(seconds=5), s
                assert isinstance(s["idle_seconds"], int) and 0 <= s["idle_seconds"] < 300, s
            assert winrs["commands"] == 1, winrs
            # pypsrp's pool runs its own setup pipelines too; ours is one of them.
            assert psrp["commands"] >= 1, psrp
            assert winrs["session_id"] != psrp["session_id"]

            # The text form: a header and one row per session, with the transports' names.
            r = keyhole_sessions(server)
            assert r.returncode == 0, r.stderr
            assert r.stdout.startswith("SESSION ID"), r.stdout
            for s, name in ((winrs, "WinRS"), (psrp, "PSRP")):
                row = [l for l in r.stdout.splitlines() if l.startswith(s["session_id"])]
                assert len(row) == 1, r.stdout
                assert "alice" in row[0] and ENDPOINT in row[0] and name in row[0], row
        # The pool closed: it left the list.
        assert wait_until(lambda: by_shell(server, psrp["shell_id"]) is None, 10), listed(server)
    finally:
        p.close_shell(shell)
    assert wait_until(lambda: by_shell(server, winrs["shell_id"]) is None, 10), listed(server)


def test_close_ends_a_winrs_session_as_an_idle_timeout_would(server):
    argv = ["sleep", "302"]
    assert not processes_matching(argv), "a `sleep 302` is already running on this host"
    p = winrm_protocol(server)
    shell = p.open_shell()
    cmd = p.run_command(shell, "sleep", ["302"])
    assert wait_until(lambda: processes_matching(argv), 15), "the granted `sleep 302` never started"
    s = by_shell(server, shell)
    assert s is not None, listed(server)
    sid = s["session_id"]

    # A Receive waiting on the running command when the administrator closes the session.
    outcome = {}

    def receive():
        try:
            p.get_command_output(shell, cmd)
            outcome["result"] = "output"
        except Exception as e:  # noqa: BLE001 - the kind of failure is checked below
            outcome["result"] = e
        outcome["at"] = time.monotonic()

    t = threading.Thread(target=receive, daemon=True)
    t.start()
    time.sleep(1.0)

    t0 = time.monotonic()
    r = keyhole_sessions(server, "close", sid[:8])
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "closed session %s" % sid in r.stdout, r.stdout

    assert wait_until(lambda: not processes_matching(argv), 10), "`sleep 302` survived the close"
    t.join(20)
    assert not t.is_alive(), "the waiting Receive was not answered"
    assert isinstance(outcome.get("result"), WinRMError), outcome
    assert outcome["at"] - t0 < 10, "the waiting Receive was answered late"

    # The client's next request is refused: the shell is gone.
    with pytest.raises(WinRMError):
        p.run_command(shell, "Get-Uptime")
    assert by_shell(server, shell) is None
    assert not [x for x in listed(server) if x["session_id"] == sid]

    # The transcript and the audit log say why.
    def ended():
        t = transcript_of(server, sid)
        return t if t and "PowerShell transcript end" in t else None

    text = wait_until(ended, 10)
    assert text, "no ended transcript for %s" % sid
    assert "End reason: closed by the administrator" in text, text
    assert "sleep 302" in text, text
    ends = wait_until(lambda: [x for x in audit_records(server, sid) if x["kind"] == "session_end"], 10)
    assert ends and ends[0].get("reason") == "closed by the administrator", audit_records(server, sid)
    log = server.stderr_path.read_text(errors="replace")
    assert "session closed by the administrator" in log, server.stderr_tail()


def test_close_ends_a_psrp_pool_and_its_running_pipeline(server):
    argv = ["sleep", "303"]
    assert not processes_matching(argv), "a `sleep 303` is already running on this host"
    pool = RunspacePool(make_wsman(server), configuration_name=ENDPOINT)
    pool.open()
    ps = PowerShell(pool)
    ps.add_cmdlet("/usr/bin/sleep").add_argument("303")
    ps.begin_invoke()
    assert wait_until(lambda: processes_matching(argv), 15), "sleep 303 never started"
    s = by_shell(server, pool.shell.id)
    assert s is not None and s["transport"] == "psrp", listed(server)

    r = keyhole_sessions(server, "close", s["session_id"], "--json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    closed = json.loads(r.stdout)
    assert closed["session_id"] == s["session_id"] and closed["transport"] == "psrp", closed
    assert wait_until(lambda: not processes_matching(argv), 10), "`sleep 303` survived the close"
    with pytest.raises(Exception):
        ps.end_invoke()
    assert by_shell(server, pool.shell.id) is None
    text = wait_until(lambda: transcript_of(server, s["session_id"]), 10)
    assert text and "End reason: closed by the administrator" in wait_until(
        lambda: transcript_of(server, s["session_id"]) if "transcript end" in (transcript_of(server, s["session_id"]) or "") else None, 10
    ), transcript_of(server, s["session_id"])


def test_close_of_an_unknown_session_fails_with_a_reason(server):
    r = keyhole_sessions(server, "close", "00000000-0000-4000-8000-000000000000")
    assert r.returncode == 1
    assert "no session 00000000-0000-4000-8000-000000000000" in r.stderr, r.stderr
    r = keyhole_sessions(server, "close", "abc")
    assert r.returncode == 1
    assert "at least 8 characters" in r.stderr, r.stderr


def test_the_control_socket_is_private_and_refuses_other_users(server):
    if os.geteuid() != 0:
        pytest.skip("needs root: runs `keyhole sessions` as another uid with setpriv")
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to run the CLI as another user")
    state = server.dir / "state"
    sock = state / "control.sock"
    st = os.stat(sock)
    assert stat.S_ISSOCK(st.st_mode), oct(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_uid == os.geteuid()
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700, oct(os.stat(state).st_mode)

    # A configuration nobody may read, pointing at the server's state directory.
    other = pathlib.Path(tempfile.mkdtemp(prefix="keyhole-nobody-"))
    try:
        os.chmod(other, 0o755)
        cfg = other / "keyhole.toml"
        cfg.write_text('state_directory = "%s"\n' % state)
        os.chmod(cfg, 0o644)
        exe_ok = subprocess.run(["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups",
                                 "--", server.exe, "--version"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        if exe_ok.returncode != 0:
            pytest.skip("nobody cannot run %s: %s" % (server.exe, exe_ok.stdout))

        # The files' modes already stop it.
        r = keyhole_sessions(server, user=NOBODY, config=cfg)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "permission denied" in r.stderr and "sudo" in r.stderr, r.stderr
        assert r.stdout == ""

        # With the modes opened, the server itself refuses by the peer's uid (SO_PEERCRED).
        modes = {p: stat.S_IMODE(os.stat(p).st_mode) for p in (server.dir, state, sock)}
        try:
            os.chmod(server.dir, 0o711)
            os.chmod(state, 0o711)
            os.chmod(sock, 0o666)
            r = keyhole_sessions(server, user=NOBODY, config=cfg)
            assert r.returncode == 1, (r.stdout, r.stderr)
            assert "refused: uid %d may not use the control socket" % NOBODY in r.stderr, r.stderr
            assert r.stdout == ""
            r = keyhole_sessions(server, "close", "00000000", user=NOBODY, config=cfg)
            assert r.returncode == 1 and "refused: uid" in r.stderr, r.stderr
        finally:
            for p, m in modes.items():
                os.chmod(p, m)
        log = server.stderr_path.read_text(errors="replace")
        assert "refused a connection from uid %d" % NOBODY in log, server.stderr_tail()
        # Root still gets in.
        assert keyhole_sessions(server, config=cfg).returncode == 0
    finally:
        shutil.rmtree(other, ignore_errors=True)

"""Fixtures for the real-client interop tests: the real `keyhole serve` on 127.0.0.1.

The binary is $KEYHOLE_BIN, or the one `cargo build --bins` builds. A session-scoped fixture lays
out a private (0700) copy of the shipped keyhole.toml, endpoints/ and role-capabilities/ with free
ports, small limits and a few test grants, creates the accounts with `keyhole user add` and the
rules with `keyhole rule add`, starts `keyhole serve --config ...`, parses the addresses it prints,
and stops it with SIGTERM at the end (it must exit 0 within 15 s). When a test fails, the tail of
each server's standard error is attached to the report.

For Negotiate (issue 12), `realm` starts a throwaway MIT KDC (tests/krb/realm.sh, everything in a
temporary directory removed afterwards) and `negotiate_server` a second `keyhole serve` with
Kerberos (that realm's keytab) and NTLM, HTTPS on 127.0.0.1 and plain HTTP on 0.0.0.0 that admits
only encrypted Negotiate.
"""
import grp
import json
import os
import pathlib
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings

import pytest

warnings.filterwarnings("ignore", message="Unverified HTTPS request")

ROOT = pathlib.Path(__file__).resolve().parents[2]

MAX_ENVELOPE_KB = 150
MAX_SESSIONS_PER_USER = 3
MAX_SHELLS_PER_USER = 4
SEQ_COUNT = 20000

PAM_SERVICE = "keyhole-interop"
PAM_FILE = pathlib.Path("/etc/pam.d") / PAM_SERVICE
PAM_USER = "khinterop"
PAM_GROUP = "helpdesk"

# Every account the fixture creates: name -> (password, group).
ACCOUNTS = {
    "alice": ("alice-Pw-" + secrets.token_hex(8), "helpdesk"),
    # Only for the session-limit tests, so that other tests' sessions never count against it.
    "carol": ("carol-Pw-" + secrets.token_hex(8), "helpdesk"),
    "victor": ("victor-Pw-" + secrets.token_hex(8), "acme-vendor"),
    "nobody-rule": ("nobody-Pw-" + secrets.token_hex(8), "no-rule-group"),
    # Only for the web console's session-limit test.
    "dora": ("dora-Pw-" + secrets.token_hex(8), "helpdesk"),
}

# The web console is on in every test server (tests/interop/test_console.py drives it with
# Chromium; the WS-Man tests show that it changes nothing for them).
CONSOLE_TOML = '\n[console]\nenabled = true\ndefault_configuration = "Helpdesk"\n'


# Test-only grants added to the temporary copy of the Diagnostics role capability: a program that
# runs long (signals, stop) and a function printing many lines (fragmentation).
DIAGNOSTICS_EXTRA = """

[functions.Get-Numbers]
synopsis = "Prints 1 to %d, one number a line (interop tests: large output)"
program = "/usr/bin/seq"
args = ["1", "%d"]
output = "lines"
timeout = "60s"
""" % (SEQ_COUNT, SEQ_COUNT)


# An endpoint for the object-model tests (issue 11 item 3): the object cmdlets with Get-Date and
# Write-Output, which the shipped roles do not grant. helpdesk → Objects.
OBJECTS_ENDPOINT = """name = "Objects"
description = "Object cmdlets (interop tests: DateTime, String and selected objects)"
session_type = "restricted-remote-server"
language_mode = "no-language"
run_as = "nobody"

[[role]]
group = "helpdesk"
role_capabilities = ["ObjectCmdlets"]
"""
OBJECTS_ROLE = """description = "Object cmdlets and the values to shape with them"
visible_cmdlets = ["Get-Date", "Write-Output", "Select-Object", "Where-Object", "Sort-Object",
                   "Measure-Object", "Get-Member", "Get-Uptime"]
"""


# An endpoint whose sessions expire after a short idle time (issue 11 item 7: an expired pool
# says so). helpdesk → Brief.
BRIEF_IDLE_SECONDS = 2
BRIEF_ENDPOINT = """name = "Brief"
description = "Sessions that expire quickly (interop tests: the expired-pool message)"
session_type = "restricted-remote-server"
language_mode = "no-language"
run_as = "nobody"
idle_timeout = "%ds"

[[role]]
group = "helpdesk"
role_capabilities = ["Diagnostics"]
""" % BRIEF_IDLE_SECONDS


def keyhole_bin():
    exe = os.environ.get("KEYHOLE_BIN")
    if exe:
        return exe
    out = subprocess.run(
        ["cargo", "build", "--bins", "--message-format=json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        check=True,
        text=True,
    )
    for line in out.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if (
            msg.get("reason") == "compiler-artifact"
            and msg.get("target", {}).get("name") == "keyhole"
            and msg.get("executable")
        ):
            return msg["executable"]
    raise RuntimeError("cargo did not report the keyhole executable")


def _run(exe, config, *args, stdin=None):
    r = subprocess.run(
        [exe, *args[:2], "--config", str(config), *args[2:]],
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    if r.returncode != 0:
        raise RuntimeError("keyhole %s failed (%d): %s%s" % (" ".join(args), r.returncode, r.stdout, r.stderr))
    return r.stdout


# ------------------------------------------------------------------------------------------------
# PAM: a real OS account in OS group `helpdesk`, checked by pam_unix through service keyhole-interop.
# ------------------------------------------------------------------------------------------------

def _pam_possible():
    if os.geteuid() != 0:
        return "not root: cannot create OS accounts or write /etc/pam.d"
    for tool in ("useradd", "userdel", "chpasswd", "groupadd", "groupdel", "usermod"):
        if shutil.which(tool) is None:
            return "%s not found" % tool
    if not any(
        pathlib.Path(d, "pam_unix.so").exists()
        for d in ("/lib/x86_64-linux-gnu/security", "/usr/lib/x86_64-linux-gnu/security",
                  "/lib/security", "/usr/lib/security", "/lib64/security", "/usr/lib64/security",
                  "/lib/aarch64-linux-gnu/security", "/usr/lib/aarch64-linux-gnu/security")
    ):
        return "pam_unix.so not found"
    return None


@pytest.fixture(scope="session")
def pam_account(request):
    """A real OS account for PAM, or None (with the reason in `pam_skip_reason`)."""
    why = _pam_possible()
    if why:
        request.config._keyhole_pam_skip = why
        return None
    try:
        pwd.getpwnam(PAM_USER)
        request.config._keyhole_pam_skip = "an account %s already exists; not touching it" % PAM_USER
        return None
    except KeyError:
        pass
    if PAM_FILE.exists():
        request.config._keyhole_pam_skip = "%s already exists; not touching it" % PAM_FILE
        return None
    password = "Pam-" + secrets.token_hex(10)
    created_group = False

    def cleanup():
        subprocess.run(["userdel", "-r", PAM_USER], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if created_group:
            subprocess.run(["groupdel", PAM_GROUP], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            PAM_FILE.unlink()
        except FileNotFoundError:
            pass

    request.addfinalizer(cleanup)
    # nodelay: pam_unix otherwise sleeps ~2 s after each failure, and tests send wrong passwords.
    PAM_FILE.write_text("auth required pam_unix.so nodelay\naccount required pam_unix.so\n")
    try:
        grp.getgrnam(PAM_GROUP)
    except KeyError:
        subprocess.run(["groupadd", PAM_GROUP], check=True)
        created_group = True
    subprocess.run(["useradd", "-m", "-s", "/usr/sbin/nologin", PAM_USER], check=True)
    subprocess.run(["chpasswd"], input="%s:%s\n" % (PAM_USER, password), text=True, check=True)
    subprocess.run(["usermod", "-aG", PAM_GROUP, PAM_USER], check=True)
    return {"user": PAM_USER, "password": password, "group": PAM_GROUP}


# ------------------------------------------------------------------------------------------------
# The server
# ------------------------------------------------------------------------------------------------

class Server:
    """A running `keyhole serve`: addresses, paths, accounts, and its standard error."""

    def __init__(self, exe, dirpath, proc, stderr_path, https, http, accounts, pam):
        self.exe = exe
        self.dir = dirpath
        self.config = dirpath / "keyhole.toml"
        self.proc = proc
        self.stderr_path = stderr_path
        self.https = https  # "127.0.0.1:PORT"
        self.http = http
        self.accounts = accounts
        self.pam = pam
        self.transcripts = dirpath / "transcripts"
        self.audit_log = dirpath / "state" / "audit.jsonl"

    @property
    def https_port(self):
        return int(self.https.rsplit(":", 1)[1])

    def url(self, scheme="https"):
        return "%s://%s/wsman" % (scheme, self.https if scheme == "https" else self.http)

    def console(self, path=""):
        """The web console's address (HTTPS only)."""
        return "https://%s/console%s" % (self.https, path)

    def password(self, user):
        return self.accounts[user][0]

    def all_passwords(self):
        pw = [p for p, _ in self.accounts.values()]
        if self.pam:
            pw.append(self.pam["password"])
        return pw

    def stderr_tail(self, n=80):
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError as e:
            return "(cannot read the server's stderr: %s)" % e
        return "\n".join(lines[-n:])


def _layout(dirpath, pam, extra_toml=""):
    for name in ("endpoints", "role-capabilities"):
        shutil.copytree(ROOT / name, dirpath / name)
    shipped = (ROOT / "keyhole.toml").read_text()
    text, n = re.subn(r'(?m)^https\s*=.*$', 'https = "127.0.0.1:0"', shipped)
    assert n == 1, "the shipped keyhole.toml has no [listener] https line to point at a free port"
    text, n = re.subn(r'(?m)^http\s*=.*$', 'http = "127.0.0.1:0"', text)
    assert n == 1, "the shipped keyhole.toml has no [listener] http line to point at a free port"
    top = (
        'transcript_directory = "transcripts"\n'
        'audit_log = "state/audit.jsonl"\n'
    )
    text = top + text + (
        "\n[limits]\nmax_sessions_per_user = %d\nmax_shells_per_user = %d\nmax_envelope_size_kb = %d\n"
        "\n[auth]\n# Many wrong passwords come from 127.0.0.1 in these tests.\nmax_failed_logins = 1000\n"
        % (MAX_SESSIONS_PER_USER, MAX_SHELLS_PER_USER, MAX_ENVELOPE_KB)
    )
    if pam:
        text += 'pam_service = "%s"\n' % PAM_SERVICE
    text += extra_toml
    (dirpath / "keyhole.toml").write_text(text)

    # Programs run as an unprivileged account the host surely has.
    for ep in (dirpath / "endpoints").glob("*.toml"):
        t, n = re.subn(r'(?m)^run_as\s*=.*$', 'run_as = "nobody"', ep.read_text())
        assert n == 1, "%s has no run_as line" % ep
        ep.write_text(t)

    diag = dirpath / "role-capabilities" / "Diagnostics.toml"
    t = diag.read_text()
    t, n = re.subn(
        r'(?m)^visible_external_commands\s*=\s*\[\s*"/usr/bin/uptime"\s*\]',
        'visible_external_commands = ["/usr/bin/uptime", { path = "/usr/bin/sleep", arguments = ["[0-9]{1,3}"] }]',
        t,
    )
    assert n == 1, "Diagnostics.toml changed shape: cannot add /usr/bin/sleep"
    t, n = re.subn(r'(?m)^visible_functions\s*=\s*\["Get-DiskUsage"\]',
                   'visible_functions = ["Get-DiskUsage", "Get-Numbers"]', t)
    assert n == 1, "Diagnostics.toml changed shape: cannot add Get-Numbers"
    diag.write_text(t + DIAGNOSTICS_EXTRA)
    (dirpath / "endpoints" / "Objects.toml").write_text(OBJECTS_ENDPOINT)
    (dirpath / "role-capabilities" / "ObjectCmdlets.toml").write_text(OBJECTS_ROLE)
    (dirpath / "endpoints" / "Brief.toml").write_text(BRIEF_ENDPOINT)


def _read_addresses(proc, timeout):
    """Read stdout until both listener lines came; return (https, http, lines)."""
    found = {}
    lines = []
    done = threading.Event()

    def reader():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            m = re.match(r"keyhole: listening on (https?)://([0-9.]+:[0-9]+)/wsman", line)
            if m:
                found[m.group(1)] = m.group(2)
                if len(found) == 2:
                    done.set()
        done.set()  # EOF

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    done.wait(timeout)
    return found.get("https"), found.get("http"), lines


def _serve(exe, dirpath, accounts, pam, env_extra=None):
    """Start `keyhole serve` on the configuration in `dirpath`; a Server once both listeners are up."""
    cfg = dirpath / "keyhole.toml"
    stderr_path = dirpath / "serve.stderr"
    stderr_file = open(stderr_path, "w")
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"), NO_COLOR="1")
    env.update(env_extra or {})
    proc = subprocess.Popen(
        [exe, "serve", "--config", str(cfg)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=stderr_file,
        text=True,
        env=env,
    )
    https, http, lines = _read_addresses(proc, 30)
    if not https or not http:
        proc.kill()
        proc.wait()
        stderr_file.close()
        raise RuntimeError(
            "keyhole serve did not print both listener addresses.\nstdout:\n%s\nstderr:\n%s"
            % ("\n".join(lines), stderr_path.read_text(errors="replace"))
        )
    srv = Server(exe, dirpath, proc, stderr_path, https, http, accounts, pam)
    srv._stderr_file = stderr_file
    return srv


def _stop(srv):
    """SIGTERM; `keyhole serve` must exit 0 within 15 s. Then its directory is removed."""
    srv.proc.send_signal(signal.SIGTERM)
    try:
        code = srv.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        srv.proc.kill()
        srv.proc.wait()
        srv._stderr_file.close()
        pytest.fail("keyhole serve did not exit within 15 s of SIGTERM\n" + srv.stderr_tail())
    srv._stderr_file.close()
    assert code == 0, "keyhole serve exited %s after SIGTERM\n%s" % (code, srv.stderr_tail())
    shutil.rmtree(srv.dir, ignore_errors=True)


def start_keyhole(pam_account, extra_toml=CONSOLE_TOML, prefix="keyhole-interop-"):
    """Lay out a private configuration (the test accounts and rules, `extra_toml` appended to
    keyhole.toml — by default the web console on), check it, start `keyhole serve`; returns
    (Server, its stderr file) for `stop_keyhole`."""
    exe = keyhole_bin()
    dirpath = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(dirpath, 0o700)
    _layout(dirpath, pam_account, extra_toml)
    cfg = dirpath / "keyhole.toml"
    for user, (password, group) in ACCOUNTS.items():
        _run(exe, cfg, "user", "add", user, "--group", group, stdin=password + "\n")
    _run(exe, cfg, "rule", "add", "--user-group", "helpdesk", "--computer", "*",
         "--configuration", "Helpdesk", "--name", "helpdesk to Helpdesk")
    _run(exe, cfg, "rule", "add", "--user-group", "acme-vendor", "--computer", "*",
         "--configuration", "Vendor", "--name", "vendor to Vendor")
    _run(exe, cfg, "rule", "add", "--user-group", "helpdesk", "--computer", "*",
         "--configuration", "Objects", "--name", "helpdesk to Objects")
    _run(exe, cfg, "rule", "add", "--user-group", "helpdesk", "--computer", "*",
         "--configuration", "Brief", "--name", "helpdesk to Brief")
    check = subprocess.run([exe, "check", "--config", str(cfg)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60)
    assert check.returncode == 0, "keyhole check refused the test configuration:\n" + check.stdout
    srv = _serve(exe, dirpath, ACCOUNTS, pam_account)
    return srv, srv._stderr_file


def stop_keyhole(srv, stderr_file):
    """SIGTERM; `keyhole serve` must exit 0 within 15 s. Removes its directory."""
    _stop(srv)


@pytest.fixture(scope="session")
def server(request, pam_account):
    srv, _ = start_keyhole(pam_account)
    request.config._keyhole_servers = getattr(request.config, "_keyhole_servers", []) + [srv]
    yield srv
    _stop(srv)


# ------------------------------------------------------------------------------------------------
# Negotiate (issue 12): a throwaway MIT Kerberos realm and a server that offers Kerberos and NTLM
# ------------------------------------------------------------------------------------------------

KRB_TOOLS = ("krb5kdc", "kadmin.local", "kdb5_util", "kinit")
REALM = "KEYHOLE.TEST"
OTHER_REALM = "OTHER.TEST"
# What tests/krb/realm.sh creates: principal -> password.
PRINCIPALS = {
    "alice@" + REALM: "alice-pw-1",
    "mallory@" + REALM: "mallory-pw-1",
    "nobody-rule@" + REALM: "nobody-pw-1",
    "bob@" + OTHER_REALM: "bob-pw-1",
}
# The negotiate server's users.toml accounts (NTLM passwords; their NT hashes are stored because
# `ntlm = true` when they are added): alice maps from alice@KEYHOLE.TEST, nobody-rule from
# nobody-rule@KEYHOLE.TEST; mallory has no account.
NEGOTIATE_ACCOUNTS = {
    "alice": ("alice-Ntlm-" + secrets.token_hex(8), "helpdesk"),
    "nobody-rule": ("nobody-Ntlm-" + secrets.token_hex(8), "no-rule-group"),
}


def _missing_or_fail(what):
    """A missing prerequisite of the Negotiate tests: a failure as root or in CI (tests/run.sh
    installs it there), a skip (with the reason) on a developer machine without it."""
    msg = "%s (tests/run.sh installs it as root)" % what
    if os.geteuid() == 0 or os.environ.get("CI"):
        pytest.fail(msg + ": missing although the test command runs as root or in CI")
    pytest.skip(msg)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def realm():
    """KEYHOLE.TEST (and OTHER.TEST, which it trusts) on 127.0.0.1, in a temporary directory that
    is removed afterwards; this process's Kerberos environment points at it meanwhile."""
    missing = [t for t in KRB_TOOLS
               if not any(os.path.exists(os.path.join(d, t)) for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"))]
    if missing:
        _missing_or_fail("the MIT KDC tools %s" % ", ".join(missing))
    for module, pkg in (("gssapi", "gssapi"), ("krb5", "krb5"), ("kerberos", "pykerberos")):
        try:
            __import__(module)
        except ImportError:
            _missing_or_fail("the Python module %s (pip package %s, in tests/interop/requirements.txt)" % (module, pkg))
    d = pathlib.Path(tempfile.mkdtemp(prefix="keyhole-realm-"))
    script = ROOT / "tests" / "krb" / "realm.sh"
    out = subprocess.run(["bash", str(script), "start", str(d / "realm"), str(_free_port())],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    if out.returncode != 0:
        subprocess.run(["bash", str(script), "stop", str(d / "realm")])
        shutil.rmtree(d, ignore_errors=True)
        raise RuntimeError("tests/krb/realm.sh start failed:\n" + out.stdout + out.stderr)
    env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    saved = {k: os.environ.get(k) for k in ("KRB5_CONFIG", "KRB5RCACHEDIR", "KRB5CCNAME")}
    for k in saved:
        os.environ[k] = env[k]
    try:
        yield {"dir": d / "realm", "keytab": env["KEYTAB"], "env": {k: env[k] for k in saved}}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        subprocess.run(["bash", str(script), "stop", str(d / "realm")], timeout=60)
        shutil.rmtree(d, ignore_errors=True)
        assert not (d / "realm").exists(), "the realm directory survived"


class NegotiateServer(Server):
    """A `keyhole serve` with Kerberos and NTLM: HTTPS on 127.0.0.1 (channel bindings required)
    and plain HTTP on 0.0.0.0 without allow_unencrypted (only encrypted Negotiate gets in)."""

    def url(self, scheme="https"):
        if scheme == "http":
            return "http://127.0.0.1:%d/wsman" % self.http_port
        return super().url(scheme)

    @property
    def http_port(self):
        return int(self.http.rsplit(":", 1)[1])


@pytest.fixture(scope="session")
def negotiate_server(request, realm):
    exe = keyhole_bin()
    dirpath = pathlib.Path(tempfile.mkdtemp(prefix="keyhole-interop-negotiate-"))
    os.chmod(dirpath, 0o700)
    _layout(dirpath, None)
    cfg = dirpath / "keyhole.toml"
    text = cfg.read_text()
    text, n = re.subn(r'(?m)^http\s*=.*$', 'http = "0.0.0.0:0"\nip_allow = ["127.0.0.0/8"]', text)
    assert n == 1
    text += (
        'negotiate = true\nkeytab = "%s"\nrealms = ["%s"]\nntlm = true\nchannel_binding = "required"\n'
        % (realm["keytab"], REALM)
    )
    cfg.write_text(text)
    for user, (password, group) in NEGOTIATE_ACCOUNTS.items():
        _run(exe, cfg, "user", "add", user, "--group", group, stdin=password + "\n")
    users = (dirpath / "users.toml").read_text()
    assert users.count("nt_hash") == len(NEGOTIATE_ACCOUNTS), "keyhole user add stored no NT hash:\n" + users
    _run(exe, cfg, "rule", "add", "--user-group", "helpdesk", "--computer", "*",
         "--configuration", "Helpdesk", "--name", "helpdesk to Helpdesk")
    check = subprocess.run([exe, "check", "--config", str(cfg)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60, env=dict(os.environ, **realm["env"]))
    assert check.returncode == 0, "keyhole check refused the Negotiate configuration:\n" + check.stdout
    srv = _serve(exe, dirpath, NEGOTIATE_ACCOUNTS, None, realm["env"])
    srv.__class__ = NegotiateServer
    request.config._keyhole_servers = getattr(request.config, "_keyhole_servers", []) + [srv]
    yield srv
    _stop(srv)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for srv in getattr(item.config, "_keyhole_servers", []):
            rep.sections.append(("keyhole serve stderr (tail) of %s" % srv.dir.name, srv.stderr_tail()))


# ------------------------------------------------------------------------------------------------
# Helpers shared by the tests
# ------------------------------------------------------------------------------------------------

def winrm_session(server, user="alice", password=None, scheme="https"):
    import winrm

    if password is None:
        password = server.password(user)
    if scheme == "https":
        return winrm.Session(server.url("https"), auth=(user, password), transport="basic",
                             server_cert_validation="ignore")
    return winrm.Session(server.url("http"), auth=(user, password), transport="plaintext")


def psrp1_python():
    """The interpreter of the second venv that holds pypsrp 1.0's `psrp` package (it cannot be
    installed beside pypsrp 0.9.1; tests/run.sh makes it): $KEYHOLE_PSRP1_PYTHON or .venv-psrp1."""
    return os.environ.get("KEYHOLE_PSRP1_PYTHON") or str(ROOT / ".venv-psrp1" / "bin" / "python")


def winrm_protocol(server, user="alice", password=None):
    import winrm

    if password is None:
        password = server.password(user)
    return winrm.protocol.Protocol(
        endpoint=server.url("https"),
        transport="basic",
        username=user,
        password=password,
        server_cert_validation="ignore",
    )


def processes_matching(argv):
    """PIDs of processes whose argv is `argv` (the program may be given by its full path)."""
    pids = []
    for d in pathlib.Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "cmdline").read_bytes()
        except OSError:
            continue
        parts = [p.decode(errors="replace") for p in raw.split(b"\0") if p]
        if len(parts) == len(argv) and os.path.basename(parts[0]) == argv[0] and parts[1:] == argv[1:]:
            pids.append(int(d.name))
    return pids


def wait_until(pred, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


@pytest.fixture
def http_log(monkeypatch):
    """Every (request, response) that requests sends in this test, pywinrm's and pypsrp's too."""
    import requests.adapters

    log = []
    real_send = requests.adapters.HTTPAdapter.send

    def send(self, req, **kw):
        resp = real_send(self, req, **kw)
        log.append((req, resp))
        return resp

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    return log


def pytest_configure(config):
    config.addinivalue_line("markers", "psrp: PowerShell Remoting Protocol tests (pypsrp)")
    # pywinrm 0.5.0 warns on every plain-HTTP session when REQUESTS_CA_BUNDLE is set (Debian's CI).
    config.addinivalue_line("filterwarnings", "ignore:'pywinrm' will use an environment variable:DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore:Unverified HTTPS request")

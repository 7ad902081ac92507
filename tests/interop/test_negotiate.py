"""Negotiate (issue 12) with the real clients against the real `keyhole serve` and a real KDC.

The `negotiate_server` fixture (conftest.py) serves Kerberos (keytab of the throwaway realm
KEYHOLE.TEST, realms = ["KEYHOLE.TEST"]) and NTLM (users.toml NT hashes) over HTTPS on 127.0.0.1
(channel_binding = "required") and over plain HTTP on 0.0.0.0 without allow_unencrypted, where
only encrypted Negotiate gets in. pypsrp (auth="kerberos", "negotiate", "ntlm") and pywinrm
(transport="kerberos", "ntlm") connect over both, with their default encryption="auto"
(MS-WSMV message encryption on HTTP). Every refusal — a wrong NTLM password, a principal with no
local account, a principal of a realm not listed, a user no rule admits, Basic or plaintext on
the encrypted-only listener — is the same 401 as Basic's wrong password: same exception, same
status, headers (less Date) and body. `keyhole demo`'s printed pypsrp NTLM line is run as printed.
"""
import base64
import json
import os
import re
import subprocess
import sys
import threading

import pytest
from pypsrp.client import Client
from pypsrp.exceptions import AuthenticationError
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan

from conftest import PRINCIPALS, REALM, OTHER_REALM, keyhole_bin

ENDPOINT = "Helpdesk"


def alice_principal():
    return "alice@" + REALM


def client(srv, scheme, auth, user, password, **kw):
    """A pypsrp Client for `srv` over `scheme` ("https" or "http"), as a user would write it."""
    if scheme == "https":
        return Client("127.0.0.1", port=srv.https_port, ssl=True, cert_validation=False, auth=auth,
                      username=user, password=password, negotiate_hostname_override="localhost", **kw)
    return Client("127.0.0.1", port=srv.http_port, ssl=False, auth=auth, username=user,
                  password=password, negotiate_hostname_override="localhost", **kw)


def run_uptime(c):
    out, streams, had_errors = c.execute_ps("Get-Uptime", configuration_name=ENDPOINT)
    assert not had_errors, [str(e) for e in streams.error]
    assert "TotalSeconds" in out, out
    return out


def audit_records(srv):
    path = srv.dir / "state" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def shape(resp):
    headers = sorted((k.lower(), v) for k, v in resp.headers.items() if k.lower() != "date")
    return resp.status_code, headers, resp.content


def last_response(http_log):
    assert http_log, "no HTTP exchange was logged"
    return http_log[-1][1]


# --- what works -----------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["https", "http"])
@pytest.mark.parametrize("auth", ["kerberos", "negotiate"])
def test_pypsrp_kerberos(negotiate_server, http_log, scheme, auth):
    run_uptime(client(negotiate_server, scheme, auth, alice_principal(), PRINCIPALS[alice_principal()]))
    reqs = [r for r, _ in http_log]
    auths = [r.headers.get("Authorization", "") for r in reqs]
    auths = [a.decode() if isinstance(a, bytes) else a for a in auths]
    assert any(a.startswith("Negotiate ") for a in auths), auths
    if scheme == "http":
        # Everything after the authentication was encrypted (MS-WSMV), and so was every reply.
        bodies = [(r, resp) for r, resp in http_log if r.body]
        assert bodies
        for r, resp in bodies:
            assert r.headers["Content-Type"].startswith("multipart/encrypted;"), r.headers
            assert b"Envelope" not in (r.body if isinstance(r.body, bytes) else r.body.encode())
            assert resp.headers["Content-Type"].startswith("multipart/encrypted;"), resp.headers
            assert b"Envelope" not in resp.content
    rec = [a for a in audit_records(negotiate_server)
           if a.get("kind") == "authentication" and a.get("decision") == "allow"
           and "alice@KEYHOLE.TEST" in (a.get("reason") or "")]
    assert rec, "no audit record names the principal"
    if scheme == "https":
        assert any("channel-bound" in a["reason"] for a in rec), rec


@pytest.mark.parametrize("scheme", ["https", "http"])
@pytest.mark.parametrize("auth", ["ntlm", "negotiate"])
def test_pypsrp_ntlm(negotiate_server, http_log, scheme, auth):
    # auth="negotiate" with a local account's password: Kerberos finds no such principal, and
    # pyspnego falls back to NTLM inside SPNEGO (with the mechListMIC exchange).
    run_uptime(client(negotiate_server, scheme, auth, "alice", negotiate_server.password("alice")))
    tokens = [r.headers.get("Authorization") for r, _ in http_log if r.headers.get("Authorization")]
    tokens = [t.decode() if isinstance(t, bytes) else t for t in tokens]
    # Raw NTLM, or SPNEGO (a NegTokenInit: [APPLICATION 0], then NegTokenResps).
    first = base64.b64decode(tokens[0].split(" ", 1)[1])
    if auth == "ntlm":
        assert first.startswith(b"NTLMSSP\0"), first
    else:
        assert first[:1] == b"\x60" and b"NTLMSSP\0" in first, first
    if scheme == "http":
        assert any(r.headers.get("Content-Type", "").startswith("multipart/encrypted;") for r, _ in http_log)


def test_pypsrp_pool_keeps_its_connection_authenticated(negotiate_server):
    """A runspace pool and several pipelines over one encrypted connection (no re-authentication
    per request: Negotiate authenticates the connection)."""
    wsman = WSMan("127.0.0.1", port=negotiate_server.http_port, ssl=False, auth="kerberos",
                  username=alice_principal(), password=PRINCIPALS[alice_principal()],
                  negotiate_hostname_override="localhost")
    with RunspacePool(wsman, configuration_name=ENDPOINT) as pool:
        for _ in range(3):
            ps = PowerShell(pool).add_cmdlet("Get-Process").add_parameter("Id", os.getpid())
            out = ps.invoke()
            assert not ps.had_errors and out[0].adapted_properties["Id"] == os.getpid()


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_pywinrm_kerberos(negotiate_server, realm, scheme):
    import winrm

    # pywinrm's Kerberos (pykerberos) uses the credential cache: alice's ticket from realm.sh.
    s = winrm.Session(negotiate_server.url(scheme), auth=(alice_principal(), ""), transport="kerberos",
                      server_cert_validation="ignore", kerberos_hostname_override="localhost")
    r = s.run_cmd("Get-Process -Id 1")
    assert r.status_code == 0, (r.std_out, r.std_err)
    assert b"ProcessName" in r.std_out, r.std_out


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_pywinrm_ntlm(negotiate_server, scheme):
    import winrm

    s = winrm.Session(negotiate_server.url(scheme), auth=("alice", negotiate_server.password("alice")),
                      transport="ntlm", server_cert_validation="ignore")
    r = s.run_cmd("Get-Process -Id 1")
    assert r.status_code == 0, (r.std_out, r.std_err)
    assert b"ProcessName" in r.std_out, r.std_out


# --- refusals: each the 401 of a wrong Basic password ---------------------------------------------

def basic_refusal(srv, http_log):
    with pytest.raises(AuthenticationError):
        client(srv, "https", "basic", "alice", "wrong-password").execute_ps("Get-Uptime", configuration_name=ENDPOINT)
    return shape(last_response(http_log))


REFUSALS = [
    # (what, scheme, pypsrp auth, user, password)
    ("wrong NTLM password", "https", "ntlm", "alice", "wrong-password"),
    ("wrong NTLM password over encrypted HTTP", "http", "ntlm", "alice", "wrong-password"),
    ("NTLM for a user no rule admits", "https", "ntlm", "nobody-rule", None),
    ("unknown principal", "https", "kerberos", "mallory@" + REALM, PRINCIPALS["mallory@" + REALM]),
    ("unknown principal over encrypted HTTP", "http", "kerberos", "mallory@" + REALM,
     PRINCIPALS["mallory@" + REALM]),
    ("principal of a realm not listed", "https", "kerberos", "bob@" + OTHER_REALM, PRINCIPALS["bob@" + OTHER_REALM]),
    ("principal of a user no rule admits", "https", "negotiate", "nobody-rule@" + REALM,
     PRINCIPALS["nobody-rule@" + REALM]),
    # The encrypted-only listener: Basic with the right password, Negotiate without encryption.
    ("Basic over plain HTTP off loopback", "http", "basic", "alice", None),
]
# pypsrp refuses Basic over plain HTTP unless told not to encrypt.
NO_ENCRYPTION = {"Basic over plain HTTP off loopback"}


@pytest.mark.parametrize("what,scheme,auth,user,password", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_are_the_basic_401(negotiate_server, http_log, what, scheme, auth, user, password):
    if password is None:
        password = negotiate_server.password(user)
    want = basic_refusal(negotiate_server, http_log)
    assert want[0] == 401
    http_log.clear()
    kw = {"encryption": "never"} if what in NO_ENCRYPTION else {}
    with pytest.raises(AuthenticationError):
        client(negotiate_server, scheme, auth, user, password, **kw).execute_ps("Get-Uptime", configuration_name=ENDPOINT)
    assert shape(last_response(http_log)) == want, what
    # The 401 offers what is enabled, each on its own line as Windows sends them.
    assert last_response(http_log).raw.headers.getlist("WWW-Authenticate") == \
        ["Negotiate", "Kerberos", 'Basic realm="keyhole"']


def test_unencrypted_negotiate_on_the_encrypted_only_listener(negotiate_server, http_log):
    want = basic_refusal(negotiate_server, http_log)
    http_log.clear()
    with pytest.raises(AuthenticationError):
        client(negotiate_server, "http", "ntlm", "alice", negotiate_server.password("alice"),
               encryption="never").execute_ps("Get-Uptime", configuration_name=ENDPOINT)
    assert shape(last_response(http_log)) == want
    # The same client with encryption gets in.
    run_uptime(client(negotiate_server, "http", "ntlm", "alice", negotiate_server.password("alice")))


def test_refusals_are_logged_with_their_reason(negotiate_server):
    """The client sees one 401; the server log and the audit log say which gate refused and why."""
    for what, scheme, auth, user, password in REFUSALS:
        kw = {"encryption": "never"} if what in NO_ENCRYPTION else {}
        with pytest.raises(AuthenticationError):
            client(negotiate_server, scheme, auth, user, password or negotiate_server.password(user),
                   **kw).execute_ps("Get-Uptime", configuration_name=ENDPOINT)
    denies = [a for a in audit_records(negotiate_server) if a.get("decision") == "deny"]
    reasons = " | ".join(a.get("reason") or "" for a in denies)
    for needle in ("wrong password", "unknown user (Negotiate principal mallory@KEYHOLE.TEST)",
                   "bob@OTHER.TEST is of a realm not in [auth] realms",
                   "no authorization rule admits nobody-rule", "admits only encrypted Negotiate"):
        assert needle in reasons, (needle, reasons)
    assert "gateway" in {a.get("gate") for a in denies if "nobody-rule" in (a.get("reason") or "")}


# --- keyhole demo ---------------------------------------------------------------------------------

def test_the_demo_ntlm_snippet_works_as_printed(tmp_path):
    proc = subprocess.Popen([keyhole_bin(), "demo", "--https-port", "0", "--http-port", "0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    done = threading.Event()

    def reader():
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl+C stops the server." in line:
                done.set()
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    try:
        assert done.wait(60), "keyhole demo printed no snippets"
        text = "".join(lines)
        m = re.search(r'^  pypsrp:  python3 -c "(.*auth=\'ntlm\'.*)"$', text, re.M)
        assert m, text
        assert re.search(r"ssl=False", m.group(1)), m.group(1)
        r = subprocess.run([sys.executable, "-c", m.group(1)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "TotalSeconds" in r.stdout and r.stdout.rstrip().endswith("False"), r.stdout
        for needle in ("evil-winrm-py -i 127.0.0.1 --port", "ansible_psrp_auth=ntlm"):
            assert needle in text, text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()

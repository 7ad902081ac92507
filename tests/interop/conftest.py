"""Fixtures for the real-client interop tests: a live keyhole WS-Man server.

By default the test-only server `examples/wsman_testserver.rs` is built with cargo and started
on 127.0.0.1 with free ports (fixed test account, see that file). Set KEYHOLE_WSMAN_TESTSERVER
to an executable taking the same arguments to test another build.
"""
import json
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
USER = "keyhole"
PASSWORD = "keyhole-test-password"
MAX_ENVELOPE_KB = 64


def _server_executable():
    exe = os.environ.get("KEYHOLE_WSMAN_TESTSERVER")
    if exe:
        return exe
    out = subprocess.run(
        ["cargo", "build", "--example", "wsman_testserver", "--message-format=json"],
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
        if msg.get("reason") == "compiler-artifact" and msg.get("target", {}).get("name") == "wsman_testserver":
            if msg.get("executable"):
                return msg["executable"]
    raise RuntimeError("cargo did not report the wsman_testserver executable")


@pytest.fixture(scope="session")
def server():
    exe = _server_executable()
    proc = subprocess.Popen(
        [
            exe,
            "--user", USER,
            "--password", PASSWORD,
            "--max-envelope-kb", str(MAX_ENVELOPE_KB),
            "--grant", "Get-Date",
            "--grant-external", "/usr/bin/sleep",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = ""
    for _ in range(20):  # other start-up messages (e.g. the certificate fingerprint) come first
        line = proc.stdout.readline().strip()
        if line.startswith("listening ") or not line:
            break
    if not line.startswith("listening "):
        proc.kill()
        raise RuntimeError("test server did not start: %r" % line)
    info = dict(kv.split("=", 1) for kv in line.split()[1:])
    yield info
    proc.stdin.close()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def make_session(server, scheme="https", password=PASSWORD):
    import winrm

    addr = server[scheme]
    if scheme == "https":
        return winrm.Session(
            "https://%s/wsman" % addr,
            auth=(USER, password),
            transport="basic",
            server_cert_validation="ignore",
        )
    return winrm.Session("http://%s/wsman" % addr, auth=(USER, password), transport="plaintext")


@pytest.fixture
def session(server):
    return make_session(server)


@pytest.fixture(scope="session")
def engine_ready(server):
    """True once the engine runs granted commands (the test server grants Get-Date)."""
    r = make_session(server).run_cmd("Get-Date")
    return r.status_code == 0

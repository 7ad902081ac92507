"""Reload (SPEC §3 `serve`): a changed file or SIGHUP reloads; a configuration that fails
validation never replaces the running one; open sessions are never dropped and keep the
configuration they started with. Runs its own `keyhole serve` (it edits the configuration)."""
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile

import pytest

from conftest import ACCOUNTS, _layout, _read_addresses, _run, keyhole_bin, wait_until


@pytest.fixture
def reload_server():
    exe = keyhole_bin()
    dirpath = pathlib.Path(tempfile.mkdtemp(prefix="keyhole-reload-"))
    os.chmod(dirpath, 0o700)
    _layout(dirpath, None)
    cfg = dirpath / "keyhole.toml"
    password, group = ACCOUNTS["alice"]
    _run(exe, cfg, "user", "add", "alice", "--group", group, stdin=password + "\n")
    _run(exe, cfg, "rule", "add", "--user-group", "helpdesk", "--computer", "*",
         "--configuration", "Helpdesk", "--name", "helpdesk to Helpdesk")
    stderr_path = dirpath / "serve.stderr"
    stderr_file = open(stderr_path, "w")
    proc = subprocess.Popen(
        [exe, "serve", "--config", str(cfg)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_file, text=True,
        env=dict(os.environ, RUST_LOG="info", NO_COLOR="1"),
    )
    https, http, lines = _read_addresses(proc, 30)
    assert https, "keyhole serve did not start: %s %s" % (lines, stderr_path.read_text())
    info = {"exe": exe, "dir": dirpath, "cfg": cfg, "url": "https://%s/wsman" % https,
            "stderr": stderr_path, "proc": proc, "password": password}
    yield info
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=15)
    stderr_file.close()
    assert code == 0, stderr_path.read_text()
    shutil.rmtree(dirpath, ignore_errors=True)


def protocol(url, user, password):
    import winrm
    return winrm.protocol.Protocol(endpoint=url, transport="basic", username=user,
                                   password=password, server_cert_validation="ignore")


def run(p, shell, line):
    cid = p.run_command(shell, line)
    out, err, code = p.get_command_output(shell, cid)
    p.cleanup_command(shell, cid)
    return code, out.decode(), err.decode()


def log_count(info, text):
    return info["stderr"].read_text(errors="replace").count(text)


def test_bad_configuration_is_refused_and_sessions_survive_reloads(reload_server):
    import winrm.exceptions

    info = reload_server
    alice = protocol(info["url"], "alice", info["password"])
    shell = alice.open_shell()
    assert run(alice, shell, "Get-Uptime")[0] == 0

    # 1. A broken role capability: the reload is refused, the running configuration stays.
    diag = info["dir"] / "role-capabilities" / "Diagnostics.toml"
    good = diag.read_text()
    diag.write_text(good + "\nbogus_key = 1\n")
    assert wait_until(lambda: log_count(info, "reload refused") >= 1, 15), info["stderr"].read_text()
    assert "bogus_key" in info["stderr"].read_text()
    assert run(alice, shell, "Get-Uptime")[0] == 0, "the open session must survive"
    fresh = protocol(info["url"], "alice", info["password"])
    s2 = fresh.open_shell()
    assert run(fresh, s2, "Get-Uptime")[0] == 0, "the old configuration must still be in force"
    fresh.close_shell(s2)

    # 2. A valid change that removes Get-Uptime: new sessions lose it, the open one keeps it.
    diag.write_text(good.replace('  "Get-Uptime",\n', ""))
    assert wait_until(lambda: log_count(info, "configuration reloaded") >= 1, 15), info["stderr"].read_text()
    fresh = protocol(info["url"], "alice", info["password"])
    s3 = fresh.open_shell()
    code, _, err = run(fresh, s3, "Get-Uptime")
    assert code == 2 and "CommandNotFoundException" in err
    fresh.close_shell(s3)
    code, out, _ = run(alice, shell, "Get-Uptime")
    assert code == 0 and out.strip(), "an open session keeps the configuration it started with"

    # 3. A new account through `keyhole user add` (users.toml changes) can log in after reload.
    before = log_count(info, "configuration reloaded")
    _run(info["exe"], info["cfg"], "user", "add", "dave", "--group", "helpdesk", stdin="dave-Pw-123456\n")
    assert wait_until(lambda: log_count(info, "configuration reloaded") > before, 15)
    dave = protocol(info["url"], "dave", "dave-Pw-123456")
    s4 = dave.open_shell()
    assert run(dave, s4, "Get-Process -Id 1")[0] == 0
    dave.close_shell(s4)

    # 4. A removed account is refused after the reload its file change triggers.
    before = log_count(info, "configuration reloaded")
    _run(info["exe"], info["cfg"], "user", "remove", "dave")
    assert wait_until(lambda: log_count(info, "configuration reloaded") > before, 15)
    with pytest.raises(winrm.exceptions.InvalidCredentialsError):
        protocol(info["url"], "dave", "dave-Pw-123456").open_shell()

    # 5. SIGHUP reloads on demand, with no file changed.
    before = log_count(info, "configuration reloaded")
    info["proc"].send_signal(signal.SIGHUP)
    assert wait_until(lambda: log_count(info, "configuration reloaded") > before, 15)

    assert run(alice, shell, "Get-Process -Id 1")[0] == 0
    alice.close_shell(shell)

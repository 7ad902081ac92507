"""pywinrm 0.5.0 against a live keyhole: run_cmd, run_ps, authentication, limits, signals."""
import time
import warnings

import pytest
import winrm
from winrm.exceptions import InvalidCredentialsError, WinRMError

from conftest import MAX_ENVELOPE_KB, make_session

warnings.filterwarnings("ignore", message="Unverified HTTPS request")


def test_run_cmd_of_a_command_not_granted_is_refused_with_exit_2(session):
    r = session.run_cmd("Get-NoSuchThing", ["-Name", "x"])
    assert r.status_code == 2
    assert r.std_out == b""
    assert b"FullyQualifiedErrorId" in r.std_err


def test_run_cmd_of_a_granted_command_returns_its_output(session, engine_ready):
    if not engine_ready:
        pytest.skip("the engine does not run granted commands yet (stub session)")
    r = session.run_cmd("Get-Date")
    assert r.status_code == 0
    assert r.std_out.strip()
    assert r.std_err == b""


def test_run_ps_decodes_the_encoded_command(session):
    r = session.run_ps("Get-NoSuchThing -Name 'x y'")
    assert r.status_code == 2
    assert b"FullyQualifiedErrorId" in r.std_err


def test_run_ps_of_a_granted_command(session, engine_ready):
    if not engine_ready:
        pytest.skip("the engine does not run granted commands yet (stub session)")
    r = session.run_ps("Get-Date")
    assert r.status_code == 0
    assert r.std_out.strip()


def test_plain_http_on_loopback(server):
    r = make_session(server, scheme="http").run_cmd("Get-NoSuchThing")
    assert r.status_code == 2


def test_wrong_password_is_invalid_credentials(server):
    with pytest.raises(InvalidCredentialsError):
        make_session(server, password="wrong").run_cmd("Get-Date")


def test_oversized_envelope_gets_a_fault_and_the_server_keeps_serving(session):
    with pytest.raises(WinRMError) as exc:
        session.run_cmd("Get-Date", ["x" * (MAX_ENVELOPE_KB * 1024 + 1)])
    assert "EncodingLimit" in str(exc.value)
    r = session.run_cmd("Get-NoSuchThing")
    assert r.status_code == 2


def test_terminate_signal_ends_a_long_command(session, engine_ready):
    if not engine_ready:
        pytest.skip("the engine does not run programs yet (stub session)")
    p = session.protocol
    shell = p.open_shell()
    try:
        cmd = p.run_command(shell, "/usr/bin/sleep", ["30"])
        time.sleep(1)
        t0 = time.monotonic()
        p.cleanup_command(shell, cmd)  # Signal .../signal/terminate
        stdout, stderr, code = p.get_command_output(shell, cmd)
        assert time.monotonic() - t0 < 10
        assert code != 0
    finally:
        p.close_shell(shell)


def test_shell_lifecycle_by_hand(session):
    p = session.protocol
    shell = p.open_shell()
    cmd = p.run_command(shell, "Get-NoSuchThing")
    p.send_command_input(shell, cmd, b"ignored input", end=True)
    stdout, stderr, code = p.get_command_output(shell, cmd)
    assert code == 2
    p.cleanup_command(shell, cmd)
    p.close_shell(shell)

"""pypsrp 0.9.1 against a live keyhole over PSRP: pool open/close, structured pipelines,
execute_ps, add_script, refusals as error records, GET_COMMAND_METADATA, stop.

Uses the `server` and `engine_ready` fixtures of conftest.py (test-only WS-Man server). The
configuration name is the endpoint the test server grants (KEYHOLE_PSRP_CONFIGURATION, default
"WinRS", the only endpoint of examples/wsman_testserver.rs). Needs `pip install pypsrp==0.9.1`.
"""
import os
import time

import pytest

pypsrp = pytest.importorskip("pypsrp")
from pypsrp.client import Client  # noqa: E402
from pypsrp.complex_objects import PSInvocationState, RunspacePoolState  # noqa: E402
from pypsrp.powershell import PowerShell, RunspacePool  # noqa: E402
from pypsrp.wsman import WSMan  # noqa: E402

from conftest import PASSWORD, USER  # noqa: E402

CONFIGURATION = os.environ.get("KEYHOLE_PSRP_CONFIGURATION", "WinRS")


def _host_port(server):
    host, port = server["http"].rsplit(":", 1)
    return host, int(port)


@pytest.fixture
def wsman(server):
    host, port = _host_port(server)
    return WSMan(host, port=port, username=USER, password=PASSWORD, ssl=False, auth="basic", encryption="never")


@pytest.fixture
def client(server):
    host, port = _host_port(server)
    return Client(host, port=port, username=USER, password=PASSWORD, ssl=False, auth="basic", encryption="never")


def test_pool_opens_and_closes(wsman):
    with RunspacePool(wsman, configuration_name=CONFIGURATION) as pool:
        assert pool.state == RunspacePoolState.OPENED
    assert pool.state == RunspacePoolState.CLOSED


def test_unknown_command_fails_with_an_error_record_not_a_fault(wsman, engine_ready):
    if not engine_ready:
        pytest.skip("the engine does not bind structured commands yet (stub session)")
    with RunspacePool(wsman, configuration_name=CONFIGURATION) as pool:
        ps = PowerShell(pool)
        ps.add_cmdlet("Get-NoSuchThing").add_parameter("Name", "x")
        ps.invoke()
        assert ps.had_errors
        assert ps.state == PSInvocationState.FAILED
        assert ps.streams.error, "the refusal arrives as an error record"
        assert ps.streams.error[-1].fq_error


def test_invoke_expression_stays_unavailable_outside_the_execute_ps_shape(wsman, engine_ready):
    if not engine_ready:
        pytest.skip("the engine does not bind structured commands yet (stub session)")
    with RunspacePool(wsman, configuration_name=CONFIGURATION) as pool:
        ps = PowerShell(pool)
        ps.add_cmdlet("Invoke-Expression").add_parameter("Command", "Get-Date")
        ps.invoke()
        assert ps.had_errors
        assert ps.output == []


def test_script_text_outside_the_language_is_refused(wsman):
    with RunspacePool(wsman, configuration_name=CONFIGURATION) as pool:
        ps = PowerShell(pool)
        ps.add_script("$x = Get-Date; $x")
        ps.invoke()
        assert ps.had_errors
        assert ps.output == []


def test_execute_ps_refusal(client):
    out, streams, had_errors = client.execute_ps("$env:PATH", configuration_name=CONFIGURATION)
    assert had_errors
    assert out == ""
    assert streams.error


def test_execute_ps_runs_a_granted_line(client, engine_ready):
    if not engine_ready:
        pytest.skip("the engine does not run granted commands yet (stub session)")
    out, streams, had_errors = client.execute_ps("Get-Date", configuration_name=CONFIGURATION)
    assert not had_errors, [str(e) for e in streams.error]
    assert out.strip()


def test_two_pipelines_in_one_pool(wsman, engine_ready):
    if not engine_ready:
        pytest.skip("the engine does not run granted commands yet (stub session)")
    with RunspacePool(wsman, configuration_name=CONFIGURATION) as pool:
        for _ in range(2):
            ps = PowerShell(pool)
            ps.add_cmdlet("Get-Date")
            out = ps.invoke()
            assert not ps.had_errors
            assert len(out) == 1


def test_get_command_metadata_lists_only_visible_commands(wsman, engine_ready):
    if not engine_ready:
        pytest.skip("the engine does not list commands yet (stub session)")
    with RunspacePool(wsman, configuration_name=CONFIGURATION) as pool:
        names = [c.name for c in pool.get_command_metadata("*")]
        assert "Get-Date" in names
        assert "Invoke-Expression" not in names
        assert all(not n.lower().startswith("import-module") for n in names)


def test_stop_kills_a_running_program_and_the_pool_stays_usable(wsman, engine_ready):
    if not engine_ready:
        pytest.skip("the engine does not run granted commands yet (stub session)")
    with RunspacePool(wsman, configuration_name=CONFIGURATION) as pool:
        ps = PowerShell(pool)
        ps.add_cmdlet("/usr/bin/sleep").add_argument("30")
        start = time.monotonic()
        ps.begin_invoke()
        time.sleep(1)
        ps.stop()
        assert ps.state == PSInvocationState.STOPPED
        ps2 = PowerShell(pool)
        ps2.add_cmdlet("Get-Date")
        ps2.invoke()
        assert not ps2.had_errors
        assert time.monotonic() - start < 20

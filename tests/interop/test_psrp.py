"""pypsrp 0.9.1 against the real `keyhole serve` over PSRP (marker `psrp`): execute_ps,
structured pipelines, add_script, objects and their properties, command metadata, session limits,
refusals that look like a wrong password, stop, large output, and what evil-jea tries."""
import json
import os
import re
import subprocess
import tempfile
import time

import pytest
from pypsrp.client import Client
from pypsrp.complex_objects import PSInvocationState, RunspacePoolState
from pypsrp.exceptions import AuthenticationError, WinRMError, WSManFaultError
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan

from conftest import BRIEF_IDLE_SECONDS, SEQ_COUNT, processes_matching, psrp1_python, wait_until

pytestmark = pytest.mark.psrp

ENDPOINT = "Helpdesk"


def make_wsman(server, user="alice", password=None):
    if password is None:
        password = server.password(user)
    return WSMan("127.0.0.1", port=server.https_port, username=user, password=password, ssl=True,
                 cert_validation=False, auth="basic")


def make_client(server, user="alice", password=None):
    if password is None:
        password = server.password(user)
    return Client("127.0.0.1", port=server.https_port, username=user, password=password, ssl=True,
                  cert_validation=False, auth="basic")


@pytest.fixture
def wsman(server):
    return make_wsman(server)


@pytest.fixture
def pool(wsman):
    with RunspacePool(wsman, configuration_name=ENDPOINT) as p:
        yield p


def props(obj):
    d = {}
    d.update(getattr(obj, "adapted_properties", {}) or {})
    d.update(getattr(obj, "extended_properties", {}) or {})
    return d


def error_text(streams_error):
    return "\n".join(
        "%s | %s | %s" % (e, getattr(e, "fq_error", ""), getattr(e, "message", "")) for e in streams_error)


# --- Client.execute_ps ----------------------------------------------------------------------------

def test_execute_ps_runs_a_granted_line(server):
    out, streams, had_errors = make_client(server).execute_ps("Get-Uptime", configuration_name=ENDPOINT)
    assert not had_errors, error_text(streams.error)
    assert re.search(r"Days\s*:\s*\d+|\d+:\d\d:\d\d", out), out


def test_execute_ps_refuses_invoke_expression(server):
    out, streams, had_errors = make_client(server).execute_ps("Invoke-Expression id", configuration_name=ENDPOINT)
    assert had_errors
    assert out.strip() == ""
    text = error_text(streams.error)
    assert re.search(r"Invoke-Expression.*not recognized|CommandNotFound", text, re.I | re.S), text


def test_execute_ps_refuses_a_variable(server):
    out, streams, had_errors = make_client(server).execute_ps("$env:PATH", configuration_name=ENDPOINT)
    assert had_errors
    assert out.strip() == ""
    assert re.search(r"variable", error_text(streams.error), re.I)


# --- structured pipelines -------------------------------------------------------------------------

def test_restart_service_outside_the_set_is_a_validation_error(pool):
    ps = PowerShell(pool).add_cmdlet("Restart-Service").add_parameter("Name", "sshd")
    out = ps.invoke()
    assert ps.had_errors
    assert out == []
    text = error_text(ps.streams.error)
    assert re.search(r"ValidateSet|does not belong to the set|ParameterArgumentValidationError", text, re.I), text
    assert "sshd" in text


def test_invoke_expression_as_a_structured_command_is_refused(pool):
    ps = PowerShell(pool).add_cmdlet("Invoke-Expression").add_parameter("Command", "Get-Uptime")
    out = ps.invoke()
    assert ps.had_errors
    assert out == []


def test_add_script_in_the_language_runs_and_outside_it_is_refused(pool):
    ps = PowerShell(pool).add_script("Get-Process -Id %d" % os.getpid())
    out = ps.invoke()
    assert not ps.had_errors, error_text(ps.streams.error)
    assert len(out) == 1
    ps = PowerShell(pool).add_script("$x = Get-Uptime; $x")
    out = ps.invoke()
    assert ps.had_errors
    assert out == []


def test_get_process_objects_carry_their_properties(pool):
    pid = os.getpid()
    ps = PowerShell(pool).add_cmdlet("Get-Process").add_parameter("Id", pid)
    out = ps.invoke()
    assert not ps.had_errors, error_text(ps.streams.error)
    assert len(out) == 1
    p = props(out[0])
    assert int(p["Id"]) == pid, p
    assert "python" in str(p["ProcessName"]), p
    assert any("Process" in t for t in (getattr(out[0], "types", None) or [])), getattr(out[0], "types", None)


def test_get_service_objects_carry_name_and_status(pool):
    ps = PowerShell(pool).add_cmdlet("Get-Service")
    out = ps.invoke()
    if os.path.isdir("/run/systemd/system"):
        assert not ps.had_errors, error_text(ps.streams.error)
        assert out
        for o in out:
            p = props(o)
            assert p.get("Name"), p
            assert "Status" in p, p
    else:
        # No systemd here: a clear error record, not a crash or an empty success.
        assert ps.had_errors
        assert error_text(ps.streams.error).strip()


def test_command_metadata_lists_only_granted_commands(pool):
    names = {m.name.lower() for m in pool.get_command_metadata("*")}
    granted = {
        "get-service", "restart-service", "start-service", "get-journal", "get-process", "get-uptime",
        "get-volume", "get-nettcpconnection", "select-object", "sort-object", "where-object",
        "format-table", "measure-object", "get-diskusage", "get-numbers",
    }
    always = {"get-command", "get-help", "get-formatdata", "out-default", "exit-pssession", "clear-host",
              # the aliases a restricted session has on Windows too
              "clear", "cls", "exsn", "gcm", "measure", "select"}
    external = {"uptime", "sleep", "/usr/bin/uptime", "/usr/bin/sleep"}
    assert granted <= names, sorted(granted - names)
    assert names & external, "neither uptime nor sleep listed: %r" % sorted(names)
    for never in ("invoke-expression", "get-content", "stop-service", "stop-process", "import-module",
                  "invoke-command", "new-object", "start-process", "add-type", "get-date"):
        assert never not in names
    assert names <= granted | always | external, sorted(names - granted - always - external)


def test_two_pipelines_in_one_pool(pool):
    first = PowerShell(pool).add_cmdlet("Get-Uptime")
    second = PowerShell(pool).add_cmdlet("Get-Process").add_parameter("Id", os.getpid())
    first.begin_invoke()
    second.begin_invoke()
    out1 = first.end_invoke()
    out2 = second.end_invoke()
    assert not first.had_errors and not second.had_errors
    assert len(out1) == 1 and len(out2) == 1
    # And again, one after the other, in the same pool.
    again = PowerShell(pool).add_cmdlet("Get-Uptime")
    again.invoke()
    assert not again.had_errors


# --- Windows objects: DateTime, String, selected objects (issue 11 item 3) ------------------------

OBJECTS = "Objects"  # conftest: Get-Date, Write-Output and the object cmdlets, for helpdesk


@pytest.fixture
def objects_pool(wsman):
    with RunspacePool(wsman, configuration_name=OBJECTS) as p:
        yield p


def test_get_date_select_year_is_the_year_as_a_note_property(objects_pool):
    before = time.localtime().tm_year
    ps = PowerShell(objects_pool).add_cmdlet("Get-Date").add_cmdlet("Select-Object").add_parameter("Property", "Year")
    out = ps.invoke()
    after = time.localtime().tm_year
    assert not ps.had_errors, error_text(ps.streams.error)
    assert len(out) == 1, out
    o = out[0]
    # Windows: a Selected.* object's properties are note properties, serialized in <MS>, so
    # pypsrp puts them in extended_properties (and nothing in adapted_properties).
    assert o.types[:3] == ["Selected.System.DateTime", "System.Management.Automation.PSCustomObject",
                           "System.Object"], o.types
    assert o.extended_properties["Year"] in (before, after), o.extended_properties
    assert list(o.extended_properties) == ["Year"], o.extended_properties
    assert not o.adapted_properties, o.adapted_properties


def test_get_date_select_year_through_execute_ps(server):
    out, streams, had_errors = make_client(server).execute_ps(
        "Get-Date -Date 2024-02-29T13:14:15 | Select-Object -Property Year", configuration_name=OBJECTS)
    assert not had_errors, error_text(streams.error)
    assert re.search(r"Year\s*\n\s*-+\s*\n\s*2024\b", out), out


def test_datetime_properties_arrive_as_dotnet_names_them(objects_pool):
    ps = PowerShell(objects_pool).add_script(
        "Get-Date -Date 2024-02-29T13:14:15 | "
        "Select-Object Year,Month,Day,Hour,Minute,Second,Millisecond,DayOfWeek,DayOfYear,Ticks,Kind")
    out = ps.invoke()
    assert not ps.had_errors, error_text(ps.streams.error)
    p = out[0].extended_properties
    assert [p[k] for k in ("Year", "Month", "Day", "Hour", "Minute", "Second", "Millisecond", "DayOfYear")] \
        == [2024, 2, 29, 13, 14, 15, 0, 60], p
    assert p["Ticks"] == 638448092550000000, p  # [datetime]'2024-02-29T13:14:15' | % Ticks
    assert str(p["DayOfWeek"]) == "Thursday", p
    assert "System.DayOfWeek" in p["DayOfWeek"].types, p["DayOfWeek"].types
    assert str(p["Kind"]) == "Local", p


def test_string_length_where_object_returns_bb(objects_pool):
    ps = PowerShell(objects_pool).add_script("Write-Output a,bb | Where-Object Length -gt 1")
    out = ps.invoke()
    assert not ps.had_errors, error_text(ps.streams.error)
    assert out == ["bb"], out
    # The same as a structured pipeline (what PowerShell's own client sends).
    ps = (PowerShell(objects_pool)
          .add_cmdlet("Write-Output").add_parameter("InputObject", ["a", "bb", "ccc"])
          .add_cmdlet("Where-Object").add_parameter("Property", "Length").add_parameter("Value", 2)
          .add_parameter("GE"))
    out = ps.invoke()
    assert not ps.had_errors, error_text(ps.streams.error)
    assert out == ["bb", "ccc"], out


def test_selected_process_properties_are_extended_not_adapted(pool):
    pid = os.getpid()
    ps = (PowerShell(pool).add_cmdlet("Get-Process").add_parameter("Id", pid)
          .add_cmdlet("Select-Object").add_parameter("Property", ["Id", "ProcessName"]))
    out = ps.invoke()
    assert not ps.had_errors, error_text(ps.streams.error)
    o = out[0]
    assert o.types[0] == "Selected.System.Diagnostics.Process", o.types
    assert o.extended_properties["Id"] == pid, o.extended_properties
    assert "python" in o.extended_properties["ProcessName"], o.extended_properties
    assert not o.adapted_properties, o.adapted_properties
    # The process object itself stays a .NET object: adapted properties.
    ps = PowerShell(pool).add_cmdlet("Get-Process").add_parameter("Id", pid)
    full = ps.invoke()[0]
    assert full.adapted_properties["Id"] == pid and not full.extended_properties


# --- limits and gates -----------------------------------------------------------------------------

def test_a_fourth_pool_for_the_same_user_is_refused(server):
    pools = []
    try:
        for _ in range(3):
            p = RunspacePool(make_wsman(server, user="carol"), configuration_name=ENDPOINT)
            p.open()
            pools.append(p)
        fourth = RunspacePool(make_wsman(server, user="carol"), configuration_name=ENDPOINT)
        with pytest.raises(WinRMError):
            fourth.open()
        assert fourth.state != RunspacePoolState.OPENED
        # Closing one makes room again.
        pools.pop().close()
        again = RunspacePool(make_wsman(server, user="carol"), configuration_name=ENDPOINT)
        again.open()
        pools.append(again)
    finally:
        for p in pools:
            try:
                p.close()
            except WinRMError:
                pass


def _fingerprint(resp):
    return (resp.status_code,
            {k.lower(): v for k, v in resp.headers.items() if k.lower() != "date"},
            resp.content)


def test_an_endpoint_without_a_role_is_refused_like_a_wrong_password(server, http_log):
    seen = {}
    for label, user, password, endpoint in [
        ("wrong password", "alice", "wrong-" + server.password("alice"), ENDPOINT),
        ("no role in Vendor", "alice", None, "Vendor"),
        ("no such endpoint", "alice", None, "NoSuchEndpoint"),
        ("no rule", "nobody-rule", None, ENDPOINT),
    ]:
        del http_log[:]
        pool = RunspacePool(make_wsman(server, user=user, password=password), configuration_name=endpoint)
        with pytest.raises(WinRMError) as exc:
            pool.open()
        seen[label] = (type(exc.value), _fingerprint(http_log[-1][1]))
    ref_type, ref = seen["wrong password"]
    assert ref_type is AuthenticationError
    assert ref[0] == 401
    for label, (t, fp) in seen.items():
        assert t is ref_type, "%s raised %s, a wrong password %s" % (label, t, ref_type)
        assert fp == ref, "%s answered differently from a wrong password" % label


def test_vendor_user_reaches_the_vendor_endpoint_only(server):
    with RunspacePool(make_wsman(server, user="victor"), configuration_name="Vendor") as pool:
        ps = PowerShell(pool).add_cmdlet("Get-Process")
        ps.invoke()
        assert ps.had_errors, "Get-Process is not granted to the vendor"
        names = {m.name.lower() for m in pool.get_command_metadata("*")}
        assert "get-osrelease" in names and "restart-service" not in names


# --- stop and large output ------------------------------------------------------------------------

def test_stop_kills_the_running_program(pool):
    argv = ["sleep", "301"]
    assert not processes_matching(argv)
    ps = PowerShell(pool).add_cmdlet("/usr/bin/sleep").add_argument("301")
    ps.begin_invoke()
    assert wait_until(lambda: processes_matching(argv), 15), "sleep 301 never started"
    t0 = time.monotonic()
    ps.stop()
    assert ps.state == PSInvocationState.STOPPED
    assert wait_until(lambda: not processes_matching(argv), 10), processes_matching(argv)
    assert time.monotonic() - t0 < 10
    # The pool stays usable.
    ps2 = PowerShell(pool).add_cmdlet("Get-Uptime")
    ps2.invoke()
    assert not ps2.had_errors


def test_large_output_across_many_fragments_arrives_whole(pool):
    ps = PowerShell(pool).add_cmdlet("Get-Numbers")
    out = ps.invoke()
    assert not ps.had_errors, error_text(ps.streams.error)
    assert len(out) == SEQ_COUNT
    assert [str(o) for o in out[:3]] == ["1", "2", "3"]
    assert str(out[-1]) == str(SEQ_COUNT)
    assert [str(o) for o in out] == [str(i) for i in range(1, SEQ_COUNT + 1)]


# --- what evil-jea tries (its "call", "function" and "rev_shell" bypasses, raw and structured) ---

EVIL_JEA = [
    ("script", "&{ id }"),                      # call_bypass, raw
    ("script", "function gl {id}; gl"),         # function_bypass, raw
    ("script", "powershell -e " + "JABjAD0AMQA="),  # rev_shell's payload shape, raw
    ("cmdlet", "&{"),                           # call_bypass, structured: the command name is "&{"
    ("cmdlet", "function"),                     # function_bypass, structured
]


@pytest.mark.parametrize("kind,text", EVIL_JEA, ids=["%s:%s" % k for k in EVIL_JEA])
def test_evil_jea_bypasses_are_refused_with_an_error_record(pool, kind, text):
    ps = PowerShell(pool)
    if kind == "script":
        ps.add_script(text)
    else:
        ps.add_cmdlet(text).add_argument("id").add_argument("}")
    out = ps.invoke()
    assert ps.had_errors, "refused silently: %r" % out
    assert out == []
    assert ps.streams.error, "no error record"


# --- issue 11: what real clients expect ----------------------------------------------------------

def test_a_terminating_error_arrives_once(pool):
    """Windows sends a terminating error once, inside the Failed PIPELINE_STATE; pypsrp appends
    the state's record to streams.error, so a second ERROR_RECORD would show it twice."""
    ps = PowerShell(pool)
    ps.add_cmdlet("Get-Process").add_parameter("Id", 999999999).add_parameter("ErrorAction", "Stop")
    ps.invoke()
    assert ps.state == PSInvocationState.FAILED, ps.state
    assert ps.had_errors
    assert len(ps.streams.error) == 1, error_text(ps.streams.error)
    assert "999999999" in str(ps.streams.error[0])
    # The same line as script text.
    ps = PowerShell(pool)
    ps.add_script("Get-Process -Id 999999999 -ErrorAction Stop")
    ps.invoke()
    assert ps.state == PSInvocationState.FAILED, ps.state
    assert len(ps.streams.error) == 1, error_text(ps.streams.error)
    # A non-terminating error is a record of its own, and the pipeline completes.
    ps = PowerShell(pool)
    ps.add_script("Get-Process -Id 999999999")
    ps.invoke()
    assert ps.state == PSInvocationState.COMPLETED, ps.state
    assert len(ps.streams.error) == 1, error_text(ps.streams.error)


def test_psrp_1_0_closes_its_pool_at_once_with_a_receive_outstanding(server):
    """The psrp 1.0 API keeps a pool-level Receive open; closing the pool deletes the shell and
    waits for that Receive. keyhole answers it at once with ERROR_OPERATION_ABORTED (995), as
    Windows does, so the close takes well under the OperationTimeout."""
    timeout = 20
    p = subprocess.run(
        [psrp1_python(), os.path.join(os.path.dirname(__file__), "psrp1_pool_close.py"),
         server.url("https"), "alice", server.password("alice"), ENDPOINT, str(timeout)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["errors"] == [] and len(r["output"]) == 1, r
    deletes = [q for q in r["requests"] if q["action"] == "Delete"]
    assert len(deletes) == 1, r["requests"]
    delete = deletes[0]
    # A pool-level Receive (no CommandId) was waiting when the Delete went out ...
    waiting = [q for q in r["requests"] if q["action"] == "Receive" and not q["command"]
               and q["start"] < delete["start"] <= q["end"]]
    assert waiting, r["requests"]
    # ... was answered with 995 right after it, and the close took well under the timeout.
    assert waiting[0]["fault"] == "995", waiting[0]
    assert waiting[0]["end"] - delete["start"] < timeout / 4, waiting[0]
    assert r["close_seconds"] < timeout / 4, r["close_seconds"]


def test_copy_and_fetch_say_their_scripts_cannot_run_here(server, tmp_path):
    src = tmp_path / "f.txt"
    src.write_text("x")
    client = make_client(server)
    with pytest.raises(WinRMError) as e:
        client.copy(str(src), "/tmp/keyhole-copy-target", configuration_name=ENDPOINT)
    msg = str(e.value)
    assert "script text with arguments" in msg and "NoLanguage" in msg and "copy and fetch" in msg, msg
    with pytest.raises(WinRMError) as e:
        client.fetch("/etc/hostname", str(tmp_path / "out"), configuration_name=ENDPOINT)
    assert "script text with arguments" in str(e.value), str(e.value)


def test_execute_ps_with_environment_says_environments_are_not_supported(server):
    out, streams, had_errors = make_client(server).execute_ps(
        "Get-Uptime", configuration_name=ENDPOINT, environment={"FOO": "bar"})
    assert had_errors
    assert out.strip() == ""
    text = error_text(streams.error)
    assert len(streams.error) == 1, text
    assert "environment variables" in text and "FOO" in text and "not support" in text, text
    assert "New-Item" not in text, text


def test_securestring_key_exchange_says_it_is_not_supported(pool):
    with pytest.raises(WSManFaultError) as e:
        pool.exchange_keys()
    assert "SecureString is not supported" in str(e.value), str(e.value)
    assert "PUBLIC_KEY" in str(e.value), str(e.value)


def test_an_expired_pool_says_it_expired(server, wsman):
    pool = RunspacePool(wsman, configuration_name="Brief")
    pool.open()
    try:
        time.sleep(BRIEF_IDLE_SECONDS + 2.5)
        ps = PowerShell(pool)
        ps.add_cmdlet("Get-Uptime")
        with pytest.raises(WSManFaultError) as e:
            ps.invoke()
        msg = str(e.value)
        assert e.value.code == 2150858843, msg
        assert "idle timeout" in msg and "closed by the server" in msg, msg
    finally:
        try:
            pool.close()
        except WSManFaultError:
            pass

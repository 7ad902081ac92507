"""Drive keyhole's PsrpShell with psrpcore's client state machine (modelled on PowerShell's own
client) through the line bridge in tests/psrp_stdio.rs: open a pool, run pipelines with
arguments, input, every record kind, a refusal, a terminating error (once), a script, a stop, and
GET_COMMAND_METADATA.

Usage (needs `pip install psrpcore`):
  cargo test --test psrp_stdio --no-run && python3 tests/interop/check_psrpcore_client.py
"""
import base64
import os
import subprocess
import sys
import uuid

import psrpcore
from psrpcore.types import PSInvocationState, RunspacePoolState

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


class Bridge:
    def __init__(self):
        env = dict(os.environ, KEYHOLE_PSRP_STDIO="1")
        self.p = subprocess.Popen(
            ["cargo", "test", "-q", "--test", "psrp_stdio", "--", "--ignored", "--nocapture", "--test-threads=1"],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def call(self, *words):
        self.p.stdin.write(" ".join(words) + "\n")
        self.p.stdin.flush()
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError("bridge exited")
            if line.startswith("@@"):
                ok, _, rest = line[2:].rstrip("\n").partition(" ")
                if ok != "OK":
                    raise RuntimeError(rest)
                return rest

    def quit(self):
        self.p.stdin.write("QUIT\n")
        self.p.stdin.close()
        self.p.wait(timeout=30)


def b64(b):
    return base64.b64encode(b).decode()


def flush(bridge, obj):
    """Send everything the client object has queued."""
    while True:
        payload = obj.data_to_send()
        if payload is None:
            return
        cid = str(payload.pipeline_id).upper() if payload.pipeline_id else "-"
        stream = "pr" if payload.stream_type == psrpcore.StreamType.prompt_response else "stdin"
        bridge.call("SEND", cid, stream, b64(payload.data))


def receive(bridge, pool, cid, until):
    events = []
    for _ in range(200):
        data, _, done = bridge.call("RECV", cid).partition(" ")
        pool.receive_data(psrpcore.PSRPPayload(base64.b64decode(data), psrpcore.StreamType.default, None))
        while True:
            ev = pool.next_event()
            if ev is None:
                break
            events.append(ev)
        if until(events):
            return events
    raise AssertionError("timed out; events: %r" % events)


def run(bridge, pool, ps):
    ps.start()
    payload = pool.data_to_send()
    cid = str(ps.pipeline_id).upper()
    assert bridge.call("COMMAND", cid, b64(payload.data)) == cid
    flush(bridge, pool)
    return cid


def main():
    bridge = Bridge()
    pool = psrpcore.ClientRunspacePool()
    pool.open()
    bridge.call("CREATE", b64(pool.data_to_send().data))
    evs = receive(bridge, pool, "-", lambda e: pool.state == RunspacePoolState.Opened)
    kinds = [type(e).__name__ for e in evs]
    assert kinds == ["SessionCapabilityEvent", "ApplicationPrivateDataEvent", "RunspacePoolStateEvent"], kinds

    # arguments, switch, positional
    ps = psrpcore.ClientPowerShell(pool)
    ps.add_command("Get-Service").add_parameter("Name", "sshd").add_parameter("Force").add_argument(7)
    cid = run(bridge, pool, ps)
    evs = receive(bridge, pool, cid, lambda e: ps.state != PSInvocationState.Running)
    out = [e.data for e in evs if isinstance(e, psrpcore.PipelineOutputEvent)]
    assert out == ["sshd", True, 7], out
    assert ps.state == PSInvocationState.Completed

    # every record kind
    ps = psrpcore.ClientPowerShell(pool)
    ps.add_command("Write-All")
    cid = run(bridge, pool, ps)
    evs = receive(bridge, pool, cid, lambda e: ps.state != PSInvocationState.Running)
    kinds = [type(e).__name__ for e in evs]
    assert kinds == [
        "PipelineOutputEvent", "ErrorRecordEvent", "WarningRecordEvent", "VerboseRecordEvent",
        "DebugRecordEvent", "InformationRecordEvent", "PipelineStateEvent",
    ], kinds
    obj = evs[0].data
    assert obj.Name == "foo" and obj.Value == 1, obj
    err = evs[1].record
    assert str(err) == "boom" and err.FullyQualifiedErrorId == "Boom,Write-All", err
    assert err.CategoryInfo.Category == psrpcore.types.ErrorCategory.InvalidOperation, err.CategoryInfo.Category
    assert str(err.Exception.Message) == "boom", err.Exception
    assert evs[2].record.Message == "warn"
    assert evs[5].record.MessageData == "info"

    # input
    ps = psrpcore.ClientPowerShell(pool, no_input=False)
    ps.add_command("Write-Output")
    cid = run(bridge, pool, ps)
    ps.send("a")
    ps.send(2)
    ps.send_eof()
    flush(bridge, pool)
    evs = receive(bridge, pool, cid, lambda e: ps.state != PSInvocationState.Running)
    assert [e.data for e in evs if isinstance(e, psrpcore.PipelineOutputEvent)] == ["a", 2]

    # refusal => Failed with the error record
    ps = psrpcore.ClientPowerShell(pool)
    ps.add_command("Refuse-Me")
    cid = run(bridge, pool, ps)
    evs = receive(bridge, pool, cid, lambda e: ps.state != PSInvocationState.Running)
    assert ps.state == PSInvocationState.Failed, ps.state
    st = evs[-1]
    assert st.reason.FullyQualifiedErrorId == "CommandNotFoundException", st.reason

    # a terminating error reaches the client once: inside the Failed state, no ErrorRecordEvent
    ps = psrpcore.ClientPowerShell(pool)
    ps.add_command("Fail-Hard")
    cid = run(bridge, pool, ps)
    evs = receive(bridge, pool, cid, lambda e: ps.state != PSInvocationState.Running)
    assert ps.state == PSInvocationState.Failed, ps.state
    kinds = [type(e).__name__ for e in evs]
    assert kinds == ["PipelineStateEvent"], kinds
    assert evs[-1].reason.FullyQualifiedErrorId == "HardFailure,Fail-Hard", evs[-1].reason

    # script text
    ps = psrpcore.ClientPowerShell(pool)
    ps.add_script("Get-Date")
    cid = run(bridge, pool, ps)
    evs = receive(bridge, pool, cid, lambda e: ps.state != PSInvocationState.Running)
    assert [e.data for e in evs if isinstance(e, psrpcore.PipelineOutputEvent)] == ["Get-Date"]

    # stop
    ps = psrpcore.ClientPowerShell(pool)
    ps.add_command("Wait-Stop")
    cid = run(bridge, pool, ps)
    bridge.call("SIGNAL", cid, "powershell/signal/crtl_c")
    evs = receive(bridge, pool, cid, lambda e: ps.state != PSInvocationState.Running)
    assert ps.state == PSInvocationState.Stopped, ps.state

    # command metadata
    gcm = psrpcore.ClientGetCommandMetadata(pool, "get-*")
    cid = run(bridge, pool, gcm)
    evs = receive(bridge, pool, cid, lambda e: gcm.state != PSInvocationState.Running)
    out = [e.data for e in evs if isinstance(e, psrpcore.PipelineOutputEvent)]
    assert out[0].Count == 1, out[0]
    assert out[1].Name == "Get-Service", out[1]

    bridge.quit()
    print("psrpcore client: all checks passed")


if __name__ == "__main__":
    sys.exit(main())

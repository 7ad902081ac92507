"""The psrp 1.0 API (pypsrp 1.0's `psrp` package on psrpcore, in its own venv: it cannot sit beside
pypsrp 0.9.1) against a live keyhole: open a runspace pool, run a pipeline, close the pool.

The client keeps a pool-level Receive open for the pool's life; closing the pool sends Delete and
then waits for that Receive to end. Every WS-Man request is recorded (action, whether a Receive
names a command, start and end on the monotonic clock, and the fault code if any), and the result
is printed as one JSON object for tests/interop/test_psrp.py to check.

usage: psrp1_pool_close.py URL USER PASSWORD CONFIGURATION OPERATION_TIMEOUT_SECONDS
"""
import json
import re
import sys
import threading
import time

import psrp
from psrp._io import wsman as wsman_io

url, user, password, configuration, op_timeout = sys.argv[1:6]
op_timeout = int(op_timeout)

requests = []
lock = threading.Lock()
real_post = wsman_io.SyncWSManHTTP.post


def recording_post(self, data, *args, **kwargs):
    text = data.decode("utf-8", "replace")
    m = re.search(r"<[^>]*:Action[^>]*>([^<]+)<", text)
    entry = {
        "action": (m.group(1).rsplit("/", 1)[-1] if m else "?"),
        "command": "CommandId=" in text,
        "start": time.monotonic(),
    }
    try:
        resp = real_post(self, data, *args, **kwargs)
        fault = re.search(rb'WSManFault[^>]*Code="(\d+)"', resp)
        entry["fault"] = fault.group(1).decode() if fault else None
        return resp
    finally:
        entry["end"] = time.monotonic()
        with lock:
            requests.append(entry)


wsman_io.SyncWSManHTTP.post = recording_post

conn = psrp.WSManInfo(
    url,
    auth="basic",
    username=user,
    password=password,
    verify=False,
    configuration_name=configuration,
    operation_timeout=op_timeout,
    read_timeout=op_timeout + 30,
)
out = {}
with psrp.SyncRunspacePool(conn) as rp:
    ps = psrp.SyncPowerShell(rp)
    ps.add_command("Get-Uptime")
    result = ps.invoke()
    out["output"] = [str(o) for o in result]
    out["errors"] = [str(e) for e in ps.streams.error]
    # Let the pool-level Receive settle into its long poll before closing.
    time.sleep(0.5)
    close_start = time.monotonic()
out["close_seconds"] = time.monotonic() - close_start
out["close_start"] = close_start
out["requests"] = sorted(requests, key=lambda r: r["start"])
print(json.dumps(out))

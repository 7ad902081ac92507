"""ansible-core (pinned in requirements.txt) against the real `keyhole serve`: `ansible -m raw` over
`ansible_connection=psrp` and over `ansible_connection=winrm` (Basic, HTTPS, certificate
validation off), a granted line, a refused line and a failing line on each (issue 11 item 1).

Ansible's psrp connection sends the raw command as script text `LINE` + "\\n" + `exit $LASTEXITCODE`;
keyhole recognises exactly that shape, runs LINE as one restricted line and hands its exit code to
Ansible's host (SetShouldExit), where the connection reads it. The winrm connection sends
`PowerShell ... -EncodedCommand`, which WinRS decodes.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ANSIBLE = os.path.join(os.path.dirname(sys.executable), "ansible")

INVENTORY = """[keyhole_psrp]
kh-psrp ansible_host=127.0.0.1
[keyhole_psrp:vars]
ansible_connection=psrp
ansible_port={port}
ansible_user=alice
ansible_password={password}
ansible_psrp_protocol=https
ansible_psrp_auth=basic
ansible_psrp_cert_validation=ignore
ansible_psrp_configuration_name=Helpdesk

[keyhole_winrm]
kh-winrm ansible_host=127.0.0.1
[keyhole_winrm:vars]
ansible_connection=winrm
ansible_port={port}
ansible_user=alice
ansible_password={password}
ansible_winrm_scheme=https
ansible_winrm_transport=basic
ansible_winrm_server_cert_validation=ignore
"""


@pytest.fixture(scope="module")
def inventory(server):
    path = server.dir / "ansible-inventory.ini"
    path.write_text(INVENTORY.format(port=server.https_port, password=server.password("alice")))
    os.chmod(path, 0o600)
    # An empty configuration of our own: no ansible.cfg of the machine or the user applies.
    (server.dir / "ansible.cfg").write_text("[defaults]\n")
    return path


def raw(server, inventory, host, line):
    """`ansible HOST -m raw -a LINE`: (ansible's exit code, the task result as JSON)."""
    tree = server.dir / "ansible-tree"
    result = tree / host
    if result.exists():
        result.unlink()
    env = dict(
        os.environ,
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        # The builtin tree callback writes each host's task result as JSON.
        ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.tree",
        ANSIBLE_CALLBACK_TREE_DIR=str(tree),
        ANSIBLE_DEPRECATION_WARNINGS="False",
        ANSIBLE_HOST_KEY_CHECKING="False",
        ANSIBLE_LOCAL_TEMP=str(server.dir / "ansible-tmp"),
        ANSIBLE_HOME=str(server.dir / "ansible-home"),
        ANSIBLE_CONFIG=str(server.dir / "ansible.cfg"),
    )
    p = subprocess.run(
        [ANSIBLE, host, "-i", str(inventory), "-m", "raw", "-a", line],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        timeout=180,
    )
    assert result.exists(), "ansible wrote no result for %s (%d):\n%s\n%s" % (host, p.returncode, p.stdout, p.stderr)
    return p.returncode, json.loads(result.read_text())


HOSTS = ["kh-psrp", "kh-winrm"]


@pytest.mark.parametrize("host", HOSTS)
def test_ansible_raw_granted_line_exits_0_with_its_output(server, inventory, host):
    code, res = raw(server, inventory, host, "Get-Process -Id %d | Select-Object -Property Id, ProcessName" % os.getpid())
    assert res["rc"] == 0, res
    assert code == 0, res
    assert "msg" not in res, res
    assert str(os.getpid()) in res["stdout"], res
    assert res["stderr"] == "", res


@pytest.mark.parametrize("host", HOSTS)
def test_ansible_raw_refused_line_exits_2_pointing_at_its_column(server, inventory, host):
    # Column 21 of the line the user typed (Stop-Process is not granted), never the wrapper.
    code, res = raw(server, inventory, host, "Get-Process -Id 1 | Stop-Process")
    assert res["rc"] == 2, res
    assert code != 0 and res.get("msg") == "non-zero return code", res
    assert "Stop-Process" in res["stderr"] and "not recognized" in res["stderr"], res
    assert "(at column 21)" in res["stderr"], res
    assert "exit" not in res["stderr"], res
    assert res["stdout"].strip() == "", res


@pytest.mark.parametrize("host", HOSTS)
def test_ansible_raw_failing_line_exits_1(server, inventory, host):
    code, res = raw(server, inventory, host, "Get-Process -Id 999999999")
    assert res["rc"] == 1, res
    assert code != 0 and res.get("msg") == "non-zero return code", res
    assert "Cannot find a process with the process identifier 999999999" in res["stderr"], res


def test_ansible_psrp_wrapper_lines_are_audited_as_the_user_typed_them(server, inventory):
    raw(server, inventory, "kh-psrp", "Get-Uptime")
    text = "\n".join(p.read_text(errors="replace") for p in server.transcripts.rglob("*") if p.is_file())
    assert "PS>Get-Uptime" in text
    assert "exit $LASTEXITCODE" not in text

"""Identify against the real `keyhole serve` (SPEC §1, issue 11 item 2): what `Test-WSMan` and
`winrm id -a:none` send without credentials gets WinRM's reduced reply (ProtocolVersion,
ProductVendor, a ProductVersion without operating-system details), with or without the header
`WSMANIDENTIFY: unauthenticated`; an authenticated Identify gets the full reply; anything else
without credentials is the generic 401. Driven with curl (as an administrator checks a host) and
with requests (the HTTP library of pywinrm and pypsrp)."""
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
import requests

# DSP0226 §11's Identify: an empty Header, no addressing headers.
IDENTIFY = (
    '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
    'xmlns:wsmid="http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd">'
    "<s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>"
)
NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "wsmid": "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd",
}
CT = "application/soap+xml;charset=UTF-8"


def identify_fields(body):
    root = ET.fromstring(body)
    r = root.find("s:Body/wsmid:IdentifyResponse", NS)
    assert r is not None, body
    return {c.tag.split("}", 1)[1]: (c.text or "") for c in r}, root


def curl(url, *extra):
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed (tests/run.sh installs it)")
    p = subprocess.run(
        ["curl", "-sS", "-k", "-o", "-", "-w", "\n%{http_code}", "-H", "Content-Type: " + CT,
         "--data-binary", IDENTIFY, *extra, url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30,
    )
    assert p.returncode == 0, p.stderr
    body, _, code = p.stdout.rpartition("\n")
    return int(code), body


@pytest.mark.parametrize("header", [[], ["-H", "WSMANIDENTIFY: unauthenticated"]], ids=["plain", "wsmanidentify"])
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_anonymous_identify_gets_the_reduced_reply(server, header, scheme):
    code, body = curl(server.url(scheme), *header)
    assert code == 200, body
    fields, root = identify_fields(body)
    assert fields == {
        "ProtocolVersion": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
        "ProductVendor": "keyhole",
        "ProductVersion": "OS: 0.0.0 SP: 0.0 Stack: 3.0",
    }, fields
    # WinRM's shape: an empty SOAP Header.
    assert len(root.find("s:Header", NS)) == 0, body
    assert "Linux" not in body


def test_authenticated_identify_gets_the_full_reply(server):
    r = requests.post(server.url(), data=IDENTIFY, headers={"Content-Type": CT},
                      auth=("alice", server.password("alice")), verify=False, timeout=30)
    assert r.status_code == 200, r.text
    fields, _ = identify_fields(r.text)
    assert fields["ProductVendor"] == "keyhole"
    assert re.match(r"OS: Linux SP: 0\.0 Stack: 3\.0 keyhole \d+\.\d+", fields["ProductVersion"]), fields


def test_anything_else_without_credentials_is_the_generic_401(server):
    reference = requests.post(server.url(), data=b"<a/>", headers={"Content-Type": CT}, verify=False, timeout=30)
    assert reference.status_code == 401
    with_action = IDENTIFY.replace(
        "<s:Header/>",
        '<s:Header><a:Action xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing">'
        "http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity/Identify</a:Action></s:Header>",
    )
    for body, extra in [
        (with_action, {}),
        (IDENTIFY.replace("<s:Header/>", "<s:Header/>" + " " * 8000), {}),
        (IDENTIFY, {"Content-Type": "text/xml"}),
    ]:
        headers = {"Content-Type": CT, "WSMANIDENTIFY": "unauthenticated"}
        headers.update(extra)
        r = requests.post(server.url(), data=body, headers=headers, verify=False, timeout=30)
        assert r.status_code == 401, (r.status_code, r.text[:300])
        assert r.content == reference.content
        assert r.headers.get("WWW-Authenticate") == reference.headers.get("WWW-Authenticate")
    # A wrong password is a wrong password, Identify or not.
    r = requests.post(server.url(), data=IDENTIFY, headers={"Content-Type": CT},
                      auth=("alice", "wrong"), verify=False, timeout=30)
    assert r.status_code == 401

"""The real client side of a Negotiate (NTLM or Kerberos) exchange, for tests/auth_basic.rs.

pyspnego (the library pypsrp and pywinrm authenticate with) makes the tokens, and pypsrp's own
WinRMEncryption frames encrypted bodies, so the Rust acceptor is checked against what the real
clients send. Line protocol on stdin/stdout, one base64 value per line:

  argv: USER PASSWORD PROTOCOL ("ntlm" | "negotiate" | "kerberos") SERVICE
        [CHANNEL_BINDING_APPLICATION_DATA_B64]
        USER "-" means no name and password: Kerberos from the default credential cache
        (KRB5CCNAME), found through KRB5_CONFIG.
  out:  first token
  in:   server token            out: next token, or "-" when there is none; "DONE" once complete
  in:   ENCRYPT <b64 plaintext>  out: <b64 body>            (pypsrp WinRMEncryption.wrap_message)
  in:   DECRYPT <b64 body>       out: <b64 plaintext>       (pypsrp WinRMEncryption.unwrap_message)
  in:   ERROR ...                the server refused: exit
"""
import base64
import sys

import spnego
from spnego.channel_bindings import GssChannelBindings
from pypsrp.encryption import WinRMEncryption


def out(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main():
    user, password, protocol, service = sys.argv[1:5]
    if user == "-":
        user = password = None
    bindings = None
    if len(sys.argv) > 5:
        bindings = GssChannelBindings(application_data=base64.b64decode(sys.argv[5]))
    ctx = spnego.client(
        user, password, hostname="localhost", service=service, protocol=protocol,
        channel_bindings=bindings,
        options=spnego.NegotiateOptions.use_ntlm if protocol == "ntlm" else 0,
    )
    wire_protocol = WinRMEncryption.KERBEROS if protocol == "kerberos" else WinRMEncryption.SPNEGO
    out(base64.b64encode(ctx.step()).decode())
    enc = None
    for line in sys.stdin:
        line = line.strip()
        if line.startswith("ERROR"):
            return
        if line.startswith("ENCRYPT "):
            _, body = enc.wrap_message(base64.b64decode(line[8:]))
            out(base64.b64encode(body).decode())
            continue
        if line.startswith("DECRYPT "):
            out(base64.b64encode(enc.unwrap_message(base64.b64decode(line[8:]), "Encrypted Boundary")).decode())
            continue
        token = ctx.step(base64.b64decode(line)) if line != "-" else None
        if ctx.complete:
            if token:
                out(base64.b64encode(token).decode())
            out("DONE")
            enc = WinRMEncryption(ctx, wire_protocol)
        else:
            out(base64.b64encode(token).decode() if token else "-")


if __name__ == "__main__":
    main()

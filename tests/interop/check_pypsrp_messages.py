"""Feed keyhole's server messages (written by `cargo test --test server
psrp_shell::pypsrp_deserializes_every_kind_of_server_message`, which runs this script on them;
`KEYHOLE_PSRP_DUMP=<dir>` keeps them in <dir>) to pypsrp's own message and CLIXML deserializers,
the way pypsrp's RunspacePool/PowerShell process them, and check what a pypsrp user would read.

Usage: python3 tests/interop/check_pypsrp_messages.py <dir>   (needs `pip install pypsrp`)
"""
import glob
import sys

from pypsrp.complex_objects import CommandMetadata, ObjectMeta
from pypsrp.messages import Message, MessageType
from pypsrp.serializer import Serializer


def main(d):
    ser = Serializer()
    msgs = []
    for path in sorted(glob.glob(d + "/*.bin")):
        with open(path, "rb") as f:
            msgs.append(Message.unpack(f.read(), ser))
    types = [m.message_type for m in msgs]
    assert types[:3] == [
        MessageType.SESSION_CAPABILITY,
        MessageType.APPLICATION_PRIVATE_DATA,
        MessageType.RUNSPACEPOOL_STATE,
    ], types
    assert msgs[0].data.protocol_version == "2.3"
    assert msgs[2].data.state == 2
    pvt = msgs[1].data.data["PSVersionTable"]
    assert pvt["PSRemotingProtocolVersion"] == "2.3", pvt

    outputs = [m.data.data for m in msgs if m.message_type == MessageType.PIPELINE_OUTPUT]
    assert outputs[0] == "line\r\nwith _x0041_ <xml> & stuff", repr(outputs[0])
    assert outputs[1] == 42 and outputs[2] == 1 << 40 and outputs[3] == 2.5 and outputs[4] is True
    assert outputs[5] is None
    custom = outputs[8]
    assert custom.extended_properties == {"Name": "foo", "Value": 1}, custom.extended_properties
    assert str(custom) == "@{Name=foo; Value=1}"
    svc = outputs[9]
    assert svc.adapted_properties["Name"] == "sshd"
    assert str(svc.adapted_properties["Status"]) == "Running"
    assert outputs[10] == ["a", 2], outputs[10]
    assert outputs[11] == {"k": "v"}, outputs[11]

    errs = [m.data for m in msgs if m.message_type == MessageType.ERROR_RECORD]
    assert errs[0].fq_error == "NoServiceFoundForGivenName,Get-Service"
    assert errs[0].category == 13
    assert str(errs[0]) == "Cannot find a service with name 'x'."
    assert str(errs[0].exception) .endswith("Cannot find a service with name 'x'."), str(errs[0].exception)
    for t, text in [
        (MessageType.WARNING_RECORD, "warn"),
        (MessageType.VERBOSE_RECORD, "verb"),
        (MessageType.DEBUG_RECORD, "dbg"),
    ]:
        rec = [m.data for m in msgs if m.message_type == t][0]
        assert rec.message == text, (t, rec.message)
    info = [m.data for m in msgs if m.message_type == MessageType.INFORMATION_RECORD][0]
    assert info.message_data == "info"

    states = [m.data for m in msgs if m.message_type == MessageType.PIPELINE_STATE]
    assert [s.state for s in states] == [4, 5, 4], [s.state for s in states]
    assert states[1].error_record.fq_error == "ScriptsNotAllowed"
    assert "no-language mode" in str(states[1].error_record)

    # GET_COMMAND_METADATA: pypsrp pops the count and re-reads each object as CommandMetadata
    meta_out = outputs[12:]
    assert meta_out[0].count == 2
    meta = ObjectMeta("Obj", object=CommandMetadata)
    cmds = [ser.deserialize(o._xml, meta) for o in meta_out[1:]]
    assert cmds[0].name == "Get-Service"
    assert str(cmds[0].command_type) == "Cmdlet"
    params = cmds[0].parameters
    assert params["Name"].parameter_type == "System.String[]", params["Name"].parameter_type
    assert params["Name"].aliases == ["ServiceName"]
    assert params["Force"].switch_parameter is True
    assert cmds[1].name == "uptime" and cmds[1].parameters is None

    avail = [m.data for m in msgs if m.message_type == MessageType.RUNSPACE_AVAILABILITY][0]
    assert avail.response is True and avail.ci == 1
    print("pypsrp accepted %d keyhole messages" % len(msgs))


if __name__ == "__main__":
    main(sys.argv[1])

//! A minimal WS-Man client of the benchmark's own: request envelopes written the way pywinrm
//! and pypsrp write them, a WinRS shell (Create/Command/Receive/Signal/Delete) and a PSRP
//! runspace pool (SESSION_CAPABILITY + INIT_RUNSPACEPOOL in creationXml, CREATE_PIPELINE,
//! Receive until PIPELINE_STATE, Delete). keyhole's sans-IO `psrp` module is the PSRP codec
//! (fragments, messages); keyhole's `wsman::xml` parses the replies.

use base64::Engine as _;
use bytes::Bytes;
use keyhole::psrp::fragment::{fragment_message, Fragment, Reassembler};
use keyhole::psrp::message::{guid_to_net_bytes, Destination, Message, MessageType};
use keyhole::wsman::envelope::*;
use keyhole::wsman::xml::{self, Element};

use crate::net::{excerpt, Conn, Res};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// WS-Man's "no output within OperationTimeout" fault: the client asks again.
const TIMED_OUT_CODE: &str = "2150858793";

fn new_guid() -> String {
    uuid::Uuid::new_v4().to_string().to_uppercase()
}

/// `wsmid:Identify` (no addressing headers, as Test-WSMan sends it).
pub fn identify() -> Bytes {
    Bytes::from_static(
        b"<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:wsmid=\"http://schemas.dmtf.org/wbem/wsman/identity/1/wsmanidentity.xsd\"><s:Header/><s:Body><wsmid:Identify/></s:Body></s:Envelope>",
    )
}

/// A request envelope as pywinrm/pypsrp write it.
pub fn envelope(
    action: &str,
    resource_uri: &str,
    shell_id: Option<&str>,
    options: &[(&str, &str)],
    body: &str,
) -> Bytes {
    let sel = shell_id
        .map(|s| format!("<wsman:SelectorSet><wsman:Selector Name=\"ShellId\">{s}</wsman:Selector></wsman:SelectorSet>"))
        .unwrap_or_default();
    let opts = if options.is_empty() {
        String::new()
    } else {
        let o: String = options
            .iter()
            .map(|(n, v)| format!("<wsman:Option Name=\"{n}\">{v}</wsman:Option>"))
            .collect();
        format!("<wsman:OptionSet s:mustUnderstand=\"true\">{o}</wsman:OptionSet>")
    };
    Bytes::from(format!(
        "<s:Envelope xmlns:rsp=\"{NS_SHELL}\" xmlns:s=\"{NS_SOAP}\" xmlns:wsa=\"{NS_ADDRESSING}\" xmlns:wsman=\"{NS_WSMAN}\" xmlns:p=\"{NS_POWERSHELL}\">\
         <s:Header><wsa:Action s:mustUnderstand=\"true\">{action}</wsa:Action>\
         <wsa:ReplyTo><wsa:Address s:mustUnderstand=\"true\">{ANONYMOUS}</wsa:Address></wsa:ReplyTo>\
         <wsman:MaxEnvelopeSize s:mustUnderstand=\"true\">153600</wsman:MaxEnvelopeSize>\
         <wsa:MessageID>uuid:{}</wsa:MessageID><wsman:OperationTimeout>PT20S</wsman:OperationTimeout>\
         <wsman:ResourceURI s:mustUnderstand=\"true\">{resource_uri}</wsman:ResourceURI>\
         <wsa:To>https://localhost/wsman</wsa:To>{sel}{opts}</s:Header><s:Body>{body}</s:Body></s:Envelope>",
        new_guid()
    ))
}

fn parse(r: &crate::net::Reply) -> Res<Element> {
    xml::parse(&r.body).map_err(|e| format!("reply is not XML ({e}): {}", excerpt(&r.text())))
}

/// The WSManFault code of a fault reply.
fn fault_code(r: &crate::net::Reply) -> Option<String> {
    let t = xml::parse(&r.body).ok()?;
    t.find(NS_WSMANFAULT, "WSManFault")
        .and_then(|f| f.attr("Code"))
        .map(str::to_string)
}

fn shell_id_of(t: &Element) -> Res<String> {
    t.find(NS_WSMAN, "Selector")
        .map(|s| s.text.trim().to_string())
        .ok_or_else(|| "CreateResponse without a ShellId selector".to_string())
}

/// One Receive; None when the server answered the OperationTimeout fault.
async fn receive_once(conn: &mut Conn, uri: &str, shell: &str, body: &str) -> Res<Option<Element>> {
    let r = conn
        .post(envelope(ACTION_RECEIVE, uri, Some(shell), &[], body))
        .await?;
    if r.status == 200 {
        return parse(&r).map(Some);
    }
    if fault_code(&r).as_deref() == Some(TIMED_OUT_CODE) {
        return Ok(None);
    }
    Err(format!(
        "Receive: HTTP {}: {}",
        r.status,
        excerpt(&r.text())
    ))
}

/// Give up on a command after this many Receives.
const MAX_RECEIVES: usize = 1000;

// ---------------------------------------------------------------------------------------------
// WinRS

/// An open WinRS shell (on some connection: the client may change connections between calls).
pub struct WinrsShell {
    pub id: String,
}

impl WinrsShell {
    /// Create, as pywinrm's `open_shell` sends it.
    pub async fn create(conn: &mut Conn) -> Res<WinrsShell> {
        let body = "<rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>";
        let r = conn
            .post_ok(envelope(
                ACTION_CREATE,
                URI_CMD,
                None,
                &[("WINRS_NOPROFILE", "FALSE"), ("WINRS_CODEPAGE", "65001")],
                body,
            ))
            .await
            .map_err(|e| format!("WinRS Create: {e}"))?;
        Ok(WinrsShell {
            id: shell_id_of(&parse(&r)?)?,
        })
    }

    /// Command + Receive until Done; returns (stdout bytes, exit code). Exit code 0 is
    /// required (anything else is an error: the benchmark's commands all succeed).
    pub async fn run(&self, conn: &mut Conn, line: &str) -> Res<(usize, String)> {
        let body = format!(
            "<rsp:CommandLine><rsp:Command>{}</rsp:Command></rsp:CommandLine>",
            xml::esc(line)
        );
        let r = conn
            .post_ok(envelope(
                ACTION_COMMAND,
                URI_CMD,
                Some(&self.id),
                &[
                    ("WINRS_CONSOLEMODE_STDIN", "TRUE"),
                    ("WINRS_SKIP_CMD_SHELL", "FALSE"),
                ],
                &body,
            ))
            .await
            .map_err(|e| format!("WinRS Command: {e}"))?;
        let cid = parse(&r)?
            .find(NS_SHELL, "CommandId")
            .map(|c| c.text.trim().to_string())
            .ok_or("CommandResponse without CommandId")?;
        let recv = format!(
            "<rsp:Receive><rsp:DesiredStream CommandId=\"{cid}\">stdout stderr</rsp:DesiredStream></rsp:Receive>"
        );
        let mut out = 0usize;
        let mut err = Vec::new();
        for _ in 0..MAX_RECEIVES {
            let Some(t) = receive_once(conn, URI_CMD, &self.id, &recv).await? else {
                continue;
            };
            let resp = t
                .find(NS_SHELL, "ReceiveResponse")
                .ok_or("no ReceiveResponse")?;
            for s in resp.children_named(NS_SHELL, "Stream") {
                let data = B64
                    .decode(s.text.trim())
                    .map_err(|e| format!("stream is not base64: {e}"))?;
                if s.attr("Name") == Some("stderr") {
                    err.extend(data);
                } else {
                    out += data.len();
                }
            }
            if let Some(st) = resp.child(NS_SHELL, "CommandState") {
                if st.attr("State").is_some_and(|s| s.ends_with("/Done")) {
                    let code = st
                        .child(NS_SHELL, "ExitCode")
                        .map(|c| c.text.trim().to_string())
                        .unwrap_or_default();
                    if code != "0" {
                        return Err(format!(
                            "`{line}` exited {code}: {}",
                            excerpt(&String::from_utf8_lossy(&err))
                        ));
                    }
                    return Ok((out, cid));
                }
            }
        }
        Err(format!("`{line}` never finished"))
    }

    /// Signal terminate for a finished command (pywinrm's `cleanup_command`).
    pub async fn terminate(&self, conn: &mut Conn, cid: &str) -> Res<()> {
        let body = format!("<rsp:Signal CommandId=\"{cid}\"><rsp:Code>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/terminate</rsp:Code></rsp:Signal>");
        conn.post_ok(envelope(ACTION_SIGNAL, URI_CMD, Some(&self.id), &[], &body))
            .await
            .map_err(|e| format!("WinRS Signal: {e}"))?;
        Ok(())
    }

    /// Delete (pywinrm's `close_shell`).
    pub async fn delete(&self, conn: &mut Conn) -> Res<()> {
        conn.post_ok(envelope(ACTION_DELETE, URI_CMD, Some(&self.id), &[], ""))
            .await
            .map_err(|e| format!("WinRS Delete: {e}"))?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// PSRP

const CAPABILITY: &str = r#"<Obj RefId="0"><MS><Version N="protocolversion">2.3</Version><Version N="PSVersion">2.0</Version><Version N="SerializationVersion">1.1.0.1</Version></MS></Obj>"#;
const INIT: &str = r#"<Obj RefId="0"><MS><I32 N="MinRunspaces">1</I32><I32 N="MaxRunspaces">1</I32><Obj N="PSThreadOptions" RefId="1"><TN RefId="0"><T>System.Management.Automation.Runspaces.PSThreadOptions</T><T>System.Enum</T><T>System.ValueType</T><T>System.Object</T></TN><ToString>Default</ToString><I32>0</I32></Obj><Obj N="ApartmentState" RefId="2"><TN RefId="1"><T>System.Management.Automation.Runspaces.ApartmentState</T><T>System.Enum</T><T>System.ValueType</T><T>System.Object</T></TN><ToString>UNKNOWN</ToString><I32>2</I32></Obj><Obj N="HostInfo" RefId="3"><MS><B N="_isHostNull">true</B><B N="_isHostUINull">true</B><B N="_isHostRawUINull">true</B><B N="_useRunspaceHost">true</B></MS></Obj><Nil N="ApplicationArguments" /></MS></Obj>"#;

/// CREATE_PIPELINE for one command without arguments, as pypsrp's `add_cmdlet` builds it.
fn create_pipeline(cmd: &str) -> String {
    format!(
        "<Obj RefId=\"0\"><MS><B N=\"NoInput\">true</B><B N=\"AddToHistory\">false</B><Obj N=\"PowerShell\" RefId=\"1\"><MS><B N=\"IsNested\">false</B><Nil N=\"ExtraCmds\" /><Obj N=\"Cmds\" RefId=\"2\"><TN RefId=\"0\"><T>System.Collections.Generic.List`1[[System.Management.Automation.PSObject, System.Management.Automation, Version=3.0.0.0, Culture=neutral, PublicKeyToken=31bf3856ad364e35]]</T><T>System.Object</T></TN><LST><Obj RefId=\"3\"><MS><S N=\"Cmd\">{}</S><B N=\"IsScript\">false</B><Nil N=\"UseLocalScope\" /><Obj N=\"Args\" RefId=\"4\"><TNRef RefId=\"0\" /><LST /></Obj></MS></Obj></LST></Obj><Nil N=\"History\" /><B N=\"RedirectShellErrorOutputPipe\">false</B></MS></Obj><B N=\"IsNested\">false</B></MS></Obj>",
        xml::esc(cmd)
    )
}

/// An open runspace pool.
pub struct PsrpPool {
    pub id: String,
    uri: String,
    rpid: [u8; 16],
    next_object: u64,
    /// Reassembles the pool's messages (pool-level Receives).
    pool_reasm: Reassembler,
}

impl PsrpPool {
    fn fragments(&mut self, t: MessageType, pid: [u8; 16], body: &str) -> Vec<u8> {
        let m = Message::new(
            Destination::Server,
            t,
            self.rpid,
            pid,
            body.as_bytes().to_vec(),
        );
        let oid = self.next_object;
        self.next_object += 1;
        fragment_message(oid, &m.encode(), 32_000)
            .iter()
            .flat_map(Fragment::encode)
            .collect()
    }

    /// Create with creationXml, then Receive until RUNSPACEPOOL_STATE (Opened).
    pub async fn open(conn: &mut Conn, configuration: &str) -> Res<PsrpPool> {
        let id = new_guid();
        let rpid = guid_to_net_bytes(&id).ok_or("bad GUID")?;
        let mut pool = PsrpPool {
            id: id.clone(),
            uri: format!("{URI_POWERSHELL_PREFIX}{configuration}"),
            rpid,
            next_object: 1,
            pool_reasm: Reassembler::new(),
        };
        let mut creation = pool.fragments(MessageType::SessionCapability, [0; 16], CAPABILITY);
        creation.extend(pool.fragments(MessageType::InitRunspacePool, [0; 16], INIT));
        let body = format!(
            "<rsp:Shell ShellId=\"{id}\"><rsp:InputStreams>stdin pr</rsp:InputStreams><rsp:OutputStreams>stdout</rsp:OutputStreams><p:creationXml xmlns=\"http://schemas.microsoft.com/powershell\">{}</p:creationXml></rsp:Shell>",
            B64.encode(&creation)
        );
        let r = conn
            .post_ok(envelope(
                ACTION_CREATE,
                &pool.uri,
                None,
                &[("protocolversion", "2.3")],
                &body,
            ))
            .await
            .map_err(|e| format!("PSRP Create: {e}"))?;
        pool.id = shell_id_of(&parse(&r)?)?;
        let recv = "<rsp:Receive><rsp:DesiredStream>stdout</rsp:DesiredStream></rsp:Receive>";
        for _ in 0..MAX_RECEIVES {
            let uri = pool.uri.clone();
            let shell = pool.id.clone();
            let Some(t) = receive_once(conn, &uri, &shell, recv).await? else {
                continue;
            };
            for m in pool.decode(&t, None)? {
                if m.message_type == MessageType::RunspacePoolState {
                    let text = String::from_utf8_lossy(&m.data);
                    // RunspacePoolState 2 = Opened.
                    if text.contains("<I32 N=\"RunspaceState\">2</I32>") {
                        return Ok(pool);
                    }
                    return Err(format!("runspace pool not opened: {}", excerpt(&text)));
                }
            }
        }
        Err("the runspace pool never opened".into())
    }

    fn decode(&mut self, t: &Element, reasm: Option<&mut Reassembler>) -> Res<Vec<Message>> {
        let resp = t
            .find(NS_SHELL, "ReceiveResponse")
            .ok_or("no ReceiveResponse")?;
        let reasm = match reasm {
            Some(r) => r,
            None => &mut self.pool_reasm,
        };
        let mut out = Vec::new();
        for s in resp.children_named(NS_SHELL, "Stream") {
            let data = B64
                .decode(s.text.trim())
                .map_err(|e| format!("stream is not base64: {e}"))?;
            for m in reasm
                .push_bytes(&data)
                .map_err(|e| format!("fragments: {e}"))?
            {
                out.push(Message::decode(&m).map_err(|e| format!("message: {e}"))?);
            }
        }
        Ok(out)
    }

    /// CREATE_PIPELINE (in Command's arguments) + Receive until PIPELINE_STATE and CommandState
    /// Done. Completed is required; returns the number of PIPELINE_OUTPUT messages.
    pub async fn run(&mut self, conn: &mut Conn, cmd: &str) -> Res<usize> {
        let cid = new_guid();
        let pid = guid_to_net_bytes(&cid).ok_or("bad GUID")?;
        let frags = self.fragments(MessageType::CreatePipeline, pid, &create_pipeline(cmd));
        let body = format!(
            "<rsp:CommandLine CommandId=\"{cid}\"><rsp:Command>{}</rsp:Command><rsp:Arguments>{}</rsp:Arguments></rsp:CommandLine>",
            xml::esc(cmd),
            B64.encode(&frags)
        );
        conn.post_ok(envelope(
            ACTION_COMMAND,
            &self.uri,
            Some(&self.id),
            &[],
            &body,
        ))
        .await
        .map_err(|e| format!("PSRP Command: {e}"))?;
        let recv = format!(
            "<rsp:Receive><rsp:DesiredStream CommandId=\"{cid}\">stdout</rsp:DesiredStream></rsp:Receive>"
        );
        let mut reasm = Reassembler::new();
        let mut outputs = 0usize;
        let mut state: Option<String> = None;
        for _ in 0..MAX_RECEIVES {
            let uri = self.uri.clone();
            let shell = self.id.clone();
            let Some(t) = receive_once(conn, &uri, &shell, &recv).await? else {
                continue;
            };
            for m in self.decode(&t, Some(&mut reasm))? {
                match m.message_type {
                    MessageType::PipelineOutput => outputs += 1,
                    MessageType::PipelineState => {
                        state = Some(String::from_utf8_lossy(&m.data).into_owned())
                    }
                    _ => {}
                }
            }
            let done = t
                .find(NS_SHELL, "CommandState")
                .and_then(|s| s.attr("State"))
                .is_some_and(|s| s.ends_with("/Done"));
            if let Some(s) = &state {
                // PSInvocationState 4 = Completed.
                if !s.contains("<I32 N=\"PipelineState\">4</I32>") {
                    return Err(format!("`{cmd}` did not complete: {}", excerpt(s)));
                }
                if done {
                    return Ok(outputs);
                }
            }
        }
        Err(format!("`{cmd}` never finished"))
    }

    /// Delete (the pool's close).
    pub async fn delete(&self, conn: &mut Conn) -> Res<()> {
        conn.post_ok(envelope(ACTION_DELETE, &self.uri, Some(&self.id), &[], ""))
            .await
            .map_err(|e| format!("PSRP Delete: {e}"))?;
        Ok(())
    }
}

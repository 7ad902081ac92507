//! Property tests: no input makes the envelope parser panic, and every request body gets an
//! answer (a response or one fault), never a crash.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use keyhole::wsman::envelope::Envelope;
use keyhole::wsman::xml;
use proptest::prelude::*;

const SAMPLE: &str = r#"<s:Envelope xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:wsman="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><s:Header><wsa:Action s:mustUnderstand="true">http://schemas.microsoft.com/wbem/wsman/1/windows/shell/Receive</wsa:Action><wsman:MaxEnvelopeSize s:mustUnderstand="true">153600</wsman:MaxEnvelopeSize><wsa:MessageID>uuid:04B0C60D-4F38-4727-A2C3-D0D945229C6D</wsa:MessageID><wsman:OperationTimeout>PT20S</wsman:OperationTimeout><wsman:ResourceURI s:mustUnderstand="true">http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</wsman:ResourceURI><wsman:OptionSet s:mustUnderstand="true"><wsman:Option Name="WSMAN_CMDSHELL_OPTION_KEEPALIVE">True</wsman:Option></wsman:OptionSet><wsman:SelectorSet><wsman:Selector Name="ShellId">44AF9A2C-624E-4975-AB20-CEB406E440B9</wsman:Selector></wsman:SelectorSet></s:Header><s:Body><rsp:Receive><rsp:DesiredStream CommandId="D37A8327-79AD-452F-BE0D-4B99A96B4A0B">stdout stderr</rsp:DesiredStream></rsp:Receive></s:Body></s:Envelope>"#;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = xml::parse(&bytes);
        let _ = Envelope::parse(&bytes);
    }

    #[test]
    fn mutated_envelopes_never_panic(pos in 0usize..SAMPLE.len(), len in 0usize..64, insert in "[<>&;:=\"'/a-zA-Z0-9 \\x00-\\x1f]{0,16}") {
        let mut s = SAMPLE.as_bytes().to_vec();
        let end = (pos + len).min(s.len());
        s.splice(pos..end, insert.bytes());
        let _ = Envelope::parse(&s);
    }

    #[test]
    fn xml_text_round_trips_through_escaping(text in "\\PC{0,64}") {
        let doc = format!("<a>{}</a>", xml::esc(&text));
        let parsed = xml::parse(doc.as_bytes()).unwrap();
        prop_assert_eq!(parsed.text, text);
    }
}

#[test]
fn the_sample_parses() {
    let e = Envelope::parse(SAMPLE.as_bytes()).unwrap();
    assert_eq!(
        e.selector("ShellId"),
        Some("44AF9A2C-624E-4975-AB20-CEB406E440B9")
    );
}

//! Property tests: the fragment reassembler, message decoder and CLIXML reader never panic on
//! arbitrary input and keep to their limits; writer output always reads back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use keyhole::engine::{PsObject, Value};
use keyhole::psrp::clixml::read::{parse, parse_default, ClixmlLimits};
use keyhole::psrp::clixml::Writer;
use keyhole::psrp::fragment::{
    fragment_message, Fragment, Reassembler, MAX_MESSAGE_SIZE, MAX_OBJECTS_IN_FLIGHT,
};
use keyhole::psrp::message::Message;
use proptest::prelude::*;

fn arb_fragment() -> impl Strategy<Value = Fragment> {
    (
        0u64..24,
        0u64..4,
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(object_id, fragment_id, start, end, blob)| Fragment {
            object_id,
            fragment_id,
            start,
            end,
            blob,
        })
}

const TOKENS: &[&str] = &[
    "<Obj RefId=\"0\">",
    "<Obj RefId=\"1\">",
    "</Obj>",
    "<MS>",
    "</MS>",
    "<Props>",
    "</Props>",
    "<LST>",
    "</LST>",
    "<DCT>",
    "</DCT>",
    "<En>",
    "</En>",
    "<S N=\"Key\">",
    "<S>",
    "</S>",
    "<I32>",
    "</I32>",
    "<I32 N=\"Value\">",
    "1",
    "-7",
    "x",
    "_x000A_",
    "_x",
    "<TN RefId=\"0\">",
    "</TN>",
    "<T>System.Enum</T>",
    "<TNRef RefId=\"0\" />",
    "<Ref RefId=\"0\" />",
    "<Ref RefId=\"1\" />",
    "<Nil />",
    "<B>true</B>",
    "<DT>",
    "</DT>",
    "<TS>",
    "</TS>",
    "PT1S",
    "&amp;",
    "&bogus;",
    "<![CDATA[z]]>",
    "<!DOCTYPE a>",
    "<?xml version=\"1.0\"?>",
    "<ToString>",
    "</ToString>",
    "<Db>",
    "</Db>",
    "NaN",
    "<U64>",
    "</U64>",
    "99999999999999999999",
];

fn arb_clixmlish() -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(TOKENS), 0..80).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn reassembler_never_panics_on_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut r = Reassembler::new();
        if let Ok(msgs) = r.push_bytes(&data) {
            for m in msgs {
                prop_assert!(m.len() <= MAX_MESSAGE_SIZE);
            }
        }
        prop_assert!(r.in_flight() <= MAX_OBJECTS_IN_FLIGHT);
    }

    #[test]
    fn reassembler_never_panics_on_fragment_sequences(frags in proptest::collection::vec(arb_fragment(), 0..80)) {
        let mut r = Reassembler::new();
        for f in frags {
            let _ = r.push(f);
            prop_assert!(r.in_flight() <= MAX_OBJECTS_IN_FLIGHT);
        }
    }

    #[test]
    fn fragments_round_trip(msg in proptest::collection::vec(any::<u8>(), 0..3000), max in 1usize..700, oid in any::<u64>()) {
        let bytes: Vec<u8> = fragment_message(oid, &msg, max).iter().flat_map(Fragment::encode).collect();
        let mut r = Reassembler::new();
        prop_assert_eq!(r.push_bytes(&bytes).unwrap(), vec![msg]);
    }

    #[test]
    fn message_decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = Message::decode(&data);
    }

    #[test]
    fn clixml_reader_never_panics_on_text(s in ".{0,300}") {
        let _ = parse_default(&s);
    }

    #[test]
    fn clixml_reader_never_panics_on_clixml_like_input(s in arb_clixmlish()) {
        let _ = parse_default(&s);
        let tight = ClixmlLimits { max_depth: 4, max_elements: 20, max_string_len: 8, max_refs: 2, max_values: 10, max_attributes: 2, max_bytes: 4096 };
        let _ = parse(&s, &tight);
    }

    #[test]
    fn clixml_limits_hold(depth in 1usize..40, width in 1usize..60) {
        let limits = ClixmlLimits { max_depth: 10, max_elements: 50, max_string_len: 16, max_refs: 8, max_values: 100, max_attributes: 4, max_bytes: 1 << 20 };
        let deep = "<Obj RefId=\"0\"><MS>".repeat(depth) + &"</MS></Obj>".repeat(depth);
        let r = parse(&deep, &limits);
        if depth * 2 > limits.max_depth {
            prop_assert!(r.is_err());
        }
        let wide = format!("<Obj RefId=\"0\"><LST>{}</LST></Obj>", "<S>a</S>".repeat(width));
        let r = parse(&wide, &limits);
        if width + 2 > limits.max_elements {
            prop_assert!(r.is_err());
        }
        let long = format!("<S>{}</S>", "y".repeat(width));
        prop_assert_eq!(parse(&long, &limits).is_ok(), width <= limits.max_string_len);
    }

    #[test]
    fn written_strings_read_back(s in any::<String>(), key in "[A-Za-z_][A-Za-z0-9_]{0,10}") {
        let v = PsObject::custom().with(&key, s.clone()).into_value();
        let mut w = Writer::new();
        w.value(None, &v);
        let back = parse_default(&w.finish()).unwrap();
        prop_assert_eq!(back.property(&key), Some(&Value::String(s)));
    }
}

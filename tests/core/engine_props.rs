//! Property tests: no structured pipeline makes the engine panic, refusals emit nothing and run
//! nothing, and a value outside a role's validate_set never reaches the command.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use crate::engine_support as support;

use keyhole::engine::{CommandArg, RunOutcome, StructuredCommand, Value};
use proptest::prelude::*;
use support::*;

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>().prop_map(Value::Double),
        "[ -~\u{200b}\u{130}\u{131}\n]{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "nginx", "cups", "NGINX", "Running", "Name", "acme-web", "blame", "*"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z]{1,4}", inner), 0..3).prop_map(Value::Dict),
        ]
    })
}

fn arg() -> impl Strategy<Value = CommandArg> {
    let name = prop_oneof![
        Just(None),
        prop::sample::select(vec![
            "Name",
            "N",
            "InputObject",
            "Property",
            "First",
            "Last",
            "Skip",
            "Unique",
            "ErrorAction",
            "ea",
            "WhatIf",
            "OutVariable",
            "Format",
            "eq",
            "like",
            "in",
            "Value",
            "Depth",
            "Compress",
            "Stream",
            "CommandType",
            "x",
            "",
        ])
        .prop_map(|s| Some(s.to_string())),
    ];
    (name, prop::option::of(value())).prop_map(|(name, value)| CommandArg { name, value })
}

fn command() -> impl Strategy<Value = StructuredCommand> {
    let name = prop::sample::select(vec![
        "Get-Command",
        "Get-Help",
        "Select-Object",
        "Measure-Object",
        "Where-Object",
        "Sort-Object",
        "Format-Table",
        "Format-List",
        "Out-String",
        "ConvertTo-Json",
        "Get-Member",
        "Write-Output",
        "wo",
        "gcm",
        "Out-Default",
        "Get-FormatData",
        "Clear-Host",
        "Invoke-Expression",
        "Get-Date",
        "Get-ChildItem",
    ]);
    (name, prop::collection::vec(arg(), 0..4)).prop_map(|(n, args)| StructuredCommand {
        name: n.to_string(),
        args,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_and_refusals_run_nothing(cmds in prop::collection::vec(command(), 1..4), input in prop::collection::vec(value(), 0..3)) {
        // Functions and external commands are left out: they would run real programs once
        // the sandbox branch is merged.
        let (mut s, rec) = session();
        let (outcome, events) = run(&mut s, cmds, input);
        if let RunOutcome::Refused(_) = outcome {
            prop_assert!(events.is_empty());
            prop_assert!(rec.lock().unwrap().commands.is_empty());
        }
    }

    #[test]
    fn values_outside_the_set_never_run(v in "[ -~\u{200b}\u{130}\u{131}\u{212a}\n]{0,10}") {
        let (mut s, rec) = session();
        let (outcome, _) = run(&mut s, vec![sc("Write-Output", vec![(None, Some(Value::String(v.clone())))])], vec![]);
        let allowed = ["nginx", "cups"].contains(&v.to_lowercase().as_str());
        prop_assert_eq!(matches!(outcome, RunOutcome::Completed { .. }), allowed, "{:?} -> {:?}", v, outcome);
        prop_assert_eq!(rec.lock().unwrap().commands.is_empty(), !allowed);
    }
}

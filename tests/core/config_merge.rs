//! Merging role capabilities: JEA's seven documented rules, the documentation's DNS example,
//! wildcard expansion, functions, external commands, aliases, and gate-4 refusals.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use keyhole::auth::groups_of;
use keyhole::capability::{
    effective_capability, AliasGrant, EffectiveCapability, ParamsGrant, ValueConstraint,
};
use keyhole::config::{self, LoadedConfig};

fn run_as() -> String {
    if nix::unistd::geteuid().is_root() {
        "nobody".into()
    } else {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .unwrap()
            .unwrap()
            .name
    }
}

/// Endpoint E: group "ga" → capability A, group "gb" → capability B, user "solo" → A only.
fn setup(a: &str, b: &str, endpoint_extra: &str) -> (tempfile::TempDir, LoadedConfig) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::create_dir_all(p.join("endpoints")).unwrap();
    std::fs::create_dir_all(p.join("role-capabilities")).unwrap();
    std::fs::write(p.join("keyhole.toml"), "").unwrap();
    std::fs::write(
        p.join("endpoints/E.toml"),
        format!(
            "name = \"E\"\nrun_as = {:?}\n{endpoint_extra}\n[[role]]\ngroup = \"ga\"\nrole_capabilities = [\"A\"]\n\n[[role]]\ngroup = \"gb\"\nrole_capabilities = [\"B\"]\n\n[[role]]\nuser = \"solo\"\nrole_capabilities = [\"A\"]\n",
            run_as()
        ),
    )
    .unwrap();
    std::fs::write(p.join("role-capabilities/A.toml"), a).unwrap();
    std::fs::write(p.join("role-capabilities/B.toml"), b).unwrap();
    std::fs::write(
        p.join("users.toml"),
        "[users.alice]\npassword = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA\"\ngroups = [\"GA\", \"gb\"]\n",
    )
    .unwrap();
    let cfg = config::load(&p.join("keyhole.toml")).unwrap_or_else(|e| {
        panic!(
            "{}",
            e.iter().map(|d| d.rendered.clone()).collect::<String>()
        )
    });
    (d, cfg)
}

fn both(a: &str, b: &str) -> EffectiveCapability {
    let (_d, cfg) = setup(a, b, "");
    let ep = cfg.endpoint("e").unwrap();
    effective_capability(&cfg, ep, "alice", &["ga".into(), "gb".into()]).unwrap()
}

fn only_a(a: &str) -> EffectiveCapability {
    let (_d, cfg) = setup(a, "", "");
    let ep = cfg.endpoint("E").unwrap();
    effective_capability(&cfg, ep, "solo", &[]).unwrap()
}

fn param(cap: &EffectiveCapability, cmd: &str, p: &str) -> ValueConstraint {
    match &cap.cmdlets[&cmd.to_lowercase()].params {
        ParamsGrant::All => panic!("{cmd}: all parameters"),
        ParamsGrant::Only(m) => m
            .get(&p.to_lowercase())
            .unwrap_or_else(|| panic!("{cmd} has no {p}: {m:?}"))
            .constraint
            .clone(),
    }
}

fn params_of(cap: &EffectiveCapability, cmd: &str) -> Vec<String> {
    match &cap.cmdlets[&cmd.to_lowercase()].params {
        ParamsGrant::All => vec!["*".into()],
        ParamsGrant::Only(m) => m.values().map(|g| g.name.clone()).collect(),
    }
}

fn set(v: &[&str]) -> ValueConstraint {
    ValueConstraint::Set(v.iter().map(|s| s.to_string()).collect())
}
fn pats(v: &[&str]) -> ValueConstraint {
    ValueConstraint::Patterns(v.iter().map(|s| s.to_string()).collect())
}

const RS_NAME_SET: &str = "visible_cmdlets = [ { name = \"Restart-Service\", parameters = [ { name = \"Name\", validate_set = [\"cron\", \"ssh\"] } ] } ]\n";

#[test]
fn rule1_one_role_keeps_its_constraints() {
    let cap = only_a(RS_NAME_SET);
    assert_eq!(params_of(&cap, "Restart-Service"), vec!["Name"]);
    assert_eq!(
        param(&cap, "Restart-Service", "Name"),
        set(&["cron", "ssh"])
    );
    assert_eq!(cap.roles, vec!["A"]);
    assert!(!cap.cmdlets.contains_key("get-service"));
}

#[test]
fn rule2_same_constraints_stay() {
    let cap = both(RS_NAME_SET, RS_NAME_SET);
    assert_eq!(params_of(&cap, "Restart-Service"), vec!["Name"]);
    assert_eq!(
        param(&cap, "Restart-Service", "Name"),
        set(&["cron", "ssh"])
    );
}

#[test]
fn rule3_parameter_lists_union_and_unlisted_means_all() {
    let a =
        "visible_cmdlets = [ { name = \"Get-Process\", parameters = [ { name = \"Name\" } ] } ]\n";
    let b =
        "visible_cmdlets = [ { name = \"Get-Process\", parameters = [ { name = \"Id\" } ] } ]\n";
    let cap = both(a, b);
    assert_eq!(params_of(&cap, "Get-Process"), vec!["Id", "Name"]);
    let cap = both(a, "visible_cmdlets = [\"Get-Process\"]\n");
    assert_eq!(cap.cmdlets["get-process"].params, ParamsGrant::All);
    // A table entry without `parameters` is the same as the plain name.
    let cap = both(a, "visible_cmdlets = [ { name = \"Get-Process\" } ]\n");
    assert_eq!(cap.cmdlets["get-process"].params, ParamsGrant::All);
}

#[test]
fn rule4_unconstrained_parameter_drops_set_or_pattern() {
    let b = "visible_cmdlets = [ { name = \"Restart-Service\", parameters = [ { name = \"name\" } ] } ]\n";
    let cap = both(RS_NAME_SET, b);
    assert_eq!(param(&cap, "Restart-Service", "Name"), ValueConstraint::Any);
    let a = "visible_cmdlets = [ { name = \"Restart-Service\", parameters = [ { name = \"Name\", validate_pattern = \"c.*\" } ] } ]\n";
    let cap = both(a, b);
    assert_eq!(param(&cap, "Restart-Service", "Name"), ValueConstraint::Any);
}

#[test]
fn rule5_sets_union() {
    let b = "visible_cmdlets = [ { name = \"Restart-Service\", parameters = [ { name = \"Name\", validate_set = [\"SSH\", \"nginx\"] } ] } ]\n";
    let cap = both(RS_NAME_SET, b);
    assert_eq!(
        param(&cap, "Restart-Service", "Name"),
        set(&["cron", "ssh", "nginx"])
    );
}

#[test]
fn rule6_patterns_are_alternatives() {
    let a = "visible_cmdlets = [ { name = \"Get-Journal\", parameters = [ { name = \"Unit\", validate_pattern = \"a.*\" } ] } ]\n";
    let b = "visible_cmdlets = [ { name = \"Get-Journal\", parameters = [ { name = \"Unit\", validate_pattern = \"b.*\" } ] } ]\n";
    let cap = both(a, b);
    assert_eq!(param(&cap, "Get-Journal", "Unit"), pats(&["a.*", "b.*"]));
}

#[test]
fn rule7_set_and_pattern_keep_only_patterns() {
    let b = "visible_cmdlets = [ { name = \"Restart-Service\", parameters = [ { name = \"Name\", validate_pattern = \"acme-.*\" } ] } ]\n";
    let cap = both(RS_NAME_SET, b);
    assert_eq!(param(&cap, "Restart-Service", "Name"), pats(&["acme-.*"]));
}

#[test]
fn documentation_dns_example() {
    let a = "visible_cmdlets = [\"Get-Service\", { name = \"Restart-Service\", parameters = [ { name = \"DisplayName\", validate_set = [\"DNS Client\"] } ] } ]\n";
    let b = "visible_cmdlets = [ { name = \"Get-Service\", parameters = [ { name = \"DisplayName\", validate_pattern = \"DNS.*\" } ] }, { name = \"Restart-Service\", parameters = [ { name = \"DisplayName\", validate_set = [\"DNS Server\"] } ] } ]\n";
    let cap = both(a, b);
    assert_eq!(cap.cmdlets["get-service"].params, ParamsGrant::All);
    assert_eq!(
        param(&cap, "Restart-Service", "DisplayName"),
        set(&["DNS Client", "DNS Server"])
    );
}

#[test]
fn wildcards_expand_to_builtins_with_canonical_names() {
    let cap = only_a("visible_cmdlets = [\"get-*\"]\n");
    assert!(cap.cmdlets.contains_key("get-service"));
    assert_eq!(cap.cmdlets["get-service"].name, "Get-Service");
    assert_eq!(
        cap.cmdlets["get-nettcpconnection"].name,
        "Get-NetTCPConnection"
    );
    assert!(!cap.cmdlets.contains_key("restart-service"));
    for c in cap.cmdlets.values() {
        assert!(c.name.starts_with("Get-"), "{}", c.name);
    }
    let cap = only_a("visible_cmdlets = [ { name = \"*-Service\", parameters = [ { name = \"Name\", validate_set = [\"cron\"] } ] } ]\n");
    for c in [
        "Get-Service",
        "Start-Service",
        "Stop-Service",
        "Restart-Service",
    ] {
        assert_eq!(param(&cap, c, "Name"), set(&["cron"]), "{c}");
    }
}

const FUNC: &str = "[functions.Get-Thing]\nprogram = \"/usr/bin/uptime\"\n\n[functions.Get-Thing.parameters.Kind]\ntype = \"string\"\n\n[functions.Get-Thing.parameters.Count]\ntype = \"int\"\n";

#[test]
fn functions_resolve_across_the_endpoints_capabilities() {
    // B declares the function; A (held alone by "solo") only makes it visible.
    let (_d, cfg) = setup("visible_functions = [ { name = \"Get-Thing\", parameters = [ { name = \"Kind\", validate_set = [\"x\"] } ] } ]\n", FUNC, "");
    let ep = cfg.endpoint("E").unwrap();
    let cap = effective_capability(&cfg, ep, "solo", &[]).unwrap();
    let f = &cap.functions["get-thing"];
    assert_eq!(f.function.name, "Get-Thing");
    assert_eq!(f.function.capability, "B");
    assert_eq!(
        f.function
            .params
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        vec!["Kind", "Count"]
    );
    let ParamsGrant::Only(m) = &f.params else {
        panic!()
    };
    assert_eq!(m["kind"].constraint, set(&["x"]));
    // Declared but not listed in visible_functions by a role the user holds: invisible.
    let cap = effective_capability(&cfg, ep, "bob", &["gb".into()]).unwrap();
    assert!(cap.functions.is_empty());
}

#[test]
fn external_commands_and_aliases_union() {
    let a = "visible_external_commands = [ { path = \"/usr/bin/systemd-analyze\", arguments = [\"blame\"] }, \"/usr/bin/uptime\" ]\nvisible_cmdlets = [\"Get-Service\"]\nvisible_aliases = [\"gsv\"]\n\n[aliases]\ngsv = \"Get-Service\"\n";
    let b = "visible_external_commands = [ { path = \"/usr/bin/systemd-analyze\", arguments = [\"time\", \"blame\"] } ]\nvisible_aliases = [\"select\"]\n";
    let cap = both(a, b);
    assert_eq!(
        cap.external["/usr/bin/systemd-analyze"].def.arguments,
        vec!["blame", "time"]
    );
    assert!(cap.external["/usr/bin/uptime"].def.arguments.is_empty());
    assert_eq!(
        cap.aliases["gsv"],
        AliasGrant {
            alias: "gsv".to_string(),
            target: "Get-Service".to_string()
        }
    );
    assert_eq!(cap.aliases["select"].target, "Select-Object");
}

#[test]
fn gate_four_refusals() {
    let (_d, cfg) = setup(RS_NAME_SET, "", "");
    let ep = cfg.endpoint("E").unwrap();
    let r = effective_capability(&cfg, ep, "mallory", &["staff".into()]).unwrap_err();
    assert_eq!(r.gate, 4);
    assert!(
        r.reason.contains("no role applies to user mallory"),
        "{}",
        r.reason
    );
    // Group names are case-insensitive.
    assert!(effective_capability(&cfg, ep, "x", &["GA".into()]).is_ok());

    let (_d, cfg) = setup(
        RS_NAME_SET,
        "",
        "required_groups = { and = [\"staff\", { or = [\"otp\", \"smartcard\"] }] }\n",
    );
    let ep = cfg.endpoint("E").unwrap();
    let r = effective_capability(&cfg, ep, "x", &["ga".into(), "staff".into()]).unwrap_err();
    assert!(
        r.reason
            .contains("required_groups not satisfied: needs staff and (otp or smartcard)"),
        "{}",
        r.reason
    );
    assert!(
        effective_capability(&cfg, ep, "x", &["ga".into(), "Staff".into(), "OTP".into()]).is_ok()
    );
    // required_groups does not grant a role by itself.
    assert!(effective_capability(&cfg, ep, "x", &["staff".into(), "otp".into()]).is_err());
}

/// One definition of a user's groups (`auth::groups_of`): users.toml first; OS groups only
/// when PAM is configured (without PAM an OS account cannot log in, so it has no groups).
#[test]
fn groups_from_users_file_or_os() {
    let (_d, cfg) = setup(RS_NAME_SET, "", "");
    assert_eq!(
        groups_of(&cfg.users, false, "ALICE").unwrap(),
        vec!["GA", "gb"]
    );
    assert_eq!(groups_of(&cfg.users, false, "root"), None);
    assert!(groups_of(&cfg.users, true, "root")
        .unwrap()
        .contains(&"root".to_string()));
    assert_eq!(groups_of(&cfg.users, true, "no-such-user-xyz"), None);
}

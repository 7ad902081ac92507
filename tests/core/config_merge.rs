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

// ------------------------------------------- never-provided names and wildcard grants, all of them

/// The errors `config::load` gives for role capability A (setup's layout), rendered.
fn load_errors(a: &str) -> Option<String> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::create_dir_all(p.join("endpoints")).unwrap();
    std::fs::create_dir_all(p.join("role-capabilities")).unwrap();
    std::fs::write(p.join("keyhole.toml"), "").unwrap();
    std::fs::write(
        p.join("endpoints/E.toml"),
        format!(
            "name = \"E\"\nrun_as = {:?}\n[[role]]\nuser = \"solo\"\nrole_capabilities = [\"A\"]\n",
            run_as()
        ),
    )
    .unwrap();
    std::fs::write(p.join("role-capabilities/A.toml"), a).unwrap();
    config::load(&p.join("keyhole.toml"))
        .err()
        .map(|e| e.iter().map(|d| d.rendered.clone()).collect::<String>())
}

/// A concrete command name for each entry of the never-provided list: the name itself, or the
/// wildcard with `*` filled in (`*-Job` → `Get-Job`, `Register-*Event` → `Register-ObjectEvent`).
fn never_provided_instances() -> Vec<String> {
    keyhole::catalog::NEVER_PROVIDED
        .iter()
        .map(|p| {
            let s = if let Some(rest) = p.strip_prefix('*') {
                format!("Get{rest}")
            } else {
                p.replace('*', "Object")
            };
            assert!(keyhole::catalog::is_never_provided(&s), "{p} → {s}");
            s
        })
        .collect()
}

/// SECURITY.md "wildcard grants" and "Invoke-Expression ... never provided": EVERY entry of the
/// catalogue's never-provided list, as written, as a concrete name and in other letter cases,
/// is a `check` error in every place a role capability names a command: visible_cmdlets (plain
/// and with parameters), visible_functions, visible_aliases, an alias target, an alias name and
/// a function definition.
#[test]
fn every_never_provided_name_is_refused_wherever_a_role_names_a_command() {
    let mut names: Vec<String> = keyhole::catalog::NEVER_PROVIDED
        .iter()
        .map(|s| s.to_string())
        .collect();
    for i in never_provided_instances() {
        names.push(i.to_lowercase());
        names.push(i.to_uppercase());
        names.push(i);
    }
    let mut accepted = Vec::new();
    for n in &names {
        let q = format!("{n:?}");
        let places = [
            format!("visible_cmdlets = [{q}]\n"),
            format!(
                "visible_cmdlets = [ {{ name = {q}, parameters = [ {{ name = \"Name\" }} ] }} ]\n"
            ),
            format!("visible_functions = [{q}]\n"),
            format!("visible_aliases = [{q}]\n"),
            format!("[aliases]\nx = {q}\n"),
            format!("[aliases]\n{q} = \"Get-Service\"\n"),
            format!("[functions.{q}]\nprogram = \"/usr/bin/uptime\"\n"),
        ];
        for role in places {
            match load_errors(&role) {
                Some(e) if e.contains("is never provided by keyhole") => {}
                other => accepted.push(format!("{role:?}: {other:?}")),
            }
        }
    }
    eprintln!("{} never-provided names × 7 places refused", names.len());
    assert!(
        accepted.is_empty(),
        "never-provided names not refused ({} of {}):\n{}",
        accepted.len(),
        names.len() * 7,
        accepted.join("\n")
    );
}

/// Every name of the never-provided list is "not found" in a session granted every cmdlet
/// keyhole has (a role with `*`), by its name, in other letter cases and module-qualified:
/// the engine's command table holds only built-ins.
#[test]
fn every_never_provided_name_is_not_found_in_a_session_granted_every_cmdlet() {
    use keyhole::engine::RunOutcome;
    let cap = only_a("visible_cmdlets = [\"*\"]\n");
    for b in keyhole::catalog::BUILTIN_CMDLETS {
        if !keyhole::catalog::RESTRICTED_DEFAULTS.contains(b) {
            assert!(
                cap.cmdlets.contains_key(&b.to_lowercase()),
                "`*` missed {b}"
            );
        }
    }
    let (mut s, rec) = crate::engine_support::session_with(
        &cap,
        keyhole::config::SessionType::RestrictedRemoteServer,
    );
    for n in never_provided_instances() {
        if n.eq_ignore_ascii_case("Exit-PSSession") {
            continue; // (not an instance: *-PSSession is filled in as Get-PSSession)
        }
        for name in [
            n.clone(),
            n.to_lowercase(),
            format!("Microsoft.PowerShell.Core\\{n}"),
            format!("Microsoft.PowerShell.Utility\\{n}"),
        ] {
            let (out, _) = crate::engine_support::run(
                &mut s,
                vec![crate::engine_support::sc(&name, vec![])],
                vec![],
            );
            match out {
                RunOutcome::Refused(r) => {
                    assert_eq!(r.id, "CommandNotFoundException", "{name}: {r:?}")
                }
                other => panic!("{name} was not refused: {other:?}"),
            }
        }
    }
    assert!(rec.lock().unwrap().commands.is_empty(), "nothing ran");
}

/// Every wildcard a role may write that reaches a built-in (`Verb-*` and `*-Noun` of every
/// built-in, `*`, and the same two forms of every never-provided name, e.g. `*-Process`,
/// `Start-*`, `Invoke-*`) grants exactly the built-ins it matches, never a never-provided name
/// (`*-Process` is Get-Process and Stop-Process, never Start-Process), or is refused
/// (it matches no cmdlet, or is itself never provided).
#[test]
fn every_wildcard_grant_reaches_exactly_the_builtins_it_matches() {
    use keyhole::catalog::{is_builtin, is_never_provided, BUILTIN_CMDLETS};
    use keyhole::lang::wildcard::{Mode, Wildcard};
    let baseline: std::collections::BTreeSet<String> = only_a("").cmdlets.keys().cloned().collect();
    let mut patterns = std::collections::BTreeSet::from(["*".to_string()]);
    for name in BUILTIN_CMDLETS
        .iter()
        .map(|s| s.to_string())
        .chain(never_provided_instances())
    {
        if let Some((verb, noun)) = name.split_once('-') {
            patterns.insert(format!("{verb}-*"));
            patterns.insert(format!("*-{noun}"));
            patterns.insert(format!("*{noun}"));
        }
    }
    let mut reached = 0;
    for p in &patterns {
        let w = Wildcard::new(p, Mode::Name).unwrap();
        let expected: std::collections::BTreeSet<String> = BUILTIN_CMDLETS
            .iter()
            .filter(|b| w.is_match(b))
            .map(|b| b.to_lowercase())
            .collect();
        let role = format!("visible_cmdlets = [{p:?}]\n");
        if let Some(e) = load_errors(&role) {
            assert!(
                e.contains("matches no cmdlet") || e.contains("is never provided"),
                "{p}: refused for another reason: {e}"
            );
            assert!(
                expected.is_empty() || is_never_provided(p),
                "{p} reaches {expected:?} but is refused: {e}"
            );
            continue;
        }
        let cap = only_a(&role);
        let got: std::collections::BTreeSet<String> = cap.cmdlets.keys().cloned().collect();
        let want: std::collections::BTreeSet<String> = baseline.union(&expected).cloned().collect();
        assert_eq!(got, want, "{p}");
        for c in cap.cmdlets.values() {
            assert!(is_builtin(&c.name), "{p} granted {}", c.name);
            // Exit-PSSession matches `*-PSSession` but is keyhole's own restricted proxy (a
            // restricted default, SPEC §4.2), which `*` and `Exit-*` reach like any built-in.
            assert!(
                !is_never_provided(&c.name)
                    || keyhole::catalog::RESTRICTED_DEFAULTS.contains(&c.name.as_str()),
                "{p} granted the never-provided {}",
                c.name
            );
        }
        reached += 1;
    }
    eprintln!(
        "{} wildcard grants: {reached} reach built-ins exactly, the others are refused",
        patterns.len()
    );
    assert!(
        reached >= 40,
        "only {reached} of {} patterns reached a built-in",
        patterns.len()
    );
    // The row's example, spelled out.
    let cap = only_a("visible_cmdlets = [\"*-Process\"]\n");
    assert!(cap.cmdlets.contains_key("get-process") && cap.cmdlets.contains_key("stop-process"));
    assert!(!cap.cmdlets.contains_key("start-process"));
}

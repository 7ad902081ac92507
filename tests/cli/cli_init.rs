//! `keyhole init --dir DIR`: a configuration that `keyhole check` accepts, the run_as accounts
//! (created as root, useradd lines printed otherwise), a self-signed certificate, next steps;
//! and it never overwrites anything.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::process::Command;

fn keyhole(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyhole"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn init_writes_a_configuration_that_check_accepts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("conf");
    let d = dir.to_str().unwrap();
    let (code, out, err) = keyhole(&["init", "--dir", d]);
    assert_eq!(code, 0, "{out}{err}");
    for f in [
        "keyhole.toml",
        "authorization-rules.toml",
        "endpoints/Helpdesk.toml",
        "endpoints/Vendor.toml",
        "role-capabilities/ServiceOperator.toml",
        "role-capabilities/Diagnostics.toml",
        "role-capabilities/VendorReadOnly.toml",
        "state/keyhole-tls-cert.pem",
        "state/keyhole-tls-key.pem",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing; output:\n{out}");
    }
    assert!(
        !dir.join("users.toml").exists(),
        "users.toml must not be written"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("authorization-rules.toml")), 0o600);
    assert_eq!(mode(&dir.join("state/keyhole-tls-key.pem")), 0o600);
    assert_eq!(mode(&dir.join("state")), 0o700);
    assert!(
        out.contains("TLS certificate:") && out.contains("SHA-256"),
        "{out}"
    );
    assert!(out.contains("keyhole user add"), "{out}");
    assert!(out.contains("keyhole polkit --write"), "{out}");
    let toml = std::fs::read_to_string(dir.join("keyhole.toml")).unwrap();
    assert!(toml.contains("state_directory = \"state\""), "{toml}");

    if is_root() {
        // The accounts exist now (created, or there already) and the result passes check.
        for a in ["keyhole-helpdesk", "keyhole-vendor"] {
            assert!(
                nix::unistd::User::from_name(a).unwrap().is_some(),
                "{a} missing"
            );
        }
        let config = dir.join("keyhole.toml");
        let (code, cout, cerr) = keyhole(&["check", "--config", config.to_str().unwrap()]);
        assert_eq!(code, 0, "{cout}{cerr}");
        assert!(cout.starts_with("keyhole.toml: OK — 2 endpoints"), "{cout}");
    } else {
        // Not root: the exact useradd lines for accounts that do not exist.
        for a in ["keyhole-helpdesk", "keyhole-vendor"] {
            if nix::unistd::User::from_name(a).unwrap().is_none() {
                assert!(
                    out.contains(&format!(
                        "useradd --system --no-create-home --shell /usr/sbin/nologin {a}"
                    )),
                    "{out}"
                );
            }
        }
    }

    // A second run refuses and changes nothing.
    let before = std::fs::read(dir.join("keyhole.toml")).unwrap();
    std::fs::write(dir.join("keyhole.toml"), b"# mine\n").unwrap();
    let (code, out2, err2) = keyhole(&["init", "--dir", d]);
    assert_eq!(code, 1, "{out2}{err2}");
    assert!(
        err2.contains("is not empty") && err2.contains("nothing was written"),
        "{err2}"
    );
    assert_eq!(
        std::fs::read(dir.join("keyhole.toml")).unwrap(),
        b"# mine\n"
    );
    assert_ne!(before, b"# mine\n");
}

#[test]
fn init_refuses_a_directory_with_any_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("users.toml"), "x").unwrap();
    let (code, _, err) = keyhole(&["init", "--dir", tmp.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("users.toml"), "{err}");
    assert!(!tmp.path().join("keyhole.toml").exists());
}

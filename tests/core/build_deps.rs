//! Building keyhole needs nothing but the Rust toolchain (and the C compiler and libc files every
//! Rust build on Linux links with): no system headers beyond libc's, no libclang, no pkg-config.
//! This test reads the dependency graph cargo would build for this machine (normal and build
//! dependencies, not dev-only ones) and fails when a crate that needs such things appears, or
//! when a crate with a build script appears that nobody has reviewed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::process::Command;

/// Crates whose presence means the build needs something outside the Rust toolchain.
const FORBIDDEN: &[(&str, &str)] = &[
    ("bindgen", "runs libclang at build time"),
    ("clang-sys", "needs libclang at build time"),
    ("pkg-config", "asks pkg-config for system libraries"),
    ("system-deps", "asks pkg-config for system libraries"),
    ("pam-sys", "bindgen over the PAM headers (libpam0g-dev)"),
    ("pam", "depends on pam-sys"),
    ("cmake", "needs cmake and usually system headers"),
    ("vcpkg", "looks for system libraries"),
    ("openssl-sys", "needs libssl-dev"),
    (
        "libgssapi-sys",
        "needs the krb5 headers; load libgssapi_krb5 at run time instead",
    ),
];

/// Crates with a build script, each reviewed: what the script does, and why it needs nothing
/// but the toolchain.
const REVIEWED_BUILD_SCRIPTS: &[(&str, &str)] = &[
    ("anyhow", "probes rustc features"),
    ("generic-array", "probes rustc version"),
    ("getrandom", "probes cfgs"),
    ("httparse", "probes rustc features"),
    ("libc", "probes rustc version and target cfgs"),
    ("nix", "sets cfg aliases"),
    ("num-traits", "probes rustc features"),
    ("proc-macro2", "probes rustc features"),
    ("quote", "probes rustc version"),
    (
        "ring",
        "compiles its bundled C/assembly with cc: the C compiler and libc headers only",
    ),
    ("rustls", "sets cfgs"),
    ("serde", "probes rustc features"),
    ("serde_core", "probes rustc features"),
    ("serde_json", "probes target pointer width"),
    ("thiserror", "probes rustc features"),
    ("zerocopy", "probes rustc version"),
    ("zmij", "probes target cfgs"),
    ("rustix", "probes target cfgs and rustc features"),
    ("borsh", "probes rustc features"),
];

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

/// Names of the crates in the normal + build dependency graph for this machine.
fn build_graph() -> BTreeSet<String> {
    let out = cargo()
        .args([
            "tree",
            "--locked",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn no_crate_in_the_build_needs_system_headers_libclang_or_pkg_config() {
    let graph = build_graph();
    assert!(
        graph.contains("keyhole") && graph.contains("tokio"),
        "unexpected cargo tree output: {graph:?}"
    );
    let bad: Vec<String> = FORBIDDEN
        .iter()
        .filter(|(name, _)| graph.contains(*name))
        .map(|(name, why)| format!("{name} ({why})"))
        .collect();
    assert!(
        bad.is_empty(),
        "the build would need more than the Rust toolchain: {}",
        bad.join(", ")
    );
}

#[test]
fn every_build_script_in_the_build_is_reviewed() {
    let graph = build_graph();
    let out = cargo()
        .args([
            "metadata",
            "--locked",
            "--format-version",
            "1",
            "--filter-platform",
            &host_triple(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut unreviewed = Vec::new();
    let mut seen = 0;
    for p in meta["packages"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let has_build_script = p["targets"].as_array().unwrap().iter().any(|t| {
            t["kind"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k == "custom-build")
        });
        if !has_build_script || !graph.contains(name) || name == "keyhole" {
            continue;
        }
        seen += 1;
        if !REVIEWED_BUILD_SCRIPTS.iter().any(|(n, _)| *n == name) {
            unreviewed.push(name.to_string());
        }
    }
    assert!(
        seen > 0,
        "no build script found: is cargo metadata working?"
    );
    assert!(
        unreviewed.is_empty(),
        "crates with a build script nobody reviewed: {unreviewed:?}. Read each one's build.rs: if it \
         needs a system header, pkg-config or libclang, find another crate or load the library at \
         run time (src/sys); otherwise add it to REVIEWED_BUILD_SCRIPTS with what it does"
    );
}

fn host_triple() -> String {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .unwrap()
}

//! `sys`: thin, audited bindings to system libraries that keyhole loads at run time (dlopen), so
//! that the build needs nothing but the Rust toolchain. This is one of the two places (with
//! `sandbox`) where `unsafe` is allowed; every block carries a `// SAFETY:` comment and each
//! submodule exposes a safe API.

pub mod gssapi;

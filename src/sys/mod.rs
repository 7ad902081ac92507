//! `sys`: system libraries loaded at run time (dlopen), so that building keyhole needs nothing but the Rust toolchain; all their FFI `unsafe` lives here, each block with a `// SAFETY:` comment.
pub mod pam;

//! The `keyhole` binary: parses arguments and calls the library.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    // Choose the containment mechanism (cgroup v2 or the fallback) once, before any thread runs.
    let _ = keyhole::sandbox::init();
    keyhole::cli::main()
}

//! The `keyhole` binary: parses arguments and calls the library.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    keyhole::cli::main()
}

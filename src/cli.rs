//! Command line: parses arguments and calls the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

pub fn main() -> ExitCode {
    ExitCode::SUCCESS
}

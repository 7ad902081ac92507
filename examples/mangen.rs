//! Writes keyhole's man pages (section 8: an administrator's command), generated from the same
//! clap definitions as `keyhole --help`: `keyhole.8` and one `keyhole-SUBCOMMAND.8` per
//! subcommand, into the directory given as the only argument. Used by packaging/build-deb.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use clap::CommandFactory;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .expect("usage: mangen OUTPUT-DIRECTORY"),
    );
    std::fs::create_dir_all(&dir)?;
    let cmd = keyhole::cli::Cli::command();
    let version = env!("CARGO_PKG_VERSION");
    let page = |c: clap::Command, name: String| -> std::io::Result<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c)
            .section("8")
            .source(format!("keyhole {version}"))
            .manual("System Administration")
            .render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.8")), buf)
    };
    page(cmd.clone(), "keyhole".into())?;
    for sub in cmd.get_subcommands() {
        let name = format!("keyhole-{}", sub.get_name());
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
        page(sub.clone().name(leaked), name)?;
    }
    Ok(())
}

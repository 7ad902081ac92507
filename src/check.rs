//! `check`: what validating a configuration needs beyond `config` — role capability files
//! checked against the built-in commands themselves (their declared parameters). `config` knows
//! only names (from `catalog`); this module sits above `commands` and adds the rest, on the same
//! `file:line:col` diagnostics. `keyhole check`, `keyhole serve` (start and reload) and every
//! other subcommand that loads the configuration go through [`load`].
#![forbid(unsafe_code)]

use std::path::Path;

use crate::catalog;
use crate::config::{self, Ctx, Diagnostic, LoadedConfig, VisibleCommandEntry};
use crate::engine::CommandSource;
use crate::tpath;

/// Load, validate and check the whole configuration rooted at `path` (see [`config::load`]);
/// on failure every diagnostic is returned.
pub fn load(path: &Path) -> Result<LoadedConfig, Vec<Diagnostic>> {
    let source = crate::commands::source();
    config::load_with(path, &|ctx, cfg| {
        builtin_parameters(ctx, cfg, source.as_ref())
    })
}

/// A constrained built-in may list only parameters the built-in declares (common parameters
/// are `config`'s to judge).
fn builtin_parameters(ctx: &mut Ctx, cfg: &LoadedConfig, source: &dyn CommandSource) {
    for cap in cfg.capabilities.values() {
        for (i, e) in cap.config.visible_cmdlets.iter().enumerate() {
            let VisibleCommandEntry::Constrained(cc) = e else {
                continue;
            };
            if catalog::is_never_provided(&cc.name) {
                continue;
            }
            // A wildcard entry constrains several commands: only an exact name is checked.
            let Some(builtin) = source.builtin(&cc.name) else {
                continue;
            };
            for (j, p) in cc.parameters.iter().flatten().enumerate() {
                if catalog::common_parameter(&p.name).is_some() {
                    continue;
                }
                if builtin.decl().find_param(&p.name).is_none() {
                    let declared: Vec<&str> = builtin
                        .decl()
                        .params
                        .iter()
                        .map(|d| d.name.as_str())
                        .collect();
                    ctx.err(
                        &cap.file,
                        &tpath!["visible_cmdlets", i, "parameters", j, "name"],
                        format!(
                            "{} has no parameter {} (its parameters: {})",
                            cc.name,
                            p.name,
                            declared.join(", ")
                        ),
                    );
                }
            }
        }
    }
}

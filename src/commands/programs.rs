//! PLACEHOLDER (engine branch): functions and external commands declared by role capabilities.
//! The real implementation (sandboxed programs) comes from another branch and REPLACES this file
//! at merge; this one only builds the declarations so the command table can show and bind them.
#![forbid(unsafe_code)]

use std::sync::Arc;

use crate::config::{ExternalCommandDef, FunctionParamType, ResolvedFunction};
use crate::engine::{
    BoundArgs, Command, CommandDecl, CommandKind, Ctx, ErrorCategory, ErrorRecord, Invocation,
    ParamDecl, ParamType, Value,
};

struct Placeholder {
    decl: CommandDecl,
}

struct PlaceholderRun;

impl Invocation for PlaceholderRun {
    fn process(
        &mut self,
        ctx: &mut Ctx<'_>,
        _args: &BoundArgs,
        _input: Option<Value>,
    ) -> Result<(), ErrorRecord> {
        ctx.write_error(ErrorRecord::new(
            "programs are not available yet (placeholder build)",
            "ProgramsNotAvailable",
            ErrorCategory::NotImplemented,
        ));
        Ok(())
    }
}

impl Command for Placeholder {
    fn decl(&self) -> &CommandDecl {
        &self.decl
    }
    fn start(&self, _args: &BoundArgs) -> Box<dyn Invocation> {
        Box::new(PlaceholderRun)
    }
}

/// A declared function as a command (placeholder: its invocation writes an error record).
pub fn function_command(f: &ResolvedFunction) -> Arc<dyn Command> {
    let mut decl = CommandDecl::cmdlet(&f.name, &f.capability, &f.def.synopsis);
    decl.kind = CommandKind::Function;
    for (name, p) in &f.params {
        let ty = match p.ty {
            FunctionParamType::String => ParamType::String,
            FunctionParamType::Int => ParamType::Int,
            FunctionParamType::Bool => ParamType::Bool,
            FunctionParamType::Switch => ParamType::Switch,
            FunctionParamType::StringArray => ParamType::StringArray,
            FunctionParamType::IntArray => ParamType::IntArray,
        };
        let mut d = ParamDecl::new(name, ty).help(&p.help);
        d.mandatory = p.mandatory;
        d.position = p.position.map(|x| x as usize);
        d.set = p.validate_set.clone().unwrap_or_default();
        d.patterns = p.validate_pattern.iter().cloned().collect();
        decl.params.push(d);
    }
    Arc::new(Placeholder { decl })
}

/// An external command as a command (placeholder: its invocation writes an error record).
pub fn external_command(def: &ExternalCommandDef) -> Arc<dyn Command> {
    let file = def.path.rsplit('/').next().unwrap_or(&def.path);
    let mut decl = CommandDecl::cmdlet(file, "", &def.synopsis);
    decl.kind = CommandKind::Application;
    decl.path = Some(def.path.clone());
    decl.params
        .push(ParamDecl::new("Arguments", ParamType::StringArray).position(0));
    Arc::new(Placeholder { decl })
}

//! From raw YAML to validated stages: one pipeline file at a time, every problem found in it
//! collected as a pointed diagnostic (unknown keys, `cmd`/`op`/`manual`, unknown ops, paths,
//! `${...}` references, env names, op params).

use serde_saphyr::Spanned;

use super::diagnostic::{did_you_mean, span_of, yaml_error};
use super::paths::{PathChecker, paths_overlap};
use super::raw::{RawParam, RawPipeline, RawPorts, RawStage};
use super::{Pipeline, SpecError};
use crate::layout::RESERVED;
use crate::op::OpRegistry;
use crate::stage::{Action, Port, Stage};

/// Parses one pipeline file into stages (and the problems found in them); `Err` when the file as
/// a whole is unreadable as a pipeline (malformed YAML, an unsupported version).
pub fn parse_pipeline(
    paths: &PathChecker,
    ops: &OpRegistry,
    index: usize,
    pipeline: &Pipeline,
) -> Result<(Option<String>, super::parse_cache::ParsedStages), SpecError> {
    let source = &pipeline.source;
    let raw: RawPipeline =
        serde_saphyr::from_str(&source.text).map_err(|e| yaml_error(source, &e))?;
    if raw.version.value != 1 {
        return Err(source.invalid(
            span_of(&raw.version),
            format!("unsupported pipeline version {}", raw.version.value),
            "expected `version: 1`",
            Some("this edgebuild reads version 1 pipeline files".into()),
        ));
    }
    let mut stages = Vec::new();
    let mut errors = Vec::new();
    for (name, raw_stage) in raw.stages {
        match parse_stage(paths, ops, index, pipeline, &name, raw_stage) {
            Ok(stage) => stages.push(stage),
            Err(mut e) => errors.append(&mut e),
        }
    }
    Ok((raw.description, (stages, errors)))
}

fn parse_stage(
    paths: &PathChecker,
    ops: &OpRegistry,
    index: usize,
    pipeline: &Pipeline,
    name: &str,
    raw: Spanned<RawStage>,
) -> Result<Stage, Vec<SpecError>> {
    let source = &pipeline.source;
    let stage_span = span_of(&raw);
    let id = format!("{}:{}", pipeline.name, name);
    let raw = raw.value;
    let mut errors = Vec::new();

    if !super::valid_name(name) {
        errors.push(source.invalid(
            source.key_before(name, stage_span),
            format!("invalid stage name `{name}`"),
            "stage names use letters, digits, `_`, `-` and `.`, and start with a letter, a digit or `_`",
            None,
        ));
    }

    let (action, action_span) = match (&raw.cmd, &raw.op) {
        (None, None) if raw.manual.is_some() => {
            let manual = raw.manual.as_ref().expect("checked");
            let items: Vec<String> = manual.value.iter().map(|i| i.trim().to_string()).collect();
            if items.is_empty() || items.iter().any(String::is_empty) {
                errors.push(source.invalid(
                    span_of(manual),
                    format!("the checklist of manual stage {id} has an empty item or none"),
                    "checklist",
                    Some("list what a person checks, e.g. `- \"flashed and checked on the bench board\"`".into()),
                ));
            }
            (Action::Manual(items), span_of(manual))
        }
        (Some(cmd), None) if raw.manual.is_none() => (Action::Cmd(cmd.value.clone()), span_of(cmd)),
        (None, Some(op)) if raw.manual.is_none() => match ops.find(&op.value) {
            Some(found) => (
                Action::Op {
                    name: found.name().to_string(),
                    version: found.version(),
                },
                span_of(op),
            ),
            None => {
                let known: Vec<&str> = ops.names();
                let help = match did_you_mean(&op.value, known.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if known.is_empty() => "this edgebuild has no built-in ops".to_string(),
                    None => format!("built-in ops: {}", known.join(", ")),
                };
                errors.push(source.invalid(
                    span_of(op),
                    format!("unknown op `{}` in stage {id}", op.value),
                    "unknown op",
                    Some(help),
                ));
                (Action::Cmd(String::new()), span_of(op))
            }
        },
        (None, None) => {
            errors.push(source.invalid(
                source.key_before(name, stage_span),
                format!("stage {id} has neither `cmd` nor `op`"),
                "nothing to run",
                Some("add `cmd: \"...\"` (a shell command), `op: NAME` (a built-in op) or `manual: [...]` (a checklist to sign off)".into()),
            ));
            (Action::Cmd(String::new()), stage_span)
        }
        (cmd, op) => {
            let span = cmd
                .as_ref()
                .map(span_of)
                .or(op.as_ref().map(span_of))
                .unwrap_or(stage_span);
            let present: Vec<&str> = [
                ("`cmd`", cmd.is_some()),
                ("`op`", op.is_some()),
                ("`manual`", raw.manual.is_some()),
            ]
            .into_iter()
            .filter_map(|(k, on)| on.then_some(k))
            .collect();
            let what = match present.as_slice() {
                [a, b] => format!("both {a} and {b}"),
                _ => "`cmd`, `op` and `manual`".to_string(),
            };
            errors.push(source.invalid(
                span,
                format!("stage {id} has {what}"),
                "a stage is a command, an op or a manual step",
                Some("keep one of `cmd:`, `op:` and `manual:`".into()),
            ));
            (Action::Cmd(String::new()), stage_span)
        }
    };

    let mut ports = |raw: RawPorts, what: &str| -> (Vec<Port>, bool) {
        let (named, items): (bool, Vec<(String, Spanned<String>)>) = match raw {
            RawPorts::Empty => (false, Vec::new()),
            RawPorts::List(items) => (
                false,
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| (i.to_string(), p))
                    .collect(),
            ),
            RawPorts::Map(items) => (true, items),
        };
        let mut out = Vec::new();
        for (port_name, path) in items {
            let span = span_of(&path);
            match paths.check(&path.value).and_then(check_not_reserved) {
                Ok(normalized) => out.push(Port {
                    name: port_name,
                    path: normalized,
                    span,
                }),
                Err(why) => errors.push(source.invalid(
                    span,
                    format!("{what} path `{}` of {id} {why}", path.value),
                    "not a workspace path a stage may use",
                    Some("paths are relative to the workspace root and stay inside it".into()),
                )),
            }
        }
        (out, named)
    };
    let (inputs, named_inputs) = ports(raw.inputs, "input");
    let (outputs, named_outputs) = ports(raw.outputs, "output");
    for (i, port) in outputs.iter().enumerate() {
        if outputs[..i]
            .iter()
            .any(|p| paths_overlap(&p.path, &port.path))
        {
            errors.push(source.invalid(
                port.span,
                format!(
                    "output `{}` of {id} overlaps another of its outputs",
                    port.path
                ),
                "overlapping output",
                None,
            ));
        }
    }

    let mut env = Vec::new();
    for var in &raw.env {
        let valid = !var.value.is_empty()
            && !var.value.starts_with(|c: char| c.is_ascii_digit())
            && var
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            errors.push(source.invalid(
                span_of(var),
                format!("`{}` is not an environment variable name", var.value),
                "invalid name",
                None,
            ));
        } else if !env.contains(&var.value) {
            env.push(var.value.clone());
        }
    }
    env.sort();

    let params = match &raw.params {
        None => serde_json::Value::Null,
        Some(params) => {
            let value = params_value(source, params, &id, &mut errors);
            let size = crate::hash::canonical_json(&value).len();
            if size > MAX_PARAMS_BYTES {
                errors.push(source.invalid(
                    span_of(params),
                    format!(
                        "the params of {id} are {size} bytes of JSON; a stage's params may hold at most {} KiB",
                        MAX_PARAMS_BYTES >> 10
                    ),
                    "params",
                    Some("params are part of the stage's key and its lock entry: keep data in an input file (SPEC.md, \"Limits\")".into()),
                ));
            }
            value
        }
    };
    let after: Vec<String> = raw
        .after
        .iter()
        .map(|a| {
            if a.value.contains(':') {
                a.value.clone()
            } else {
                format!("{}:{}", pipeline.name, a.value)
            }
        })
        .collect();

    let stage = Stage {
        id: id.clone(),
        pipeline: index,
        name: name.to_string(),
        description: raw.description,
        action,
        inputs,
        outputs,
        named_inputs,
        named_outputs,
        params,
        env,
        tools: raw.tools,
        volatile: raw.volatile,
        after,
        remote: raw.remote.unwrap_or(true),
        platform: raw.platform,
        span: stage_span,
        action_span,
    };

    if matches!(stage.action, Action::Manual(_)) && !stage.outputs.is_empty() {
        errors.push(source.invalid(
            stage.action_span,
            format!("manual stage {id} declares outputs"),
            "a manual step",
            Some("a manual stage records a sign-off, it makes no files: drop `outputs` (dependents name it in `after`)".into()),
        ));
    }
    if let (Action::Cmd(template), Some(cmd)) = (&stage.action, &raw.cmd) {
        let cmd_span = span_of(cmd);
        if let Err(problem) = crate::subst::parse(template) {
            let at = source.find_from(cmd_span.offset(), &problem.reference, cmd_span);
            errors.push(source.invalid(at, problem.message, "here", None));
        } else if let Err(problem) = crate::subst::expand(template, &stage) {
            let at = source.find_from(cmd_span.offset(), &problem.reference, cmd_span);
            errors.push(source.invalid(at, problem.message, "undefined", problem.help));
        }
    }
    if let Action::Op { name, .. } = &stage.action
        && let Some(op) = ops.find(name)
        && let Err(message) = op.check(&stage)
    {
        // Point at the offending value when the message quotes one that appears in the stage.
        let quoted = message.split('`').nth(1).filter(|q| !q.is_empty());
        let span = quoted
            .map(|q| source.find_from(stage.span.offset(), q, stage.action_span))
            .unwrap_or(stage.action_span);
        errors.push(source.invalid(span, format!("{id}: {message}"), "here", None));
    }
    if errors.is_empty() {
        Ok(stage)
    } else {
        Err(errors)
    }
}

/// The largest canonical JSON of one stage's params (SPEC.md, "Limits").
pub const MAX_PARAMS_BYTES: usize = 1 << 20;

/// A params value as JSON. Numbers stay exact: an integer beyond 64 bits (which the YAML parser
/// reads as a rounded float) and a non-finite float are refused, pointing at them.
fn params_value(
    source: &super::Source,
    node: &Spanned<RawParam>,
    id: &str,
    errors: &mut Vec<SpecError>,
) -> serde_json::Value {
    use serde_json::Value;
    match &node.value {
        RawParam::Null => Value::Null,
        RawParam::Bool(b) => Value::Bool(*b),
        RawParam::Int(n) => Value::Number(n.clone()),
        RawParam::Str(s) => Value::String(s.clone()),
        RawParam::Float(f) => {
            let span = span_of(node);
            let written = source
                .text
                .get(span.offset()..span.offset() + span.len())
                .unwrap_or_default()
                .trim();
            let digits = written.strip_prefix(['+', '-']).unwrap_or(written);
            let integer = !digits.is_empty()
                && (digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
                    || digits.starts_with("0x")
                    || digits.starts_with("0o"));
            match serde_json::Number::from_f64(*f) {
                Some(n) if !integer => Value::Number(n),
                _ => {
                    let (message, help) = if integer {
                        (
                            format!(
                                "param `{written}` of {id} is an integer that does not fit in 64 bits"
                            ),
                            "params keep numbers exact, and a larger integer would be rounded: write it as a string (in quotes)",
                        )
                    } else {
                        (
                            format!("param `{written}` of {id} is not a finite number"),
                            "params are JSON numbers: infinities and NaN have no JSON form; write it as a string (in quotes)",
                        )
                    };
                    errors.push(source.invalid(span, message, "here", Some(help.into())));
                    Value::Null
                }
            }
        }
        RawParam::Seq(items) => Value::Array(
            items
                .iter()
                .map(|item| params_value(source, item, id, errors))
                .collect(),
        ),
        RawParam::Map(items) => Value::Object(
            items
                .iter()
                .map(|(key, item)| (key.clone(), params_value(source, item, id, errors)))
                .collect(),
        ),
    }
}

fn check_not_reserved(path: String) -> Result<String, &'static str> {
    let top = path.split('/').next().unwrap_or_default();
    if RESERVED.contains(&top) {
        Err(
            "is inside a directory that belongs to edgebuild (pipelines/, cache/, .edgebuild/) or git",
        )
    } else {
        Ok(path)
    }
}

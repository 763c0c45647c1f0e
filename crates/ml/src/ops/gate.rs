//! `gate`: checks of values in JSON inputs against thresholds; a failed check blocks every stage
//! that depends on the gate (SPEC.md, "`gate`").
//!
//! A check names an input, a dotted path into its JSON (`kld.p99`, `layers.0.macs`) and a `min`
//! and/or `max`. The verdict file lists every check with its measured value, threshold and
//! verdict, and is written (and cached) whether the gate passes or fails, so the same inputs give
//! the same verdict without re-running anything upstream.

use serde::{Deserialize, Serialize};

use edgebuild_engine::op::{Op, OpContext, OpError, OpOutcome};

pub struct Gate;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GateParams {
    checks: Vec<Check>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Check {
    name: String,
    input: String,
    path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max: Option<f64>,
}

/// Looks up a dotted path (`a.b.0.c`) in a JSON value.
pub fn lookup<'a>(value: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(value, |v, part| match v {
        serde_json::Value::Array(items) => items.get(part.parse::<usize>().ok()?),
        other => other.get(part),
    })
}

fn parse_params(params: &serde_json::Value) -> Result<GateParams, String> {
    let parsed: GateParams =
        serde_json::from_value(params.clone()).map_err(|e| format!("params: {e}"))?;
    if parsed.checks.is_empty() {
        return Err("params: `checks` is empty".into());
    }
    for check in &parsed.checks {
        if check.min.is_none() && check.max.is_none() {
            return Err(format!(
                "check `{}` has neither `min` nor `max`",
                check.name
            ));
        }
    }
    Ok(parsed)
}

impl Op for Gate {
    fn name(&self) -> &'static str {
        "gate"
    }

    fn version(&self) -> u32 {
        1
    }

    fn is_gate(&self) -> bool {
        true
    }

    fn verdict_of(
        &self,
        outputs: &std::collections::BTreeMap<String, std::path::PathBuf>,
    ) -> Option<bool> {
        let bytes = std::fs::read(outputs.get("verdict")?).ok()?;
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()?
            .get("passed")?
            .as_bool()
    }

    fn check(&self, stage: &edgebuild_engine::stage::Stage) -> Result<(), String> {
        let params = parse_params(&stage.params)?;
        for check in &params.checks {
            if !stage.inputs.iter().any(|p| p.name == check.input) {
                return Err(format!(
                    "check `{}` reads input `{}`, which the stage does not declare",
                    check.name, check.input
                ));
            }
        }
        if stage.outputs.len() != 1 || stage.outputs[0].name != "verdict" {
            return Err("a gate has exactly one output, named `verdict`".into());
        }
        Ok(())
    }

    fn run(&self, ctx: &OpContext) -> Result<OpOutcome, OpError> {
        let params = parse_params(ctx.params)
            .map_err(|e| OpError::BadInput(format!("{}: {e}", ctx.stage_id)))?;
        let mut results = Vec::new();
        let mut passed_all = true;
        let mut inputs = std::collections::BTreeMap::new();
        for check in &params.checks {
            if !inputs.contains_key(&check.input) {
                inputs.insert(
                    check.input.clone(),
                    edgebuild_engine::op::read_json(ctx.input(&check.input)?)?,
                );
            }
            let value = lookup(&inputs[&check.input], &check.path)
                .and_then(|v| v.as_f64())
                .ok_or_else(|| {
                    OpError::BadInput(format!(
                        "{}: check `{}`: input `{}` has no number at `{}`",
                        ctx.stage_id, check.name, check.input, check.path
                    ))
                })?;
            let passed =
                check.min.is_none_or(|m| value >= m) && check.max.is_none_or(|m| value <= m);
            passed_all &= passed;
            let threshold = match (check.min, check.max) {
                (Some(lo), Some(hi)) => format!("in [{lo}, {hi}]"),
                (Some(lo), None) => format!(">= {lo}"),
                (None, Some(hi)) => format!("<= {hi}"),
                (None, None) => unreachable!("checked in parse_params"),
            };
            ctx.log(format!(
                "{} {}: {value} (needs {threshold}; {}: {})",
                if passed { "PASS" } else { "FAIL" },
                check.name,
                check.input,
                check.path
            ));
            results.push(serde_json::json!({
                "name": check.name,
                "input": check.input,
                "path": check.path,
                "value": value,
                "min": check.min,
                "max": check.max,
                "passed": passed,
            }));
        }
        let verdict = serde_json::json!({ "passed": passed_all, "checks": results });
        edgebuild_engine::op::write_json(ctx.output("verdict")?, &verdict)?;
        Ok(if passed_all {
            OpOutcome::Success
        } else {
            OpOutcome::GateFailed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_paths_reach_into_objects_and_arrays() {
        let v = serde_json::json!({"kld": {"p99": 0.5}, "layers": [{"macs": 7}], "a.b": 1});
        assert_eq!(lookup(&v, "kld.p99").and_then(|v| v.as_f64()), Some(0.5));
        assert_eq!(
            lookup(&v, "layers.0.macs").and_then(|v| v.as_f64()),
            Some(7.0)
        );
        assert_eq!(lookup(&v, "kld.p50"), None);
    }
}

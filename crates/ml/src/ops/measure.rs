//! `measure`: batch-1 latency of the quantized model on this host, next to the report's
//! prediction for the host profile, so the roofline's error is visible.
//!
//! Timings are measurements, not facts about the model: a `measure` stage must be declared
//! `volatile: true`, and nothing that ships reads its output (SPEC.md, "Volatile outputs").

use std::time::Instant;

use serde::Deserialize;

use super::evaluate::{percentile, round6};
use crate::data::Dataset;
use crate::model::QuantModel;
use edgebuild_engine::op::{Op, OpContext, OpError, OpOutcome};

pub struct Measure;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeasureParams {
    #[serde(default = "default_runs")]
    runs: usize,
    #[serde(default = "default_warmup")]
    warmup: usize,
    /// The profile in the report whose prediction is compared.
    #[serde(default = "default_profile")]
    profile: String,
}

/// The most timed or warm-up runs a `measure` stage makes (SPEC.md, "Limits").
pub const MAX_RUNS: usize = 1_000_000;

impl MeasureParams {
    fn check(&self) -> Result<(), String> {
        if self.runs == 0 || self.runs > MAX_RUNS {
            return Err(format!(
                "params: `runs: {}` is not a number of timed runs: give 1 to {MAX_RUNS}",
                self.runs
            ));
        }
        if self.warmup > MAX_RUNS {
            return Err(format!(
                "params: `warmup: {}` is not a number of warm-up runs: give 0 to {MAX_RUNS}",
                self.warmup
            ));
        }
        let valid = !self.profile.is_empty()
            && self
                .profile
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if !valid {
            return Err(format!(
                "params: `profile: {}` is not a device profile name",
                self.profile
            ));
        }
        Ok(())
    }
}

fn default_runs() -> usize {
    200
}
fn default_warmup() -> usize {
    20
}
fn default_profile() -> String {
    "host".into()
}

impl Op for Measure {
    fn name(&self) -> &'static str {
        "measure"
    }

    fn version(&self) -> u32 {
        1
    }

    fn check(&self, stage: &edgebuild_engine::stage::Stage) -> Result<(), String> {
        edgebuild_engine::op::check_ports(stage, &["model", "data", "report"], &[], &["latency"])?;
        if !stage.volatile {
            return Err(
                "measured timings are not reproducible: declare the stage `volatile: true`".into(),
            );
        }
        let params: MeasureParams = edgebuild_engine::op::stage_params(stage)?;
        params.check()
    }

    fn fingerprint(&self) -> std::collections::BTreeMap<String, String> {
        super::candle_fingerprint()
    }

    fn run(&self, ctx: &OpContext) -> Result<OpOutcome, OpError> {
        let params: MeasureParams = edgebuild_engine::op::params(ctx)?;
        params.check().map_err(OpError::BadInput)?;
        let model = QuantModel::load(ctx.input("model")?).map_err(OpError::BadInput)?;
        let data = Dataset::load(ctx.input("data")?, &model.arch.input_shape)
            .map_err(OpError::BadInput)?;
        let report = edgebuild_engine::op::read_json(ctx.input("report")?)?;
        let Some(predicted) = report["predicted"].get(&params.profile) else {
            let known: Vec<&str> = report["predicted"]
                .as_object()
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default();
            return Err(OpError::BadInput(format!(
                "{}: profile `{}` is not in the report (its profiles: {})",
                ctx.stage_id,
                params.profile,
                known.join(", ")
            )));
        };
        let predicted = predicted["latency_ms"].as_f64();
        let mut times = Vec::with_capacity(params.runs);
        for i in 0..params.warmup + params.runs {
            let x = data.x.narrow(0, i % data.len(), 1).map_err(super::candle)?;
            let start = Instant::now();
            let y = model.forward(&x).map_err(super::candle)?;
            y.flatten_all()
                .map_err(super::candle)?
                .to_vec1::<f32>()
                .map_err(super::candle)?;
            if i >= params.warmup {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        let p50 = percentile(&times, 50.0);
        let out = serde_json::json!({
            "runs": times.len(),
            "batch": 1,
            "p50_ms": round6(p50),
            "p90_ms": round6(percentile(&times, 90.0)),
            "p99_ms": round6(percentile(&times, 99.0)),
            "profile": params.profile,
            "predicted_ms": predicted,
            "measured_over_predicted": predicted.filter(|p| *p > 0.0).map(|p| round6(p50 / p)),
        });
        edgebuild_engine::op::write_json(ctx.output("latency")?, &out)?;
        ctx.log(format!(
            "batch-1 latency p50 {p50:.4} ms, p99 {:.4} ms (predicted for {}: {})",
            percentile(&times, 99.0),
            params.profile,
            predicted.map_or("n/a".into(), |p| format!("{p:.4} ms"))
        ));
        Ok(OpOutcome::Success)
    }
}

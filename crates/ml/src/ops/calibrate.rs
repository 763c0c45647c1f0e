//! `calibrate`: the range of every activation of a float model over the calibration set, the
//! input of int8 quantization (SPEC.md, "`calibrate`"). An output file of its own, inspectable
//! and hashed, so a new calibration set visibly changes the int8 model and the firmware.

use crate::data::Dataset;
use crate::int8::calibrate::{Method, calibrate};
use crate::model::{Architecture, FloatWeights};
use edgebuild_engine::op::{Op, OpContext, OpError, OpOutcome};

pub struct Calibrate;

fn method(params: &serde_json::Value) -> Result<Method, String> {
    let v = if params.is_null() {
        serde_json::json!({"method": "min_max"})
    } else {
        params.clone()
    };
    serde_json::from_value(v).map_err(|e| {
        format!("params: {e} (`method: min_max`, or `method: percentile` with `percentile: 99.99`)")
    })
}

impl Op for Calibrate {
    fn name(&self) -> &'static str {
        "calibrate"
    }

    fn version(&self) -> u32 {
        1
    }

    fn check(&self, stage: &edgebuild_engine::stage::Stage) -> Result<(), String> {
        edgebuild_engine::op::check_ports(
            stage,
            &["weights", "architecture", "calibration"],
            &[],
            &["ranges"],
        )?;
        method(&stage.params).map(|_| ())
    }

    fn run(&self, ctx: &OpContext) -> Result<OpOutcome, OpError> {
        let bad = |e: String| OpError::BadInput(format!("{}: {e}", ctx.stage_id));
        let method = method(ctx.params).map_err(bad)?;
        let arch = Architecture::load(ctx.input("architecture")?).map_err(OpError::BadInput)?;
        let weights =
            FloatWeights::load(ctx.input("weights")?, &arch).map_err(OpError::BadInput)?;
        let path = ctx.input("calibration")?;
        let data = Dataset::load(path, &arch.input_shape).map_err(OpError::BadInput)?;
        let graph = arch.graph().map_err(OpError::BadInput)?;
        let samples = data
            .x
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(super::candle)?;
        let reference = weights.reference().map_err(OpError::BadInput)?;
        let ranges = calibrate(&graph, &reference, &samples, &arch.input_shape, method)
            .map_err(|e| OpError::BadInput(format!("{}: {e}", path.display())))?;
        edgebuild_engine::op::write_json(ctx.output("ranges")?, &ranges)?;
        ctx.log(format!(
            "{} activation ranges from {} calibration samples ({:?})",
            ranges.tensors.len(),
            ranges.samples,
            method
        ));
        Ok(OpOutcome::Success)
    }
}

//! `int8`: a float model and its calibrated ranges → a full-integer int8 model (TFLite's int8
//! specification; SPEC.md, "`int8`"), the file the C runtime is generated from, and the same
//! model as a QDQ ONNX file for Linux-class devices and ONNX Runtime, and (optionally) as a
//! `.tflite` file for LiteRT and TFLite Micro.

use crate::int8::calibrate::Ranges;
use crate::int8::lower::lower;
use crate::model::{Architecture, FloatWeights};
use edgebuild_engine::op::{Op, OpContext, OpError, OpOutcome};

pub struct Int8;

impl Op for Int8 {
    fn name(&self) -> &'static str {
        "int8"
    }

    fn version(&self) -> u32 {
        // 3: the .tflite export zeroes the weights and bias of channels with multiplier 0
        3
    }

    fn check(&self, stage: &edgebuild_engine::stage::Stage) -> Result<(), String> {
        // `tflite` is optional (SPEC.md, "`int8`")
        let outputs: &[&str] = if stage.outputs.iter().any(|p| p.name == "tflite") {
            &["model", "onnx", "tflite"]
        } else {
            &["model", "onnx"]
        };
        edgebuild_engine::op::check_ports(
            stage,
            &["weights", "architecture", "ranges"],
            &[],
            outputs,
        )?;
        if !stage.params.is_null() && stage.params.as_object().is_none_or(|o| !o.is_empty()) {
            return Err("params: the int8 op takes none".into());
        }
        Ok(())
    }

    fn run(&self, ctx: &OpContext) -> Result<OpOutcome, OpError> {
        let arch = Architecture::load(ctx.input("architecture")?).map_err(OpError::BadInput)?;
        let weights =
            FloatWeights::load(ctx.input("weights")?, &arch).map_err(OpError::BadInput)?;
        let ranges_path = ctx.input("ranges")?;
        let ranges: Ranges = serde_json::from_value(edgebuild_engine::op::read_json(ranges_path)?)
            .map_err(|e| {
                OpError::BadInput(format!("{}: not a ranges file: {e}", ranges_path.display()))
            })?;
        let graph = arch.graph().map_err(OpError::BadInput)?;
        let params = weights.params().map_err(OpError::BadInput)?;
        let model = lower(&graph, &params, &ranges, &arch.name, &arch.labels)
            .map_err(|e| OpError::BadInput(format!("{}: {e}", ctx.stage_id)))?;
        model.save(ctx.output("model")?).map_err(OpError::Failed)?;
        let onnx = crate::int8::qdq::export(&graph, &params, &model)
            .map_err(|e| OpError::BadInput(format!("{}: the QDQ export: {e}", ctx.stage_id)))?;
        edgebuild_engine::op::write_output(ctx.output("onnx")?, &onnx)?;
        if let Ok(path) = ctx.output("tflite") {
            let tflite = crate::int8::tflite::export(&model).map_err(|e| {
                OpError::BadInput(format!("{}: the .tflite export: {e}", ctx.stage_id))
            })?;
            edgebuild_engine::op::write_output(path, &tflite)?;
        }
        let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
        for n in &model.nodes {
            *kinds.entry(n.kernel.name()).or_default() += 1;
        }
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        ctx.log(format!(
            "{} kernel calls ({}), {} bytes of constants",
            model.nodes.len(),
            kinds.join(", "),
            model.constant_bytes()
        ));
        Ok(OpOutcome::Success)
    }
}

//! `import`: an ONNX model in, an edgebuild graph architecture, safetensors weights and an
//! import report out (SPEC.md, "`import`"). A content-hashed stage like any other: a new export
//! re-runs exactly what depends on it.

use std::collections::BTreeMap;

use crate::onnx::{ImportOptions, import};
use edgebuild_engine::op::{Op, OpContext, OpError, OpOutcome};

pub struct Import;

impl Op for Import {
    fn name(&self) -> &'static str {
        "import"
    }

    fn version(&self) -> u32 {
        1
    }

    fn check(&self, stage: &edgebuild_engine::stage::Stage) -> Result<(), String> {
        edgebuild_engine::op::check_ports(
            stage,
            &["model"],
            &[],
            &["architecture", "weights", "report"],
        )?;
        let params = if stage.params.is_null() {
            serde_json::json!({})
        } else {
            stage.params.clone()
        };
        serde_json::from_value::<ImportOptions>(params).map_err(|e| format!("params: {e}"))?;
        Ok(())
    }

    fn run(&self, ctx: &OpContext) -> Result<OpOutcome, OpError> {
        let options: ImportOptions = edgebuild_engine::op::params(ctx)?;
        let path = ctx.input("model")?;
        let imported = import(path, &options)
            .map_err(|e| OpError::BadInput(format!("{}: {e}", path.display())))?;
        let mut arch = serde_json::to_vec_pretty(&imported.arch)
            .map_err(|e| OpError::Failed(e.to_string()))?;
        arch.push(b'\n');
        edgebuild_engine::op::write_output(ctx.output("architecture")?, &arch)?;
        crate::model::save_safetensors(ctx.output("weights")?, &imported.weights)
            .map_err(OpError::Failed)?;
        edgebuild_engine::op::write_json(ctx.output("report")?, &imported.report)?;
        let kept: BTreeMap<String, u64> =
            serde_json::from_value(imported.report["kept"].clone()).unwrap_or_default();
        let kept: Vec<String> = kept.iter().map(|(op, n)| format!("{n} {op}")).collect();
        ctx.log(format!(
            "{} nodes in, {} kept ({}); {} constants folded, {} batchnorm(s) folded, {} removed",
            imported.report["onnx"]["nodes"],
            imported.report["model"]["nodes"],
            kept.join(", "),
            imported.report["folded_constants"]
                .as_array()
                .map_or(0, Vec::len),
            imported.report["batchnorm_folded"]
                .as_array()
                .map_or(0, Vec::len),
            imported.report["removed"].as_array().map_or(0, Vec::len),
        ));
        Ok(OpOutcome::Success)
    }
}

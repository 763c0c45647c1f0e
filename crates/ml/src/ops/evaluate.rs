//! `evaluate`: the float model against the quantized model on a held-out set.
//!
//! The float model runs with candle on the safetensors weights; the quantized model runs the
//! GGUF through candle's quantized kernels (`QMatMul`), the path a device runtime takes, never
//! dequantize-then-float (SPEC.md, "`evaluate`"). Metrics: top-1 accuracy of each, the drop in points,
//! top-1 agreement, mean and p99 KL divergence between their output distributions, and the
//! largest absolute difference between their raw outputs.

use serde::Deserialize;

use crate::data::Dataset;
use crate::model::{Architecture, FloatWeights, QuantModel, forward_graph, probabilities};
use edgebuild_engine::op::{Op, OpContext, OpError, OpOutcome};

pub struct Evaluate;

/// The quantized side: a GGUF through candle's quantized kernels, or an int8 model through the
/// reference int8 kernels (the device runtime's integers).
pub enum Quantized {
    Gguf(QuantModel),
    Int8(crate::int8::Int8Model),
}

impl Quantized {
    /// A GGUF (by its magic) or an int8 model.
    pub fn load(path: &std::path::Path) -> Result<Quantized, String> {
        let mut magic = [0u8; 4];
        let is_gguf = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
            && &magic == b"GGUF";
        if is_gguf {
            QuantModel::load(path).map(Quantized::Gguf)
        } else {
            crate::int8::Int8Model::load(path).map(Quantized::Int8)
        }
    }

    /// Outputs for a batch, as floats.
    pub fn forward(&self, x: &candle_core::Tensor) -> Result<candle_core::Tensor, String> {
        match self {
            Quantized::Gguf(q) => q.forward(x).map_err(|e| e.to_string()),
            Quantized::Int8(m) => {
                use rayon::prelude::*;
                let dims = x.dims().to_vec();
                let n = dims[0];
                let data = x
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| e.to_string())?;
                let per = data.len() / n.max(1);
                let outs: Vec<Vec<f32>> = data
                    .par_chunks(per.max(1))
                    .map(|s| m.run(&m.quantize_input(s)).map(|q| m.dequantize_output(&q)))
                    .collect::<Result<_, _>>()?;
                let mut shape = vec![n];
                shape.extend(&m.output_shape);
                candle_core::Tensor::from_vec(outs.concat(), shape, &candle_core::Device::Cpu)
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// How each tensor (GGUF) or node (int8) is computed.
    pub fn kernels(&self) -> serde_json::Value {
        match self {
            Quantized::Gguf(q) => serde_json::json!(q.types),
            Quantized::Int8(m) => serde_json::Value::Object(
                m.nodes
                    .iter()
                    .map(|n| {
                        (
                            n.name.clone(),
                            serde_json::json!(format!("int8 {}", n.kernel.name())),
                        )
                    })
                    .collect(),
            ),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluateParams {
    #[serde(default = "default_batch")]
    batch_size: usize,
}

fn default_batch() -> usize {
    256
}

/// Rounds a metric to 6 decimals so reports stay readable and stable.
pub fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

/// Percentile (nearest rank) of unsorted values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

impl Op for Evaluate {
    fn name(&self) -> &'static str {
        "evaluate"
    }

    fn version(&self) -> u32 {
        1
    }

    fn check(&self, stage: &edgebuild_engine::stage::Stage) -> Result<(), String> {
        edgebuild_engine::op::check_ports(
            stage,
            &["weights", "architecture", "model", "data"],
            &[],
            &["metrics"],
        )
    }

    fn fingerprint(&self) -> std::collections::BTreeMap<String, String> {
        super::candle_fingerprint()
    }

    fn run(&self, ctx: &OpContext) -> Result<OpOutcome, OpError> {
        let params: EvaluateParams = edgebuild_engine::op::params(ctx)?;
        let arch = Architecture::load(ctx.input("architecture")?).map_err(OpError::BadInput)?;
        let weights =
            FloatWeights::load(ctx.input("weights")?, &arch).map_err(OpError::BadInput)?;
        let quant = Quantized::load(ctx.input("model")?).map_err(OpError::BadInput)?;
        if let Quantized::Gguf(q) = &quant
            && q.arch != arch
        {
            return Err(OpError::BadInput(format!(
                "{}: the GGUF was built from a different architecture than {}",
                ctx.stage_id,
                ctx.input("architecture")?.display()
            )));
        }
        if let Quantized::Int8(m) = &quant
            && (m.input_shape != arch.input_shape
                || m.output_shape != arch.graph().map_err(OpError::BadInput)?.output_shape())
        {
            return Err(OpError::BadInput(format!(
                "{}: the int8 model takes {:?} and gives {:?}, not what {} does",
                ctx.stage_id,
                m.input_shape,
                m.output_shape,
                ctx.input("architecture")?.display()
            )));
        }
        let data_path = ctx.input("data")?;
        let data = Dataset::load(data_path, &arch.input_shape).map_err(OpError::BadInput)?;
        let labels = data.labels(data_path).map_err(OpError::BadInput)?;
        let classes = arch.classes().map_err(OpError::BadInput)?;
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes) {
            return Err(OpError::BadInput(format!(
                "{}: label {bad} is out of range for a model with {classes} classes",
                data_path.display()
            )));
        }

        let graph = arch.graph().map_err(OpError::BadInput)?;
        let float_params = weights.params().map_err(OpError::BadInput)?;
        let n = data.len();
        let (mut float_ok, mut quant_ok, mut agree) = (0usize, 0usize, 0usize);
        let mut klds = Vec::with_capacity(n);
        let mut max_abs = 0f64;
        let batch = params.batch_size.max(1);
        for start in (0..n).step_by(batch) {
            let len = batch.min(n - start);
            let x = data.x.narrow(0, start, len).map_err(super::candle)?;
            let float_out = forward_graph(&graph, &float_params, &x).map_err(OpError::Failed)?;
            let quant_out = quant.forward(&x).map_err(OpError::Failed)?;
            max_abs = max_abs.max(
                (&float_out - &quant_out)
                    .map_err(super::candle)?
                    .abs()
                    .map_err(super::candle)?
                    .flatten_all()
                    .map_err(super::candle)?
                    .max(0)
                    .map_err(super::candle)?
                    .to_scalar::<f32>()
                    .map_err(super::candle)? as f64,
            );
            let p = probabilities(&arch, &float_out)
                .map_err(super::candle)?
                .to_vec2::<f32>()
                .map_err(super::candle)?;
            let q = probabilities(&arch, &quant_out)
                .map_err(super::candle)?
                .to_vec2::<f32>()
                .map_err(super::candle)?;
            for (i, (p_row, q_row)) in p.iter().zip(&q).enumerate() {
                let (fp, qp) = (argmax(p_row), argmax(q_row));
                let label = labels[start + i] as usize;
                float_ok += usize::from(fp == label);
                quant_ok += usize::from(qp == label);
                agree += usize::from(fp == qp);
                let kld: f64 = p_row
                    .iter()
                    .zip(q_row)
                    .filter(|(p, _)| **p > 0.0)
                    .map(|(&p, &q)| p as f64 * ((p as f64) / (q as f64).max(1e-12)).ln())
                    .sum();
                klds.push(kld.max(0.0));
            }
        }
        let frac = |k: usize| k as f64 / n as f64;
        let metrics = serde_json::json!({
            "samples": n,
            "float": { "top1": round6(frac(float_ok)) },
            "quantized": { "top1": round6(frac(quant_ok)) },
            "accuracy_drop_points": round6(100.0 * (frac(float_ok) - frac(quant_ok))),
            "top1_agreement": round6(frac(agree)),
            "kld": {
                "mean": round6(klds.iter().sum::<f64>() / n as f64),
                "p99": round6(percentile(&klds, 99.0)),
            },
            "max_abs_error": round6(max_abs),
            "quantized_kernels": quant.kernels(),
        });
        edgebuild_engine::op::write_json(ctx.output("metrics")?, &metrics)?;
        ctx.log(format!(
            "top-1 float {:.2}%, quantized {:.2}%, agreement {:.2}%, mean KL {:.6}",
            100.0 * frac(float_ok),
            100.0 * frac(quant_ok),
            100.0 * frac(agree),
            klds.iter().sum::<f64>() / n as f64
        ));
        Ok(OpOutcome::Success)
    }
}

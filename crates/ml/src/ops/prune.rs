//! `prune`: magnitude pruning of matmul weights to a target sparsity → safetensors.
//!
//! Per layer, each weight loses its `sparsity` share of smallest-magnitude values; globally, the
//! smallest values across all matmul weights go. Ties break by tensor name and index, so the
//! result is deterministic. Biases and norm parameters are kept.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::model::{Architecture, FloatWeights};
use edgebuild_engine::op::{Op, OpContext, OpError, OpOutcome};

pub struct Prune;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PruneParams {
    sparsity: f64,
    #[serde(default)]
    scope: Scope,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Scope {
    #[default]
    Layer,
    Global,
}

/// Zeroes the `count` smallest-magnitude entries among `(tensor, index, |value|)` candidates.
fn smallest(mut candidates: Vec<(usize, usize, f32)>, count: usize) -> Vec<(usize, usize)> {
    candidates.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
    candidates.truncate(count);
    candidates.into_iter().map(|(t, i, _)| (t, i)).collect()
}

impl Op for Prune {
    fn name(&self) -> &'static str {
        "prune"
    }

    fn version(&self) -> u32 {
        1
    }

    fn check(&self, stage: &edgebuild_engine::stage::Stage) -> Result<(), String> {
        edgebuild_engine::op::check_ports(stage, &["weights", "architecture"], &[], &["weights"])?;
        let params: PruneParams =
            serde_json::from_value(stage.params.clone()).map_err(|e| format!("params: {e}"))?;
        if !(0.0..1.0).contains(&params.sparsity) {
            return Err(format!("sparsity {} is not in [0, 1)", params.sparsity));
        }
        Ok(())
    }

    fn run(&self, ctx: &OpContext) -> Result<OpOutcome, OpError> {
        let params: PruneParams = edgebuild_engine::op::params(ctx)?;
        let arch = Architecture::load(ctx.input("architecture")?).map_err(OpError::BadInput)?;
        let weights =
            FloatWeights::load(ctx.input("weights")?, &arch).map_err(OpError::BadInput)?;
        let specs = arch.tensor_specs().map_err(OpError::BadInput)?;
        let matmul: Vec<&str> = specs
            .iter()
            .filter(|s| s.matmul)
            .map(|s| s.name.as_str())
            .collect();
        let mut values: Vec<Vec<f32>> = matmul
            .iter()
            .map(|name| weights.tensors[*name].flatten_all()?.to_vec1::<f32>())
            .collect::<candle_core::Result<_>>()
            .map_err(super::candle)?;
        let candidates = |t: usize, v: &[f32]| {
            v.iter()
                .enumerate()
                .map(move |(i, x)| (t, i, x.abs()))
                .collect::<Vec<_>>()
        };
        let zeroed: Vec<(usize, usize)> = match params.scope {
            Scope::Layer => values
                .iter()
                .enumerate()
                .flat_map(|(t, v)| {
                    smallest(
                        candidates(t, v),
                        (v.len() as f64 * params.sparsity).floor() as usize,
                    )
                })
                .collect(),
            Scope::Global => {
                let all: Vec<_> = values
                    .iter()
                    .enumerate()
                    .flat_map(|(t, v)| candidates(t, v))
                    .collect();
                let count = (all.len() as f64 * params.sparsity).floor() as usize;
                smallest(all, count)
            }
        };
        for (t, i) in zeroed {
            values[t][i] = 0.0;
        }
        let mut out: BTreeMap<String, Tensor> = weights.tensors.clone();
        for ((name, v), spec) in matmul
            .iter()
            .zip(values)
            .zip(specs.iter().filter(|s| s.matmul))
        {
            let zeros = v.iter().filter(|x| **x == 0.0).count();
            ctx.log(format!(
                "{name}: {:.1}% zeros",
                100.0 * zeros as f64 / v.len() as f64
            ));
            out.insert(
                name.to_string(),
                Tensor::from_vec(v, spec.shape.clone(), &Device::Cpu).map_err(super::candle)?,
            );
        }
        let map: std::collections::HashMap<String, Tensor> = out.into_iter().collect();
        let path = ctx.output("weights")?;
        let tmp = path.with_extension("safetensors.tmp");
        candle_core::safetensors::save(&map, &tmp).map_err(super::candle)?;
        std::fs::rename(&tmp, path)
            .map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))?;
        Ok(OpOutcome::Success)
    }
}

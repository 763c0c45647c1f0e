//! `imatrix`: the importance matrix of a model over a calibration set (llama.cpp's imatrix).
//!
//! For every matmul weight, the mean of the squared input activation per input column, over
//! every row the weight multiplies (one per sample for a linear layer, one per output position
//! for a convolution). A grouped convolution has one such vector per group: each group's output
//! rows multiply their own input columns. Activations come from the f64 reference forward pass
//! ([`crate::model::RefParams`]), and samples are summed in fixed chunks whose partial sums are
//! combined in order, so the result is bit-identical whatever the thread count or CPU (SPEC.md,
//! "`imatrix`").

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Deserialize;

use crate::data::Dataset;
use crate::model::exec::{self, Tensor};
use crate::model::{Architecture, FloatWeights};
use edgebuild_engine::op::{Op, OpContext, OpError, OpOutcome};

pub struct Imatrix;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImatrixParams {
    /// Use at most this many calibration samples (in file order).
    #[serde(default)]
    max_samples: Option<usize>,
}

/// Samples per chunk: the unit of parallel work, fixed so the summation order is too.
const SAMPLES_PER_CHUNK: usize = 32;

/// Per weight: the sums of squares per group and column (`groups × k` values), and the rows
/// seen per group.
#[derive(Default, Clone)]
struct Sums {
    squares: BTreeMap<String, Vec<f64>>,
    rows: BTreeMap<String, u64>,
}

impl Sums {
    /// Adds the rows `[m, k]` that group `group` (of `groups`) of a weight multiplied.
    fn add(&mut self, name: &str, group: usize, groups: usize, rows: &[f64], k: usize) {
        let sums = self
            .squares
            .entry(name.to_string())
            .or_insert_with(|| vec![0.0; groups * k]);
        let sums = &mut sums[group * k..(group + 1) * k];
        for row in rows.chunks(k) {
            for (s, v) in sums.iter_mut().zip(row) {
                *s += v * v;
            }
        }
        if group == 0 {
            *self.rows.entry(name.to_string()).or_default() += (rows.len() / k) as u64;
        }
    }

    fn merge(mut self, other: Sums) -> Sums {
        for (name, values) in other.squares {
            match self.squares.get_mut(&name) {
                Some(sums) => sums.iter_mut().zip(values).for_each(|(s, v)| *s += v),
                None => {
                    self.squares.insert(name, values);
                }
            }
        }
        for (name, rows) in other.rows {
            *self.rows.entry(name).or_default() += rows;
        }
        self
    }
}

impl Op for Imatrix {
    fn name(&self) -> &'static str {
        "imatrix"
    }

    fn version(&self) -> u32 {
        1
    }

    fn check(&self, stage: &edgebuild_engine::stage::Stage) -> Result<(), String> {
        edgebuild_engine::op::check_ports(
            stage,
            &["weights", "architecture", "calibration"],
            &[],
            &["imatrix"],
        )?;
        let params: ImatrixParams = edgebuild_engine::op::stage_params(stage)?;
        if params.max_samples == Some(0) {
            return Err(
                "params: `max_samples: 0` leaves no calibration sample: give at least 1".into(),
            );
        }
        Ok(())
    }

    fn run(&self, ctx: &OpContext) -> Result<OpOutcome, OpError> {
        let params: ImatrixParams = edgebuild_engine::op::params(ctx)?;
        let arch = Architecture::load(ctx.input("architecture")?).map_err(OpError::BadInput)?;
        let weights =
            FloatWeights::load(ctx.input("weights")?, &arch).map_err(OpError::BadInput)?;
        let data = Dataset::load(ctx.input("calibration")?, &arch.input_shape)
            .map_err(OpError::BadInput)?;
        let reference = weights.reference().map_err(OpError::BadInput)?;
        let graph = arch.graph().map_err(OpError::BadInput)?;
        let groups: BTreeMap<String, usize> = graph
            .tensor_specs()
            .into_iter()
            .filter(|t| t.matmul)
            .map(|t| (t.name, t.groups))
            .collect();
        let per_sample: usize = arch.input_shape.iter().product();
        let mut samples = data
            .x
            .flatten_all()
            .map_err(super::candle)?
            .to_vec1::<f32>()
            .map_err(super::candle)?;
        let n = params.max_samples.unwrap_or(usize::MAX).min(data.len());
        samples.truncate(n * per_sample);

        let chunks: Vec<&[f32]> = samples.chunks(SAMPLES_PER_CHUNK * per_sample).collect();
        let partial: Vec<Result<Sums, String>> = chunks
            .par_iter()
            .map(|chunk| {
                let mut sums = Sums::default();
                let mut shape = vec![chunk.len() / per_sample];
                shape.extend(&arch.input_shape);
                let x = Tensor::new(shape, chunk.iter().map(|&v| f64::from(v)).collect());
                let mut observe = |name: &str, group: usize, rows: &[f64], k: usize| {
                    sums.add(name, group, groups[name], rows, k)
                };
                exec::forward(&graph, &reference, x, Some(&mut observe))?;
                Ok(sums)
            })
            .collect();
        let partial: Vec<Sums> = partial
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(OpError::Failed)?;
        let total = partial.into_iter().fold(Sums::default(), Sums::merge);

        let mut tensors = serde_json::Map::new();
        for (name, squares) in &total.squares {
            let rows = total.rows[name];
            let values: Vec<f32> = squares.iter().map(|s| (s / rows as f64) as f32).collect();
            let entry = match groups[name] {
                1 => serde_json::json!({ "rows": rows, "values": values }),
                g => serde_json::json!({ "rows": rows, "groups": g, "values": values }),
            };
            tensors.insert(name.clone(), entry);
        }
        let out = serde_json::json!({
            "format": "edgebuild-imatrix-v1",
            "samples": n,
            "tensors": tensors,
        });
        edgebuild_engine::op::write_json(ctx.output("imatrix")?, &out)?;
        ctx.log(format!(
            "{n} calibration samples, {} weights",
            tensors.len()
        ));
        Ok(OpOutcome::Success)
    }
}

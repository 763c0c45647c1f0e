//! `imatrix`: the importance matrix of a model over a calibration set (llama.cpp's imatrix).
//!
//! For every matmul weight, the mean of the squared input activation per input column, over
//! every row the weight multiplies (one per sample for a linear layer, one per output position
//! for a convolution). Activations come from [`crate::model::reference`], and samples are summed
//! in fixed chunks whose partial sums are combined in order, so the result is bit-identical
//! whatever the thread count or CPU (SPEC.md, "`imatrix`").

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Deserialize;

use crate::data::Dataset;
use crate::model::reference::{RefWeights, forward_sample};
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

#[derive(Default, Clone)]
struct Sums {
    squares: BTreeMap<String, Vec<f64>>,
    rows: BTreeMap<String, u64>,
}

impl Sums {
    fn add(&mut self, name: &str, row: &[f64]) {
        let sums = self
            .squares
            .entry(name.to_string())
            .or_insert_with(|| vec![0.0; row.len()]);
        for (s, v) in sums.iter_mut().zip(row) {
            *s += v * v;
        }
        *self.rows.entry(name.to_string()).or_default() += 1;
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
        )
    }

    fn run(&self, ctx: &OpContext) -> Result<OpOutcome, OpError> {
        let params: ImatrixParams = edgebuild_engine::op::params(ctx)?;
        let arch = Architecture::load(ctx.input("architecture")?).map_err(OpError::BadInput)?;
        let weights =
            FloatWeights::load(ctx.input("weights")?, &arch).map_err(OpError::BadInput)?;
        let data = Dataset::load(ctx.input("calibration")?, &arch.input_shape)
            .map_err(OpError::BadInput)?;
        let reference = RefWeights::from_float(&weights).map_err(super::candle)?;
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
        let partial: Vec<Sums> = chunks
            .par_iter()
            .map(|chunk| {
                let mut sums = Sums::default();
                for sample in chunk.chunks(per_sample) {
                    forward_sample(&arch, &reference, sample, &mut |name, row| {
                        sums.add(name, row)
                    });
                }
                sums
            })
            .collect();
        let total = partial.into_iter().fold(Sums::default(), Sums::merge);

        let mut tensors = serde_json::Map::new();
        for (name, squares) in &total.squares {
            let rows = total.rows[name];
            let values: Vec<f32> = squares.iter().map(|s| (s / rows as f64) as f32).collect();
            tensors.insert(
                name.clone(),
                serde_json::json!({ "rows": rows, "values": values }),
            );
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

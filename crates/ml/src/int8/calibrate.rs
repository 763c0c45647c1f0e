//! Calibration (SPEC.md, "`calibrate`"): the range of every activation of the float graph over
//! the calibration set, which fixes each int8 tensor's scale and zero point.
//!
//! Activations come from the f64 reference forward pass, so the ranges (and the int8 model made
//! from them) are the same on every CPU. `min_max` takes the extremes; `percentile` the given
//! percentile of the values and its mirror (99.99 by default), from a histogram of 2048 bins
//! over each tensor's extremes: outliers then cost less resolution.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::exec::{self, Tensor};
use crate::model::{Graph, RefParams};

/// The fewest calibration samples accepted.
pub const MIN_SAMPLES: usize = 4;
const BINS: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", tag = "method")]
pub enum Method {
    MinMax,
    Percentile {
        #[serde(default = "default_percentile")]
        percentile: f64,
    },
}

fn default_percentile() -> f64 {
    99.99
}

/// A tensor's calibrated range.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Range {
    pub min: f64,
    pub max: f64,
}

/// The ranges file: `{"format", "method", "samples", "tensors": {name: {min, max}}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranges {
    pub format: String,
    pub method: Method,
    pub samples: usize,
    pub tensors: BTreeMap<String, Range>,
}

pub const FORMAT: &str = "edgebuild-ranges-v1";

/// Samples run through the reference at once.
const CHUNK: usize = 8;

fn run_all(
    graph: &Graph,
    params: &RefParams,
    samples: &[f32],
    input_shape: &[usize],
    each: &mut dyn FnMut(&str, &[f64]),
) -> Result<(), String> {
    let per: usize = input_shape.iter().product();
    for chunk in samples.chunks(CHUNK * per) {
        let mut shape = vec![chunk.len() / per];
        shape.extend(input_shape);
        let x = Tensor::new(shape, chunk.iter().map(|&v| f64::from(v)).collect());
        exec::forward_each(graph, params, x, None, &mut |name, t| each(name, &t.data))?;
    }
    Ok(())
}

/// Calibrates every activation of `graph` over `samples` (`[n, input_shape...]` flattened).
pub fn calibrate(
    graph: &Graph,
    params: &RefParams,
    samples: &[f32],
    input_shape: &[usize],
    method: Method,
) -> Result<Ranges, String> {
    let per: usize = input_shape.iter().product();
    let n = samples.len() / per.max(1);
    if n < MIN_SAMPLES {
        return Err(format!(
            "the calibration set has {n} sample(s); calibrating int8 ranges needs at least {MIN_SAMPLES}"
        ));
    }
    if let Some(i) = samples.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "the calibration set has a non-finite value ({}) in sample {}, column {}",
            samples[i],
            i / per,
            i % per
        ));
    }
    let mut extremes: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    run_all(graph, params, samples, input_shape, &mut |name, values| {
        let e = extremes
            .entry(name.to_string())
            .or_insert((f64::INFINITY, f64::NEG_INFINITY));
        for &v in values {
            e.0 = e.0.min(v);
            e.1 = e.1.max(v);
        }
    })?;
    for (name, (lo, hi)) in &extremes {
        if !(lo.is_finite() && hi.is_finite()) {
            return Err(format!(
                "activation `{name}` is not finite on the calibration set"
            ));
        }
        if lo == hi {
            return Err(format!(
                "activation `{name}` is the constant {lo} on every calibration sample: its int8 range is degenerate (a dead layer, or calibration data that does not exercise the model)"
            ));
        }
    }
    let tensors = match method {
        Method::MinMax => extremes
            .iter()
            .map(|(k, &(min, max))| (k.clone(), Range { min, max }))
            .collect(),
        Method::Percentile { percentile } => {
            if !(50.0..=100.0).contains(&percentile) {
                return Err(format!("percentile {percentile} is not between 50 and 100"));
            }
            let mut hist: BTreeMap<String, Vec<u64>> = extremes
                .keys()
                .map(|k| (k.clone(), vec![0u64; BINS]))
                .collect();
            run_all(graph, params, samples, input_shape, &mut |name, values| {
                let (lo, hi) = extremes[name];
                let h = hist.get_mut(name).expect("every tensor was seen");
                let width = (hi - lo) / BINS as f64;
                for &v in values {
                    let b = (((v - lo) / width) as usize).min(BINS - 1);
                    h[b] += 1;
                }
            })?;
            hist.iter()
                .map(|(k, h)| {
                    let (lo, hi) = extremes[k];
                    let total: u64 = h.iter().sum();
                    let width = (hi - lo) / BINS as f64;
                    let cut = ((1.0 - percentile / 100.0) * total as f64).floor() as u64;
                    // The lowest bin edge with more than `cut` values below and above.
                    let (mut below, mut first) = (0u64, 0usize);
                    while first < BINS - 1 && below + h[first] <= cut {
                        below += h[first];
                        first += 1;
                    }
                    let (mut above, mut last) = (0u64, BINS - 1);
                    while last > first && above + h[last] <= cut {
                        above += h[last];
                        last -= 1;
                    }
                    let min = lo + first as f64 * width;
                    let max = lo + (last + 1) as f64 * width;
                    (
                        k.clone(),
                        Range {
                            min: min.min(0.0).max(lo),
                            max: max.max(0.0).min(hi).max(min + width),
                        },
                    )
                })
                .collect()
        }
    };
    Ok(Ranges {
        format: FORMAT.into(),
        method,
        samples: n,
        tensors,
    })
}

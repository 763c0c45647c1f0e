//! `dataset`: a deterministic synthetic data set for a model, labelled by the float model's own
//! top-1 (SPEC.md, "`dataset`"). For models whose data cannot be shipped: calibration and
//! held-out inputs that cover the input range, so agreement and KL divergence between the float
//! and the quantized model are meaningful even without real labels.
//!
//! Samples are drawn from a splitmix64 stream of the `seed`: `smooth` (random values on a coarse
//! grid, bilinearly upsampled, like the low frequencies of a natural image or spectrogram),
//! `uniform` or `normal`, then mapped to `range`. Labels come from the f64 reference forward
//! pass, so the file is the same on every CPU.

use serde::Deserialize;

use crate::model::exec::{self, Tensor};
use crate::model::{Architecture, FloatWeights};
use edgebuild_engine::op::{Op, OpContext, OpError, OpOutcome};

pub struct Dataset;

/// The most samples one stage makes.
pub const MAX_SAMPLES: usize = 100_000;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    #[default]
    Smooth,
    Uniform,
    Normal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetParams {
    samples: usize,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    distribution: Distribution,
    /// The values' range (for `normal`: mean ± 3 standard deviations, clamped).
    #[serde(default = "unit")]
    range: [f32; 2],
}

fn unit() -> [f32; 2] {
    [0.0, 1.0]
}

fn parse(params: &serde_json::Value) -> Result<DatasetParams, String> {
    let p: DatasetParams =
        serde_json::from_value(params.clone()).map_err(|e| format!("params: {e}"))?;
    if p.samples == 0 || p.samples > MAX_SAMPLES {
        return Err(format!(
            "params: `samples` is {}; it must be between 1 and {MAX_SAMPLES}",
            p.samples
        ));
    }
    let [lo, hi] = p.range;
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(format!(
            "params: `range` [{lo}, {hi}] must be finite and increasing"
        ));
    }
    Ok(p)
}

/// splitmix64: a small, well-mixed stream that is the same everywhere.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u = self.unit().max(f64::MIN_POSITIVE);
        let v = self.unit();
        libm::sqrt(-2.0 * libm::log(u)) * libm::cos(std::f64::consts::TAU * v)
    }
}

/// One sample of `shape` (`[features]` or `[channels, height, width...]`) in [0, 1].
fn sample(stream: &mut Stream, shape: &[usize], distribution: Distribution) -> Vec<f64> {
    let n: usize = shape.iter().product();
    match distribution {
        Distribution::Uniform => (0..n).map(|_| stream.unit()).collect(),
        Distribution::Normal => (0..n)
            .map(|_| ((stream.normal() / 6.0) + 0.5).clamp(0.0, 1.0))
            .collect(),
        Distribution::Smooth => {
            // The last two axes are a plane (one axis: a line); earlier axes are channels.
            let (planes, h, w) = match shape {
                [w] => (1, 1, *w),
                [c, w] => (*c, 1, *w),
                _ => {
                    let r = shape.len();
                    (shape[..r - 2].iter().product(), shape[r - 2], shape[r - 1])
                }
            };
            let coarse = |d: usize| d.div_ceil(4) + 1;
            let (gh, gw) = (coarse(h), coarse(w));
            let mut out = Vec::with_capacity(n);
            for _ in 0..planes {
                let grid: Vec<f64> = (0..gh * gw).map(|_| stream.unit()).collect();
                for y in 0..h {
                    let fy = y as f64 / 4.0;
                    let (y0, ty) = (fy as usize, fy.fract());
                    let y1 = (y0 + 1).min(gh - 1);
                    for x in 0..w {
                        let fx = x as f64 / 4.0;
                        let (x0, tx) = (fx as usize, fx.fract());
                        let x1 = (x0 + 1).min(gw - 1);
                        let at = |yy: usize, xx: usize| grid[yy * gw + xx];
                        let top = at(y0, x0) * (1.0 - tx) + at(y0, x1) * tx;
                        let bottom = at(y1, x0) * (1.0 - tx) + at(y1, x1) * tx;
                        out.push(top * (1.0 - ty) + bottom * ty);
                    }
                }
            }
            out
        }
    }
}

/// `samples` inputs of `shape` in `range`, drawn from `seed` (the dataset op's inputs).
pub fn synthesize(
    shape: &[usize],
    samples: usize,
    seed: u64,
    distribution: Distribution,
    range: [f32; 2],
) -> Vec<f32> {
    let mut stream = Stream(seed);
    let [lo, hi] = range;
    let per: usize = shape.iter().product();
    let mut x = Vec::with_capacity(samples * per);
    for _ in 0..samples {
        let s = sample(&mut stream, shape, distribution);
        // Rounded to f32 first: the labels are those of the values stored.
        x.extend(s.iter().map(|v| (lo as f64 + v * (hi - lo) as f64) as f32));
    }
    x
}

impl Op for Dataset {
    fn name(&self) -> &'static str {
        "dataset"
    }

    fn version(&self) -> u32 {
        1
    }

    fn check(&self, stage: &edgebuild_engine::stage::Stage) -> Result<(), String> {
        edgebuild_engine::op::check_ports(stage, &["weights", "architecture"], &[], &["data"])?;
        parse(&stage.params).map(|_| ())
    }

    fn run(&self, ctx: &OpContext) -> Result<OpOutcome, OpError> {
        let params =
            parse(ctx.params).map_err(|e| OpError::BadInput(format!("{}: {e}", ctx.stage_id)))?;
        let arch = Architecture::load(ctx.input("architecture")?).map_err(OpError::BadInput)?;
        let weights =
            FloatWeights::load(ctx.input("weights")?, &arch).map_err(OpError::BadInput)?;
        let graph = arch.graph().map_err(OpError::BadInput)?;
        let classes = arch.classes().map_err(OpError::BadInput)?;
        let reference = weights.reference().map_err(OpError::BadInput)?;
        let per_sample: usize = arch.input_shape.iter().product();
        let x = synthesize(
            &arch.input_shape,
            params.samples,
            params.seed,
            params.distribution,
            params.range,
        );
        // Labels: the f64 reference's top-1 of each stored sample, 16 samples at a time.
        let mut y = Vec::with_capacity(params.samples);
        for chunk in x.chunks(16 * per_sample) {
            let mut shape = vec![chunk.len() / per_sample];
            shape.extend(&arch.input_shape);
            let out = exec::forward(
                &graph,
                &reference,
                Tensor::new(shape, chunk.iter().map(|&v| f64::from(v)).collect()),
                None,
            )
            .map_err(OpError::Failed)?;
            for row in out.data.chunks(classes) {
                let best = row
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f64::NEG_INFINITY),
                        |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                    );
                y.push(best.0 as u32);
            }
        }
        let mut xs = vec![params.samples];
        xs.extend(&arch.input_shape);
        let xt = candle_core::Tensor::from_vec(x, xs, &candle_core::Device::Cpu)
            .map_err(super::candle)?;
        let yt =
            candle_core::Tensor::from_vec(y.clone(), params.samples, &candle_core::Device::Cpu)
                .map_err(super::candle)?;
        let path = ctx.output("data")?;
        let tmp = path.with_extension("npz.tmp");
        candle_core::Tensor::write_npz(&[("x", &xt), ("y", &yt)], &tmp).map_err(super::candle)?;
        std::fs::rename(&tmp, path)
            .map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))?;
        let mut counts = vec![0usize; classes];
        for &l in &y {
            counts[l as usize] += 1;
        }
        let used = counts.iter().filter(|&&c| c > 0).count();
        ctx.log(format!(
            "{} samples, labelled by the float model: {used} of {classes} classes occur",
            params.samples
        ));
        Ok(OpOutcome::Success)
    }
}

//! `edgebuild infer MODEL.gguf --input DATA`: the top-k classes of a few samples through the
//! quantized kernels (SPEC.md, "`edgebuild infer`").

use std::path::PathBuf;

use super::Session;
use crate::error::{Error, ExitCode, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The GGUF model.
    pub model: PathBuf,
    /// Samples: an .npz with an `x` array (and optionally `y`), or a CSV.
    #[arg(long)]
    pub input: PathBuf,
    /// Classes to show per sample.
    #[arg(long, default_value_t = 3)]
    pub top_k: usize,
    /// Samples to run (from the start of the file).
    #[arg(long, default_value_t = 5)]
    pub limit: usize,
}

pub fn run(args: Args, _session: &Session) -> Result<ExitCode> {
    let Args {
        model,
        input,
        top_k,
        limit,
    } = args;
    let bad = |message: String| Error::usage(message, None);
    let quant = edgebuild_ml::model::QuantModel::load(&model).map_err(bad)?;
    quant.arch.classes().map_err(bad)?;
    let data = edgebuild_ml::data::Dataset::load(&input, &quant.arch.input_shape).map_err(bad)?;
    let n = limit.min(data.len());
    let x = data.x.narrow(0, 0, n).map_err(|e| bad(e.to_string()))?;
    let out = quant
        .forward(&x)
        .and_then(|y| edgebuild_ml::model::probabilities(&quant.arch, &y))
        .and_then(|p| p.to_vec2::<f32>())
        .map_err(|e| bad(e.to_string()))?;
    for (i, row) in out.iter().enumerate() {
        let mut ranked: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let shown: Vec<String> = ranked
            .iter()
            .take(top_k)
            .map(|(c, p)| {
                let label = quant
                    .arch
                    .labels
                    .get(*c)
                    .cloned()
                    .unwrap_or_else(|| c.to_string());
                format!("{label} {p:.4}")
            })
            .collect();
        let truth = data
            .y
            .as_ref()
            .map(|y| {
                format!(
                    "  (label {})",
                    quant
                        .arch
                        .labels
                        .get(y[i] as usize)
                        .cloned()
                        .unwrap_or_else(|| y[i].to_string())
                )
            })
            .unwrap_or_default();
        println!("sample {i}: {}{truth}", shown.join(", "));
    }
    Ok(ExitCode::Ok)
}

//! ONNX import time and evaluation throughput of the MLPerf Tiny models, on one thread.
//! Run through `bench/onnx.sh`, which builds the three pipelines first and times ONNX Runtime
//! (one thread) on the same inputs.
//!
//! Usage: bench_onnx WORKSPACE OUT_DIR. WORKSPACE holds `examples/mlperf-tiny/*.onnx` and the
//! built `out/{kws,resnet8,vww}/` (model.json, weights.safetensors, model.gguf). For each model
//! it writes `OUT_DIR/NAME.inputs.npy` (the inputs, from the `dataset` op's generator) and
//! `OUT_DIR/NAME.float.npy` (edgebuild's float outputs), and prints CSV rows: model, what,
//! batch, samples, seconds (best of the repeats), samples per second.

use std::path::Path;
use std::time::Instant;

use edgebuild_ml::model::exec::{self, Tensor};
use edgebuild_ml::model::{Architecture, FloatWeights, QuantModel};
use edgebuild_ml::ops::dataset::{Distribution, synthesize};

/// Pipeline, ONNX file, samples timed and the input range of the pipeline's data.
const MODELS: &[(&str, &str, usize, [f32; 2])] = &[
    ("kws", "kws_dscnn", 256, [-123.4, 25.7]),
    ("resnet8", "ic_resnet8", 128, [0.0, 255.0]),
    ("vww", "vww_mobilenet_v1", 128, [0.0, 1.0]),
];
const REPEATS: usize = 3;
const BATCH: usize = 64;

/// Best wall time of `REPEATS` runs of `f`, after one warm-up run.
fn best(mut f: impl FnMut() -> Result<(), String>) -> Result<f64, String> {
    f()?;
    let mut best = f64::INFINITY;
    for _ in 0..REPEATS {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn row(model: &str, what: &str, batch: usize, samples: usize, seconds: f64) {
    println!(
        "{model},{what},{batch},{samples},{seconds:.6},{:.1}",
        samples as f64 / seconds
    );
}

fn run(ws: &Path, out: &Path) -> Result<(), String> {
    println!("model,what,batch,samples,seconds,samples_per_s");
    // Import: decode, fold and check the graph, and write the weights, as the `import` op does.
    let vww = ws.join("examples/mlperf-tiny/vww_mobilenet_v1.onnx");
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let seconds = best(|| {
        let imported = edgebuild_ml::onnx::import(&vww, &Default::default())?;
        edgebuild_ml::model::save_safetensors(&tmp.path().join("w.safetensors"), &imported.weights)
    })?;
    row("vww", "import", 1, 1, seconds);

    for &(pipeline, _, samples, range) in MODELS {
        let dir = ws.join("out").join(pipeline);
        let arch = Architecture::load(&dir.join("model.json"))?;
        let graph = arch.graph()?;
        let params = FloatWeights::load(&dir.join("weights.safetensors"), &arch)?.params()?;
        let quant = QuantModel::load(&dir.join("model.gguf"))?;
        let shape = arch.input_shape.clone();
        let per: usize = shape.iter().product();
        let x = synthesize(&shape, samples, 7, Distribution::Smooth, range);
        let mut dims = vec![samples];
        dims.extend(&shape);
        candle_core::Tensor::from_vec(x.clone(), dims.clone(), &candle_core::Device::Cpu)
            .and_then(|t| t.write_npy(out.join(format!("{pipeline}.inputs.npy"))))
            .map_err(|e| e.to_string())?;
        let batch_of = |start: usize, n: usize| {
            let mut s = vec![n];
            s.extend(&shape);
            Tensor::new(s, x[start * per..(start + n) * per].to_vec())
        };
        let mut outputs = Vec::new();
        for batch in [1, BATCH] {
            let seconds = best(|| {
                outputs.clear();
                for start in (0..samples).step_by(batch) {
                    let y = exec::forward(
                        &graph,
                        &params,
                        batch_of(start, batch.min(samples - start)),
                        None,
                    )?;
                    outputs.extend(y.data);
                }
                Ok(())
            })?;
            row(pipeline, "float", batch, samples, seconds);
        }
        let mut odims = vec![samples];
        odims.extend(graph.output_shape());
        candle_core::Tensor::from_vec(outputs.clone(), odims, &candle_core::Device::Cpu)
            .and_then(|t| t.write_npy(out.join(format!("{pipeline}.float.npy"))))
            .map_err(|e| e.to_string())?;
        for batch in [1, BATCH] {
            let seconds = best(|| {
                for start in (0..samples).step_by(batch) {
                    let n = batch.min(samples - start);
                    let b = batch_of(start, n);
                    let t =
                        candle_core::Tensor::from_vec(b.data, b.shape, &candle_core::Device::Cpu)
                            .map_err(|e| e.to_string())?;
                    quant.forward(&t).map_err(|e| e.to_string())?;
                }
                Ok(())
            })?;
            row(pipeline, "gguf", batch, samples, seconds);
        }
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, ws, out] = &args[..] else {
        eprintln!("usage: bench_onnx WORKSPACE OUT_DIR");
        std::process::exit(2);
    };
    // One thread for everything: candle's quantized matmuls run on rayon's pool.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a thread pool");
    if let Err(e) = pool.install(|| run(Path::new(ws), Path::new(out))) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

//! Quantization throughput on a 4096 × 4096 f32 tensor, per type, with 1 and 2 threads (best of
//! 7 alternating runs).
//! Run through `bench/quantize.sh`, which also times the `gguf` Python package on the same tensor.

use std::time::Instant;

use candle_core::{Device, Tensor};
use edgebuild_ml::model::parse_type;
use edgebuild_ml::ops::quantize::quantize_rows;

fn main() -> candle_core::Result<()> {
    let n = 4096usize;
    // Deterministic values in [-1, 1), the same generator as bench/quantize_gguf.py.
    let values: Vec<f32> = (0..n * n)
        .map(|i| ((i as u64 * 2654435761) % 1_000_003) as f32 / 500_001.5 - 1.0)
        .collect();
    let tensor = Tensor::from_vec(values, (n, n), &Device::Cpu)?;
    let mb = (n * n * 4) as f64 / 1e6;
    println!("type,threads,seconds,mb_per_s");
    let only = std::env::var("ONLY").ok();
    for name in [
        "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
    ] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let dtype = parse_type(name).expect("known type");
        // 1- and 2-thread runs alternate so that drift of a shared machine hits both alike.
        let pools: Vec<rayon::ThreadPool> = [1, 2]
            .iter()
            .map(|&n| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .expect("pool")
            })
            .collect();
        let mut best = [f64::MAX; 2];
        for _ in 0..7 {
            for (i, pool) in pools.iter().enumerate() {
                let start = Instant::now();
                pool.install(|| quantize_rows(&tensor, dtype, None))?;
                best[i] = best[i].min(start.elapsed().as_secs_f64());
            }
        }
        for (i, threads) in [1, 2].iter().enumerate() {
            println!("{name},{threads},{:.4},{:.1}", best[i], mb / best[i]);
        }
    }
    Ok(())
}

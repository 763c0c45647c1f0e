//! Trains the digits MLP of `examples/digits/` deterministically and writes its weights and the
//! calibration and held-out splits. See `examples/digits/README.md`.
//!
//! Run: `cargo run --release --example train_digits`

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DIR: &str = "examples/digits";
const SEED: u64 = 2026;
const EPOCHS: usize = 60;
const BATCH: usize = 32;
const SIZES: [usize; 4] = [64, 256, 256, 10];

fn main() -> candle_core::Result<()> {
    let text = std::fs::read_to_string(format!("{DIR}/digits.csv"))?;
    let (mut train, mut calibration, mut heldout) = (Vec::new(), Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        let values: Vec<f32> = line
            .split(',')
            .map(|v| v.trim().parse::<f32>().expect("numbers"))
            .collect();
        let (pixels, label) = values.split_at(64);
        let sample: (Vec<f32>, i64) = (pixels.iter().map(|p| p / 16.0).collect(), label[0] as i64);
        match i % 10 {
            0 => calibration.push(sample),
            1 | 2 => heldout.push(sample),
            _ => train.push(sample),
        }
    }
    let dev = Device::Cpu;
    let tensors = |set: &[(Vec<f32>, i64)]| -> candle_core::Result<(Tensor, Tensor)> {
        let x: Vec<f32> = set.iter().flat_map(|(x, _)| x.iter().copied()).collect();
        let y: Vec<i64> = set.iter().map(|(_, y)| *y).collect();
        Ok((
            Tensor::from_vec(x, (set.len(), 64), &dev)?,
            Tensor::from_vec(y, set.len(), &dev)?,
        ))
    };
    for (name, set) in [("calibration", &calibration), ("heldout", &heldout)] {
        let (x, y) = tensors(set)?;
        Tensor::write_npz(&[("x", &x), ("y", &y)], format!("{DIR}/{name}.npz"))?;
    }

    // Kaiming-uniform initialization from a seeded ChaCha RNG (candle's CPU set_seed errors).
    let mut rng = ChaCha8Rng::seed_from_u64(SEED);
    let mut layers: Vec<(Var, Var)> = Vec::new();
    for pair in SIZES.windows(2) {
        let (fan_in, fan_out) = (pair[0], pair[1]);
        let bound = (1.0 / fan_in as f32).sqrt();
        let mut uniform =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
        let w = Tensor::from_vec(uniform(fan_in * fan_out), (fan_out, fan_in), &dev)?;
        let b = Tensor::from_vec(uniform(fan_out), fan_out, &dev)?;
        layers.push((Var::from_tensor(&w)?, Var::from_tensor(&b)?));
    }
    let forward = |x: &Tensor| -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, (w, b)) in layers.iter().enumerate() {
            h = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()))
                .forward(&h)?;
            if i + 1 < layers.len() {
                h = h.relu()?;
            }
        }
        Ok(h)
    };
    let vars: Vec<Var> = layers
        .iter()
        .flat_map(|(w, b)| [w.clone(), b.clone()])
        .collect();
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: 1e-3,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let (train_x, train_y) = tensors(&train)?;
    let mut order: Vec<u32> = (0..train.len() as u32).collect();
    for epoch in 0..EPOCHS {
        order.shuffle(&mut rng);
        let mut total = 0f32;
        for batch in order.chunks(BATCH) {
            let idx = Tensor::new(batch, &dev)?;
            let logits = forward(&train_x.index_select(&idx, 0)?)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &train_y.index_select(&idx, 0)?)?;
            opt.backward_step(&loss)?;
            total += loss.to_scalar::<f32>()? * batch.len() as f32;
        }
        if epoch % 10 == 9 {
            println!(
                "epoch {:>3}: loss {:.4}",
                epoch + 1,
                total / train.len() as f32
            );
        }
    }
    let (x, y) = tensors(&heldout)?;
    let predicted = forward(&x)?.argmax(1)?.to_dtype(DType::I64)?;
    let correct = predicted
        .eq(&y)?
        .to_dtype(DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    println!(
        "held-out top-1: {:.2}% ({} samples)",
        100.0 * correct / heldout.len() as f32,
        heldout.len()
    );

    let mut weights = HashMap::new();
    for (i, (w, b)) in layers.iter().enumerate() {
        weights.insert(format!("fc{}.weight", i + 1), w.as_tensor().clone());
        weights.insert(format!("fc{}.bias", i + 1), b.as_tensor().clone());
    }
    candle_core::safetensors::save(&weights, format!("{DIR}/mlp.safetensors"))?;
    println!("wrote {DIR}/mlp.safetensors, calibration.npz, heldout.npz");
    Ok(())
}

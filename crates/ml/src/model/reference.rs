//! A plain-Rust forward pass in f64 with a fixed summation order (SPEC.md, "`imatrix`").
//!
//! candle picks SIMD kernels at run time, so its activations can differ in the last bits
//! between CPUs. Whatever must be bit-identical on every host (the importance matrix, and so the
//! shipped GGUF) is computed here instead: one sample at a time, every sum in index order, no
//! fused multiply-add, only IEEE-754 `+ - * / sqrt exp tanh`.

use std::collections::BTreeMap;

use super::{Architecture, FloatWeights, Layer};

/// Weights as flat f32 vectors, by tensor name.
pub struct RefWeights {
    tensors: BTreeMap<String, Vec<f32>>,
}

impl RefWeights {
    pub fn from_float(weights: &FloatWeights) -> candle_core::Result<RefWeights> {
        let mut tensors = BTreeMap::new();
        for (name, tensor) in &weights.tensors {
            tensors.insert(name.clone(), tensor.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(RefWeights { tensors })
    }

    fn get(&self, name: &str) -> &[f32] {
        self.tensors
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_else(|| panic!("weights were checked against the architecture: {name}"))
    }
}

/// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): plain arithmetic, so the same bits
/// everywhere.
fn erf(x: f64) -> f64 {
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.3275911 * x);
    let poly = t
        * (0.254829592
            + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    sign * (1.0 - poly * (-x * x).exp())
}

/// Runs one sample. `observe(weight_name, row)` sees every row that a matmul weight multiplies:
/// the input of a linear layer, each im2col patch of a convolution.
pub fn forward_sample(
    arch: &Architecture,
    weights: &RefWeights,
    sample: &[f32],
    observe: &mut dyn FnMut(&str, &[f64]),
) -> Vec<f64> {
    let mut x: Vec<f64> = sample.iter().map(|&v| v as f64).collect();
    let mut shape = arch.input_shape.clone();
    let dot = |w: &[f32], row: &[f64], o: usize| -> f64 {
        let n = row.len();
        let mut acc = 0.0f64;
        for (i, &v) in row.iter().enumerate() {
            acc += w[o * n + i] as f64 * v;
        }
        acc
    };
    for layer in &arch.layers {
        match layer {
            Layer::Linear {
                name,
                out_features,
                bias,
                ..
            } => {
                let weight_name = format!("{name}.weight");
                observe(&weight_name, &x);
                let w = weights.get(&weight_name);
                let b = bias.then(|| weights.get(&format!("{name}.bias")));
                x = (0..*out_features)
                    .map(|o| dot(w, &x, o) + b.map_or(0.0, |b| b[o] as f64))
                    .collect();
                shape = vec![*out_features];
            }
            Layer::Conv2d {
                name,
                out_channels,
                kernel,
                stride,
                padding,
                bias,
                ..
            } => {
                let (c, h, wd) = (shape[0], shape[1], shape[2]);
                let k = *kernel;
                let oh = (h + 2 * padding - k) / stride + 1;
                let ow = (wd + 2 * padding - k) / stride + 1;
                let weight_name = format!("{name}.weight");
                let w = weights.get(&weight_name);
                let b = bias.then(|| weights.get(&format!("{name}.bias")));
                let mut out = vec![0.0; out_channels * oh * ow];
                let mut row = vec![0.0; c * k * k];
                for oy in 0..oh {
                    for ox in 0..ow {
                        row.fill(0.0);
                        for ch in 0..c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * stride + ky) as isize - *padding as isize;
                                    let ix = (ox * stride + kx) as isize - *padding as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd
                                    {
                                        row[(ch * k + ky) * k + kx] =
                                            x[(ch * h + iy as usize) * wd + ix as usize];
                                    }
                                }
                            }
                        }
                        observe(&weight_name, &row);
                        for o in 0..*out_channels {
                            out[(o * oh + oy) * ow + ox] =
                                dot(w, &row, o) + b.map_or(0.0, |b| b[o] as f64);
                        }
                    }
                }
                x = out;
                shape = vec![*out_channels, oh, ow];
            }
            Layer::Batchnorm {
                name,
                features,
                eps,
            } => {
                let get = |s: &str| weights.get(&format!("{name}.{s}"));
                let (g, b, m, v) = (
                    get("weight"),
                    get("bias"),
                    get("running_mean"),
                    get("running_var"),
                );
                let per = x.len() / features;
                for ch in 0..*features {
                    let scale = g[ch] as f64 / (v[ch] as f64 + eps).sqrt();
                    for value in &mut x[ch * per..(ch + 1) * per] {
                        *value = (*value - m[ch] as f64) * scale + b[ch] as f64;
                    }
                }
            }
            Layer::Layernorm {
                name,
                features,
                eps,
            } => {
                let g = weights.get(&format!("{name}.weight"));
                let b = weights.get(&format!("{name}.bias"));
                for chunk in x.chunks_mut(*features) {
                    let mean = chunk.iter().sum::<f64>() / *features as f64;
                    let var = chunk.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>()
                        / *features as f64;
                    let denom = (var + eps).sqrt();
                    for (i, value) in chunk.iter_mut().enumerate() {
                        *value = (*value - mean) / denom * g[i] as f64 + b[i] as f64;
                    }
                }
            }
            Layer::Flatten => shape = vec![x.len()],
            Layer::Maxpool { kernel, stride } | Layer::Avgpool { kernel, stride } => {
                let max = matches!(layer, Layer::Maxpool { .. });
                let s = stride.unwrap_or(*kernel);
                let (c, h, wd) = (shape[0], shape[1], shape[2]);
                let (oh, ow) = ((h - kernel) / s + 1, (wd - kernel) / s + 1);
                let mut out = Vec::with_capacity(c * oh * ow);
                for ch in 0..c {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut acc = if max { f64::NEG_INFINITY } else { 0.0 };
                            for ky in 0..*kernel {
                                for kx in 0..*kernel {
                                    let v = x[(ch * h + oy * s + ky) * wd + ox * s + kx];
                                    acc = if max { acc.max(v) } else { acc + v };
                                }
                            }
                            out.push(if max {
                                acc
                            } else {
                                acc / (kernel * kernel) as f64
                            });
                        }
                    }
                }
                x = out;
                shape = vec![c, oh, ow];
            }
            Layer::Relu => x.iter_mut().for_each(|v| *v = v.max(0.0)),
            Layer::Gelu => x
                .iter_mut()
                .for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v / std::f64::consts::SQRT_2))),
            Layer::Silu => x.iter_mut().for_each(|v| *v /= 1.0 + (-*v).exp()),
            Layer::Sigmoid => x.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
            Layer::Tanh => x.iter_mut().for_each(|v| *v = v.tanh()),
            Layer::Softmax => {
                let last = *shape.last().expect("shapes are non-empty");
                for chunk in x.chunks_mut(last) {
                    let max = chunk.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let sum: f64 = chunk.iter().map(|v| (v - max).exp()).sum();
                    chunk.iter_mut().for_each(|v| *v = (*v - max).exp() / sum);
                }
            }
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn reference_matches_candle_within_float_error() {
        let arch: Architecture = serde_saphyr::from_str(
            "name: t\ninput_shape: [2, 5, 5]\nlayers:\n  - {type: conv2d, name: c, in_channels: 2, out_channels: 3, kernel: 3, stride: 2, padding: 1}\n  - {type: batchnorm, name: bn, features: 3}\n  - {type: gelu}\n  - {type: avgpool, kernel: 3}\n  - {type: flatten}\n  - {type: layernorm, name: ln, features: 3}\n  - {type: linear, name: fc, in: 3, out: 4}\n  - {type: tanh}\n  - {type: softmax}\n",
        )
        .unwrap();
        let dev = Device::Cpu;
        let mut tensors = BTreeMap::new();
        for (i, spec) in arch.tensor_specs().unwrap().into_iter().enumerate() {
            let n: usize = spec.shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|j| (((i * 31 + j * 17) % 23) as f32 / 23.0) + 0.1)
                .collect();
            tensors.insert(
                spec.name,
                Tensor::from_vec(values, spec.shape, &dev).unwrap(),
            );
        }
        let weights = FloatWeights { tensors };
        let sample: Vec<f32> = (0..50).map(|i| (i % 7) as f32 / 7.0 - 0.3).collect();
        let x = Tensor::from_vec(sample.clone(), (1, 2, 5, 5), &dev).unwrap();
        let expected = super::super::forward(&arch, &weights, &x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut rows = 0;
        let got = forward_sample(
            &arch,
            &RefWeights::from_float(&weights).unwrap(),
            &sample,
            &mut |_, _| rows += 1,
        );
        assert_eq!(rows, 9 + 1, "9 conv patches and one linear row");
        for (a, b) in expected.iter().zip(&got) {
            assert!((*a as f64 - b).abs() < 1e-4, "{expected:?} vs {got:?}");
        }
    }
}

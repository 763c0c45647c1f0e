//! Models: an architecture file (layers in order) and safetensors weights with PyTorch
//! `state_dict` names, run with candle.
//!
//! This module owns the architecture format (SPEC.md, "Models"), the check that weights match it
//! (every tensor named, every shape right), shape inference with per-layer parameter, MAC and
//! activation counts for reports, and one forward pass over a [`ParamSource`]: float weights
//! ([`FloatWeights`]) or a GGUF file run through candle's quantized kernels ([`QuantModel`]).
//! Convolutions run as im2col + matmul in both, so a quantized conv is a `QMatMul` with rows of
//! `in_channels·k·k` (SPEC.md, "`evaluate`"). [`reference`] is a plain-Rust forward pass with a fixed
//! summation order, for results that must not depend on the CPU.

pub mod reference;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::{D, DType, Device, Module, Tensor};
use serde::{Deserialize, Serialize};

/// The architecture file: layers in order, applied to samples of `input_shape`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    pub name: String,
    /// Shape of one sample: `[features]`, or `[channels, height, width]` for convolutions.
    pub input_shape: Vec<usize>,
    /// Class names, in output order.
    #[serde(default)]
    pub labels: Vec<String>,
    pub layers: Vec<Layer>,
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn default_eps() -> f64 {
    1e-5
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Layer {
    Linear {
        name: String,
        #[serde(rename = "in")]
        in_features: usize,
        #[serde(rename = "out")]
        out_features: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    Conv2d {
        name: String,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: usize,
        #[serde(default = "yes")]
        bias: bool,
    },
    Batchnorm {
        name: String,
        features: usize,
        #[serde(default = "default_eps")]
        eps: f64,
    },
    Layernorm {
        name: String,
        features: usize,
        #[serde(default = "default_eps")]
        eps: f64,
    },
    Flatten,
    Maxpool {
        kernel: usize,
        stride: Option<usize>,
    },
    Avgpool {
        kernel: usize,
        stride: Option<usize>,
    },
    Relu,
    Gelu,
    Silu,
    Sigmoid,
    Tanh,
    Softmax,
}

/// A tensor a layer needs, with its expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// A matmul weight: quantizable, rows of `shape[1..].product()`.
    pub matmul: bool,
}

/// A layer with its shapes and costs, for validation and reports.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    pub index: usize,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    pub params: u64,
    /// Multiply-accumulates per sample.
    pub macs: u64,
    /// Bytes of the f32 output activation per sample.
    pub activation_bytes: u64,
    #[serde(skip)]
    pub tensors: Vec<TensorSpec>,
}

impl Layer {
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Linear { .. } => "linear",
            Layer::Conv2d { .. } => "conv2d",
            Layer::Batchnorm { .. } => "batchnorm",
            Layer::Layernorm { .. } => "layernorm",
            Layer::Flatten => "flatten",
            Layer::Maxpool { .. } => "maxpool",
            Layer::Avgpool { .. } => "avgpool",
            Layer::Relu => "relu",
            Layer::Gelu => "gelu",
            Layer::Silu => "silu",
            Layer::Sigmoid => "sigmoid",
            Layer::Tanh => "tanh",
            Layer::Softmax => "softmax",
        }
    }

    /// The first size field that is zero, if any: every size, kernel and stride must be >= 1.
    fn zero_size(&self) -> Option<&'static str> {
        let fields: Vec<(&'static str, usize)> = match self {
            Layer::Linear {
                in_features,
                out_features,
                ..
            } => vec![("in", *in_features), ("out", *out_features)],
            Layer::Conv2d {
                in_channels,
                out_channels,
                kernel,
                stride,
                ..
            } => vec![
                ("in_channels", *in_channels),
                ("out_channels", *out_channels),
                ("kernel", *kernel),
                ("stride", *stride),
            ],
            Layer::Batchnorm { features, .. } | Layer::Layernorm { features, .. } => {
                vec![("features", *features)]
            }
            Layer::Maxpool { kernel, stride } | Layer::Avgpool { kernel, stride } => {
                vec![("kernel", *kernel), ("stride", stride.unwrap_or(*kernel))]
            }
            _ => Vec::new(),
        };
        fields
            .into_iter()
            .find(|(_, v)| *v == 0)
            .map(|(name, _)| name)
    }

    fn name(&self) -> Option<&str> {
        match self {
            Layer::Linear { name, .. }
            | Layer::Conv2d { name, .. }
            | Layer::Batchnorm { name, .. }
            | Layer::Layernorm { name, .. } => Some(name),
            _ => None,
        }
    }
}

fn pool_out(size: usize, kernel: usize, stride: usize) -> usize {
    if size < kernel {
        0
    } else {
        (size - kernel) / stride + 1
    }
}

impl Architecture {
    pub fn load(path: &Path) -> Result<Architecture, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let arch: Architecture =
            serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        arch.layer_infos()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(arch)
    }

    /// Infers every layer's shapes and costs; an inconsistent architecture is an error.
    pub fn layer_infos(&self) -> Result<Vec<LayerInfo>, String> {
        let mut shape = self.input_shape.clone();
        if shape.is_empty() || shape.contains(&0) {
            return Err(format!(
                "input_shape {shape:?} must be non-empty and positive"
            ));
        }
        let mut infos = Vec::new();
        for (index, layer) in self.layers.iter().enumerate() {
            let at = |msg: String| format!("layer {index} ({}): {msg}", layer.kind());
            if let Some(field) = layer.zero_size() {
                return Err(at(format!("`{field}` must be at least 1")));
            }
            let input_shape = shape.clone();
            let mut tensors = Vec::new();
            let mut macs = 0u64;
            let spec = |name: &str, suffix: &str, shape: Vec<usize>, matmul: bool| TensorSpec {
                name: format!("{name}.{suffix}"),
                shape,
                matmul,
            };
            match layer {
                Layer::Linear {
                    name,
                    in_features,
                    out_features,
                    bias,
                } => {
                    if shape.last() != Some(in_features) || shape.len() != 1 {
                        return Err(at(format!(
                            "expects {in_features} input features but gets shape {shape:?} (add a flatten layer before it?)"
                        )));
                    }
                    tensors.push(spec(
                        name,
                        "weight",
                        vec![*out_features, *in_features],
                        true,
                    ));
                    if *bias {
                        tensors.push(spec(name, "bias", vec![*out_features], false));
                    }
                    macs = (*in_features * *out_features) as u64;
                    shape = vec![*out_features];
                }
                Layer::Conv2d {
                    name,
                    in_channels,
                    out_channels,
                    kernel,
                    stride,
                    padding,
                    bias,
                } => {
                    let [c, h, w] = shape[..] else {
                        return Err(at(format!(
                            "expects [channels, height, width] but gets {shape:?}"
                        )));
                    };
                    if c != *in_channels {
                        return Err(at(format!("expects {in_channels} channels but gets {c}")));
                    }
                    let oh = pool_out(h + 2 * padding, *kernel, *stride);
                    let ow = pool_out(w + 2 * padding, *kernel, *stride);
                    if oh == 0 || ow == 0 || *stride == 0 {
                        return Err(at(format!("kernel {kernel} does not fit input {h}×{w}")));
                    }
                    tensors.push(spec(
                        name,
                        "weight",
                        vec![*out_channels, *in_channels, *kernel, *kernel],
                        true,
                    ));
                    if *bias {
                        tensors.push(spec(name, "bias", vec![*out_channels], false));
                    }
                    macs = (oh * ow * out_channels * in_channels * kernel * kernel) as u64;
                    shape = vec![*out_channels, oh, ow];
                }
                Layer::Batchnorm { name, features, .. } => {
                    if shape.first() != Some(features) {
                        return Err(at(format!(
                            "expects {features} channels but gets shape {shape:?}"
                        )));
                    }
                    for suffix in ["weight", "bias", "running_mean", "running_var"] {
                        tensors.push(spec(name, suffix, vec![*features], false));
                    }
                }
                Layer::Layernorm { name, features, .. } => {
                    if shape.last() != Some(features) {
                        return Err(at(format!(
                            "normalizes {features} features but gets shape {shape:?}"
                        )));
                    }
                    for suffix in ["weight", "bias"] {
                        tensors.push(spec(name, suffix, vec![*features], false));
                    }
                }
                Layer::Flatten => shape = vec![shape.iter().product()],
                Layer::Maxpool { kernel, stride } | Layer::Avgpool { kernel, stride } => {
                    let [c, h, w] = shape[..] else {
                        return Err(at(format!(
                            "expects [channels, height, width] but gets {shape:?}"
                        )));
                    };
                    let s = stride.unwrap_or(*kernel);
                    let (oh, ow) = (pool_out(h, *kernel, s), pool_out(w, *kernel, s));
                    if oh == 0 || ow == 0 || s == 0 {
                        return Err(at(format!("pool {kernel} does not fit input {h}×{w}")));
                    }
                    shape = vec![c, oh, ow];
                }
                Layer::Relu
                | Layer::Gelu
                | Layer::Silu
                | Layer::Sigmoid
                | Layer::Tanh
                | Layer::Softmax => {}
            }
            let params = tensors
                .iter()
                .filter(|t| !t.name.ends_with("running_mean") && !t.name.ends_with("running_var"))
                .map(|t| t.shape.iter().product::<usize>() as u64)
                .sum();
            infos.push(LayerInfo {
                index,
                kind: layer.kind().to_string(),
                name: layer.name().map(str::to_string),
                input_shape,
                output_shape: shape.clone(),
                params,
                macs,
                activation_bytes: 4 * shape.iter().product::<usize>() as u64,
                tensors,
            });
        }
        if !self.labels.is_empty() && shape != [self.labels.len()] {
            return Err(format!(
                "{} labels but the model outputs shape {shape:?}",
                self.labels.len()
            ));
        }
        Ok(infos)
    }

    /// Every tensor the architecture needs, in layer order.
    pub fn tensor_specs(&self) -> Result<Vec<TensorSpec>, String> {
        Ok(self
            .layer_infos()?
            .into_iter()
            .flat_map(|l| l.tensors)
            .collect())
    }

    /// The number of classes of a classifier (a model whose output is one vector per sample).
    pub fn classes(&self) -> Result<usize, String> {
        let infos = self.layer_infos()?;
        let shape = infos
            .last()
            .map_or(self.input_shape.clone(), |l| l.output_shape.clone());
        match shape[..] {
            [classes] => Ok(classes),
            _ => Err(format!(
                "the model outputs {shape:?} per sample, not one score per class (add flatten and a linear layer?)"
            )),
        }
    }
}

/// Float weights by `state_dict` name, checked against an architecture.
pub struct FloatWeights {
    pub tensors: BTreeMap<String, Tensor>,
}

impl FloatWeights {
    /// Loads safetensors weights and checks that they match `arch`: every tensor present with the
    /// right shape, none left over (except BatchNorm's `num_batches_tracked`).
    pub fn load(path: &Path, arch: &Architecture) -> Result<FloatWeights, String> {
        let raw = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut tensors = BTreeMap::new();
        for spec in arch.tensor_specs()? {
            let tensor = raw.get(&spec.name).ok_or_else(|| {
                format!(
                    "{}: tensor `{}` (shape {:?}) is missing from the weights",
                    path.display(),
                    spec.name,
                    spec.shape
                )
            })?;
            if tensor.dims() != spec.shape.as_slice() {
                return Err(format!(
                    "{}: tensor `{}` has shape {:?} but the architecture needs {:?}",
                    path.display(),
                    spec.name,
                    tensor.dims(),
                    spec.shape
                ));
            }
            let tensor = tensor.to_dtype(DType::F32).map_err(|e| e.to_string())?;
            tensors.insert(spec.name, tensor);
        }
        let mut extra: Vec<&String> = raw
            .keys()
            .filter(|k| !tensors.contains_key(*k) && !k.ends_with("num_batches_tracked"))
            .collect();
        extra.sort();
        if let Some(name) = extra.first() {
            return Err(format!(
                "{}: tensor `{name}` is not used by the architecture",
                path.display()
            ));
        }
        Ok(FloatWeights { tensors })
    }
}

/// Where a forward pass gets its parameters, and how it multiplies by a weight.
pub trait ParamSource {
    /// A non-matmul tensor (bias, norm parameters) as f32.
    fn tensor(&self, name: &str) -> candle_core::Result<Tensor>;
    /// `x @ W^T` for a matmul weight `W` viewed as `[out, rows]`, `x` being `[n, rows]`.
    fn matmul(&self, weight: &str, x: &Tensor) -> candle_core::Result<Tensor>;
}

fn named(tensors: &BTreeMap<String, Tensor>, name: &str) -> candle_core::Result<Tensor> {
    tensors
        .get(name)
        .cloned()
        .ok_or_else(|| candle_core::Error::Msg(format!("no tensor {name}")))
}

impl ParamSource for FloatWeights {
    fn tensor(&self, name: &str) -> candle_core::Result<Tensor> {
        named(&self.tensors, name)
    }

    fn matmul(&self, weight: &str, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = self.tensor(weight)?;
        let out = w.dim(0)?;
        let w = w.reshape((out, ()))?;
        x.matmul(&w.t()?)
    }
}

/// Rearranges `[n, c, h, w]` into `[n·oh·ow, c·k·k]` patches (PyTorch weight order).
pub fn im2col(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> candle_core::Result<(Tensor, usize, usize)> {
    let (n, c, h, w) = x.dims4()?;
    let oh = pool_out(h + 2 * padding, kernel, stride);
    let ow = pool_out(w + 2 * padding, kernel, stride);
    let data = x.flatten_all()?.to_vec1::<f32>()?;
    let row = c * kernel * kernel;
    let mut out = vec![0f32; n * oh * ow * row];
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                let dst = ((b * oh + oy) * ow + ox) * row;
                for ch in 0..c {
                    for ky in 0..kernel {
                        let iy = (oy * stride + ky) as isize - padding as isize;
                        for kx in 0..kernel {
                            let ix = (ox * stride + kx) as isize - padding as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                out[dst + (ch * kernel + ky) * kernel + kx] =
                                    data[((b * c + ch) * h + iy as usize) * w + ix as usize];
                            }
                        }
                    }
                }
            }
        }
    }
    Ok((
        Tensor::from_vec(out, (n * oh * ow, row), x.device())?,
        oh,
        ow,
    ))
}

/// Runs the model on a batch `[n, input_shape...]`, returning the last layer's output.
pub fn forward(
    arch: &Architecture,
    params: &dyn ParamSource,
    x: &Tensor,
) -> candle_core::Result<Tensor> {
    let mut x = x.clone();
    for layer in &arch.layers {
        x = match layer {
            Layer::Linear { name, bias, .. } => {
                let y = params.matmul(&format!("{name}.weight"), &x)?;
                if *bias {
                    y.broadcast_add(&params.tensor(&format!("{name}.bias"))?)?
                } else {
                    y
                }
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
                let n = x.dim(0)?;
                let (cols, oh, ow) = im2col(&x, *kernel, *stride, *padding)?;
                let mut y = params.matmul(&format!("{name}.weight"), &cols)?;
                if *bias {
                    y = y.broadcast_add(&params.tensor(&format!("{name}.bias"))?)?;
                }
                y.reshape((n, oh, ow, *out_channels))?
                    .permute((0, 3, 1, 2))?
                    .contiguous()?
            }
            Layer::Batchnorm { name, eps, .. } => {
                let shape_for = |t: Tensor| -> candle_core::Result<Tensor> {
                    let mut dims = vec![1, t.dim(0)?];
                    dims.extend(std::iter::repeat_n(1, x.rank() - 2));
                    t.reshape(dims)
                };
                let mean = shape_for(params.tensor(&format!("{name}.running_mean"))?)?;
                let var = shape_for(params.tensor(&format!("{name}.running_var"))?)?;
                let weight = shape_for(params.tensor(&format!("{name}.weight"))?)?;
                let beta = shape_for(params.tensor(&format!("{name}.bias"))?)?;
                let denom = (var + *eps)?.sqrt()?;
                x.broadcast_sub(&mean)?
                    .broadcast_div(&denom)?
                    .broadcast_mul(&weight)?
                    .broadcast_add(&beta)?
            }
            Layer::Layernorm { name, eps, .. } => {
                let mean = x.mean_keepdim(D::Minus1)?;
                let centered = x.broadcast_sub(&mean)?;
                let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
                centered
                    .broadcast_div(&(var + *eps)?.sqrt()?)?
                    .broadcast_mul(&params.tensor(&format!("{name}.weight"))?)?
                    .broadcast_add(&params.tensor(&format!("{name}.bias"))?)?
            }
            Layer::Flatten => x.flatten_from(1)?,
            Layer::Maxpool { kernel, stride } => {
                x.max_pool2d_with_stride(*kernel, stride.unwrap_or(*kernel))?
            }
            Layer::Avgpool { kernel, stride } => {
                x.avg_pool2d_with_stride(*kernel, stride.unwrap_or(*kernel))?
            }
            Layer::Relu => x.relu()?,
            Layer::Gelu => x.gelu_erf()?,
            Layer::Silu => x.silu()?,
            Layer::Sigmoid => candle_nn::ops::sigmoid(&x)?,
            Layer::Tanh => x.tanh()?,
            Layer::Softmax => candle_nn::ops::softmax_last_dim(&x)?,
        };
    }
    Ok(x)
}

/// Quantization types by their llama.cpp names.
pub const TYPES: &[&str] = &[
    "f32", "f16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
];

pub fn parse_type(name: &str) -> Option<GgmlDType> {
    Some(match name {
        "f32" => GgmlDType::F32,
        "f16" => GgmlDType::F16,
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q5_0" => GgmlDType::Q5_0,
        "q5_1" => GgmlDType::Q5_1,
        "q8_0" => GgmlDType::Q8_0,
        "q2_k" => GgmlDType::Q2K,
        "q3_k" => GgmlDType::Q3K,
        "q4_k" => GgmlDType::Q4K,
        "q5_k" => GgmlDType::Q5K,
        "q6_k" => GgmlDType::Q6K,
        _ => return None,
    })
}

pub fn type_name(dtype: GgmlDType) -> &'static str {
    match dtype {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4_k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        GgmlDType::Q8K => "q8_k",
    }
}

/// Metadata keys of edgebuild's GGUF files (SPEC.md, "GGUF layout").
pub mod gguf_keys {
    pub const ARCHITECTURE: &str = "general.architecture";
    pub const NAME: &str = "general.name";
    pub const MODEL: &str = "edgebuild.architecture";
    pub const INPUT_SHAPE: &str = "edgebuild.input_shape";
    pub const LABELS: &str = "edgebuild.labels";
    pub const QUANTIZATION: &str = "edgebuild.quantization";
    pub const SOURCES: &str = "edgebuild.sources";
}

/// A GGUF model run through candle's quantized kernels: matmul weights as `QMatMul`, the rest
/// dequantized to f32.
pub struct QuantModel {
    pub arch: Architecture,
    matmuls: BTreeMap<String, QMatMul>,
    tensors: BTreeMap<String, Tensor>,
    /// Type of every tensor, by name.
    pub types: BTreeMap<String, String>,
}

impl QuantModel {
    pub fn load(path: &Path) -> Result<QuantModel, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::read(file, &path.display().to_string())
    }

    /// Reads a GGUF from any seekable reader (a file, or bytes in memory); `name` is how errors
    /// call it.
    pub fn read(
        mut file: impl std::io::Read + std::io::Seek,
        name: &str,
    ) -> Result<QuantModel, String> {
        for var in ["CANDLE_DEQUANTIZE_ALL", "CANDLE_DEQUANTIZE_ALL_F16"] {
            if std::env::var_os(var).is_some() {
                return Err(format!(
                    "{var} is set: candle would run the quantized model in float; unset it to evaluate the real quantized kernels"
                ));
            }
        }
        let err = |e: candle_core::Error| format!("{name}: {e}");
        let content = gguf_file::Content::read(&mut file).map_err(err)?;
        let text = match content.metadata.get(gguf_keys::MODEL) {
            Some(gguf_file::Value::String(s)) => s.clone(),
            _ => {
                return Err(format!(
                    "{}: not an edgebuild model (no `{}` metadata)",
                    name,
                    gguf_keys::MODEL
                ));
            }
        };
        let arch: Architecture = serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))?;
        let mut matmuls = BTreeMap::new();
        let mut tensors = BTreeMap::new();
        let mut types = BTreeMap::new();
        for spec in arch.tensor_specs()? {
            let q: QTensor = content
                .tensor(&mut file, &spec.name, &Device::Cpu)
                .map_err(|e| format!("{name}: tensor `{}`: {e}", spec.name))?;
            types.insert(spec.name.clone(), type_name(q.dtype()).to_string());
            if spec.matmul {
                matmuls.insert(spec.name.clone(), QMatMul::from_qtensor(q).map_err(err)?);
            } else {
                tensors.insert(spec.name.clone(), q.dequantize(&Device::Cpu).map_err(err)?);
            }
        }
        Ok(QuantModel {
            arch,
            matmuls,
            tensors,
            types,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        forward(&self.arch, self, x)
    }
}

impl ParamSource for QuantModel {
    fn tensor(&self, name: &str) -> candle_core::Result<Tensor> {
        named(&self.tensors, name)
    }

    fn matmul(&self, weight: &str, x: &Tensor) -> candle_core::Result<Tensor> {
        self.matmuls
            .get(weight)
            .ok_or_else(|| candle_core::Error::Msg(format!("no matmul weight {weight}")))?
            .forward(x)
    }
}

/// Softmax over the last dimension unless the model already ends with one.
pub fn probabilities(arch: &Architecture, output: &Tensor) -> candle_core::Result<Tensor> {
    if matches!(arch.layers.last(), Some(Layer::Softmax)) {
        Ok(output.clone())
    } else {
        candle_nn::ops::softmax_last_dim(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp() -> Architecture {
        serde_saphyr::from_str(
            "name: t\ninput_shape: [1, 6, 6]\nlabels: [a, b, c]\nlayers:\n  - {type: conv2d, name: c1, in_channels: 1, out_channels: 2, kernel: 3, padding: 1}\n  - {type: batchnorm, name: bn, features: 2}\n  - {type: relu}\n  - {type: maxpool, kernel: 2}\n  - {type: flatten}\n  - {type: linear, name: fc, in: 18, out: 3}\n  - {type: softmax}\n",
        )
        .unwrap()
    }

    #[test]
    fn shapes_params_and_macs() {
        let infos = mlp().layer_infos().unwrap();
        assert_eq!(infos[0].output_shape, vec![2, 6, 6]);
        assert_eq!(infos[0].params, 2 * 9 + 2);
        assert_eq!(infos[0].macs, 36 * 2 * 9);
        assert_eq!(infos[3].output_shape, vec![2, 3, 3]);
        assert_eq!(infos[5].macs, 18 * 3);
    }

    #[test]
    fn inconsistent_architectures_are_rejected() {
        let mut arch = mlp();
        arch.layers.remove(4); // no flatten before the linear layer
        let err = arch.layer_infos().unwrap_err();
        assert!(err.contains("add a flatten layer"), "{err}");
    }

    #[test]
    fn im2col_conv_matches_candle_conv2d() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 5.0 * 5.0, &dev)
            .unwrap()
            .reshape((2, 3, 5, 5))
            .unwrap();
        let w = (Tensor::arange(0f32, 4.0 * 3.0 * 3.0 * 3.0, &dev).unwrap() / 50.0)
            .unwrap()
            .reshape((4, 3, 3, 3))
            .unwrap();
        for (stride, padding) in [(1, 0), (2, 1)] {
            let expected = x.conv2d(&w, padding, stride, 1, 1).unwrap();
            let (cols, oh, ow) = im2col(&x, 3, stride, padding).unwrap();
            let got = cols
                .matmul(&w.reshape((4, 27)).unwrap().t().unwrap())
                .unwrap()
                .reshape((2, oh, ow, 4))
                .unwrap()
                .permute((0, 3, 1, 2))
                .unwrap();
            let diff = (expected - got)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-3, "stride {stride} padding {padding}: {diff}");
        }
    }
}

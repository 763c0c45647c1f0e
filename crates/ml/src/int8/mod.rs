//! Full-integer int8 models (SPEC.md, "`int8`"): TFLite's int8 specification, the
//! arithmetic of [`quant`], the reference kernels of [`conv`] and [`ops`], and the arena
//! planner ([`planner`]).
//!
//! An [`Int8Model`] is a list of kernel calls over int8 tensors in NHWC layout (4-D activations)
//! or row-major (others), each with its scale and zero point, and the constants the kernels read
//! (int8 weights, int32 biases, per-channel multipliers and shifts, tables). It is made from a
//! float graph and the calibrated activation ranges by [`lower`], evaluated here by the
//! reference kernels, and turned into C by the code generator: both run the same integers, so
//! the device's outputs equal these bit for bit. The file is safetensors: one tensor per
//! constant, the model's structure as JSON metadata.

pub mod calibrate;
pub mod codegen;
pub mod conv;
pub mod inplace;
pub mod lower;
pub mod ops;
pub mod planner;
pub mod qdq;
pub mod quant;
pub mod tflite;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use conv::{ConvParams, FcParams, Requant};
pub use ops::{AddParams, ConcatInput, GlobalPoolParams, MulParams, PoolParams};

/// Why a kernel refused its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelError {
    /// Inconsistent parameters (message says which).
    BadParams(&'static str),
    /// A slice has the wrong length.
    BadLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelError::BadParams(m) => write!(f, "bad parameters: {m}"),
            KernelError::BadLength {
                what,
                expected,
                got,
            } => {
                write!(f, "{what}: expected {expected} elements, got {got}")
            }
        }
    }
}

impl std::error::Error for KernelError {}

/// The metadata key of the model's structure in its safetensors file.
pub const METADATA_KEY: &str = "edgebuild.int8";
/// The format name in that structure.
pub const FORMAT: &str = "edgebuild-int8-v1";

/// How an int8 tensor's values are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// A 4-D activation `[1, C, H, W]` of the float graph, stored `[1, H, W, C]`.
    Nhwc,
    /// Row-major, as in the float graph.
    Plain,
}

/// An activation tensor: `real = scale · (q − zero_point)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QTensor {
    /// The float graph's tensor it stands for.
    pub name: String,
    /// The dimensions in memory order (batch 1 first).
    pub shape: Vec<usize>,
    pub layout: Layout,
    pub scale: f64,
    pub zero_point: i32,
}

impl QTensor {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A constant of the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Blob {
    I8(Vec<i8>),
    I32(Vec<i32>),
    U32(Vec<u32>),
}

impl Blob {
    pub fn bytes(&self) -> usize {
        match self {
            Blob::I8(v) => v.len(),
            Blob::I32(v) => 4 * v.len(),
            Blob::U32(v) => 4 * v.len(),
        }
    }
}

/// What one node computes, with the names of the constants it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kernel", rename_all = "snake_case")]
pub enum Kernel {
    /// Conv2D, plain or grouped: weights `[out_c][k_h][k_w][in_c/groups]`.
    Conv {
        params: ConvParams,
        weights: String,
        bias: Option<String>,
        mult: String,
        shift: String,
    },
    /// DepthwiseConv2D: weights `[k_h][k_w][out_c]`.
    Depthwise {
        params: ConvParams,
        weights: String,
        bias: Option<String>,
        mult: String,
        shift: String,
    },
    FullyConnected {
        params: FcParams,
        weights: String,
        bias: Option<String>,
        mult: String,
        shift: String,
    },
    /// The second operand is `constant` when it is a weight of the float graph.
    Add {
        params: AddParams,
        constant: Option<String>,
    },
    Mul {
        params: MulParams,
        constant: Option<String>,
    },
    MaxPool {
        params: PoolParams,
    },
    AvgPool {
        params: PoolParams,
    },
    GlobalAvgPool {
        params: GlobalPoolParams,
    },
    Softmax {
        rows: i32,
        cols: i32,
        table: String,
    },
    Lut {
        table: String,
    },
    Concat {
        outer: i32,
        inner: i32,
        out_zp: i32,
        inputs: Vec<ConcatInput>,
    },
    Transpose {
        in_shape: [i32; 4],
        perm: [i32; 4],
    },
    Pad {
        in_shape: [i32; 4],
        before: [i32; 4],
        after: [i32; 4],
        value: i32,
    },
    /// The output is the input with another shape: the same memory.
    View,
}

impl Kernel {
    pub fn name(&self) -> &'static str {
        match self {
            Kernel::Conv { .. } => "conv",
            Kernel::Depthwise { .. } => "depthwise",
            Kernel::FullyConnected { .. } => "fully_connected",
            Kernel::Add { .. } => "add",
            Kernel::Mul { .. } => "mul",
            Kernel::MaxPool { .. } => "max_pool",
            Kernel::AvgPool { .. } => "avg_pool",
            Kernel::GlobalAvgPool { .. } => "global_avg_pool",
            Kernel::Softmax { .. } => "softmax",
            Kernel::Lut { .. } => "lut",
            Kernel::Concat { .. } => "concat",
            Kernel::Transpose { .. } => "transpose",
            Kernel::Pad { .. } => "pad",
            Kernel::View => "view",
        }
    }

    /// Bytes of scratch the kernel needs (the C runtime's `eb_*_scratch_bytes`).
    pub fn scratch_bytes(&self) -> usize {
        match self {
            Kernel::Conv { params, .. } => conv::conv2d_scratch_bytes(params).unwrap_or(0),
            Kernel::Depthwise { params, .. } => {
                conv::depthwise_conv2d_scratch_bytes(params).unwrap_or(0)
            }
            Kernel::FullyConnected { params, .. } => {
                conv::fully_connected_scratch_bytes(params).unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// Multiply-accumulates of one call.
    pub fn macs(&self) -> u64 {
        match self {
            Kernel::Conv { params: p, .. } => {
                (p.out_h * p.out_w * p.out_c) as u64
                    * (p.k_h * p.k_w * (p.in_c / p.groups.max(1))) as u64
            }
            Kernel::Depthwise { params: p, .. } => {
                (p.out_h * p.out_w * p.out_c) as u64 * (p.k_h * p.k_w) as u64
            }
            Kernel::FullyConnected { params: p, .. } => (p.in_features * p.out_features) as u64,
            _ => 0,
        }
    }
}

/// One kernel call: reads `inputs` (tensor indices), writes `output`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QNode {
    /// The float graph's node it comes from (a fused activation is named after the node it
    /// joined).
    pub name: String,
    #[serde(flatten)]
    pub kernel: Kernel,
    pub inputs: Vec<usize>,
    pub output: usize,
}

/// A full-integer model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Int8Model {
    pub format: String,
    pub name: String,
    #[serde(default)]
    pub labels: Vec<String>,
    pub tensors: Vec<QTensor>,
    pub input: usize,
    pub output: usize,
    pub nodes: Vec<QNode>,
    /// The float graph's input shape, per sample (NCHW where 4-D).
    pub input_shape: Vec<usize>,
    /// The float graph's output shape, per sample.
    pub output_shape: Vec<usize>,
    #[serde(skip)]
    pub blobs: BTreeMap<String, Blob>,
}

impl Int8Model {
    /// Bytes of every constant.
    pub fn constant_bytes(&self) -> usize {
        self.blobs.values().map(Blob::bytes).sum()
    }

    /// Writes the model as safetensors (constants as tensors, structure as metadata), atomically.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        use safetensors::tensor::{Dtype, TensorView};
        let meta = serde_json::to_string(self).map_err(|e| e.to_string())?;
        let bytes: BTreeMap<&String, (Dtype, Vec<u8>, usize)> = self
            .blobs
            .iter()
            .map(|(k, b)| {
                let (dtype, raw, n) = match b {
                    Blob::I8(v) => (Dtype::I8, v.iter().map(|&x| x as u8).collect(), v.len()),
                    Blob::I32(v) => (
                        Dtype::I32,
                        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        v.len(),
                    ),
                    Blob::U32(v) => (
                        Dtype::U32,
                        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        v.len(),
                    ),
                };
                (k, (dtype, raw, n))
            })
            .collect();
        let views: Vec<(String, TensorView)> = bytes
            .iter()
            .map(|(k, (dtype, raw, n))| {
                TensorView::new(*dtype, vec![*n], raw)
                    .map(|v| ((*k).clone(), v))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        let mut metadata = std::collections::HashMap::new();
        metadata.insert(METADATA_KEY.to_string(), meta);
        let out = safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())?;
        edgebuild_engine::files::write_atomic(path, &out)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Reads a model written by [`Int8Model::save`] and checks it.
    pub fn load(path: &Path) -> Result<Int8Model, String> {
        let at = |e: String| format!("{}: {e}", path.display());
        let bytes = std::fs::read(path).map_err(|e| at(e.to_string()))?;
        Self::from_bytes(&bytes).map_err(at)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Int8Model, String> {
        use safetensors::tensor::Dtype;
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("not an int8 model: {e}"))?;
        let meta = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(METADATA_KEY))
            .ok_or_else(|| format!("not an edgebuild int8 model (no `{METADATA_KEY}` metadata)"))?;
        let mut model: Int8Model =
            serde_json::from_str(meta).map_err(|e| format!("its structure: {e}"))?;
        if model.format != FORMAT {
            return Err(format!("format `{}` is not {FORMAT}", model.format));
        }
        let tensors = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        for (name, view) in tensors.tensors() {
            let raw = view.data();
            let blob = match view.dtype() {
                Dtype::I8 => Blob::I8(raw.iter().map(|&b| b as i8).collect()),
                Dtype::I32 => Blob::I32(
                    raw.chunks_exact(4)
                        .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")))
                        .collect(),
                ),
                Dtype::U32 => Blob::U32(
                    raw.chunks_exact(4)
                        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                        .collect(),
                ),
                other => return Err(format!("constant `{name}` has type {other:?}")),
            };
            model.blobs.insert(name, blob);
        }
        model.check()?;
        Ok(model)
    }

    /// Every index and constant a node names exists, with the type it needs.
    pub fn check(&self) -> Result<(), String> {
        let n = self.tensors.len();
        if self.input >= n || self.output >= n {
            return Err("the input or output is not a tensor".into());
        }
        for node in &self.nodes {
            if node.output >= n || node.inputs.iter().any(|&i| i >= n) {
                return Err(format!(
                    "node `{}` names a tensor that does not exist",
                    node.name
                ));
            }
            for name in self.constants_of(&node.kernel) {
                if !self.blobs.contains_key(name) {
                    return Err(format!(
                        "node `{}` reads a constant `{name}` that is missing",
                        node.name
                    ));
                }
            }
        }
        Ok(())
    }

    fn constants_of<'a>(&self, k: &'a Kernel) -> Vec<&'a str> {
        match k {
            Kernel::Conv {
                weights,
                bias,
                mult,
                shift,
                ..
            }
            | Kernel::Depthwise {
                weights,
                bias,
                mult,
                shift,
                ..
            }
            | Kernel::FullyConnected {
                weights,
                bias,
                mult,
                shift,
                ..
            } => {
                let mut v = vec![weights.as_str(), mult.as_str(), shift.as_str()];
                v.extend(bias.as_deref());
                v
            }
            Kernel::Add { constant, .. } | Kernel::Mul { constant, .. } => {
                constant.as_deref().into_iter().collect()
            }
            Kernel::Softmax { table, .. } | Kernel::Lut { table } => vec![table.as_str()],
            _ => Vec::new(),
        }
    }

    /// Bytes node `i` moves: the constants it reads, its inputs and its output.
    pub fn node_bytes(&self, i: usize) -> usize {
        let Some(node) = self.nodes.get(i) else {
            return 0;
        };
        let constants: usize = self
            .constants_of(&node.kernel)
            .iter()
            .filter_map(|c| self.blobs.get(*c))
            .map(Blob::bytes)
            .sum();
        let tensors: usize = node
            .inputs
            .iter()
            .chain(std::iter::once(&node.output))
            .filter_map(|&t| self.tensors.get(t))
            .map(QTensor::len)
            .sum();
        constants + tensors
    }

    fn i8s(&self, name: &str) -> Result<&[i8], String> {
        match self.blobs.get(name) {
            Some(Blob::I8(v)) => Ok(v),
            _ => Err(format!("constant `{name}` is not int8")),
        }
    }

    fn i32s(&self, name: &str) -> Result<&[i32], String> {
        match self.blobs.get(name) {
            Some(Blob::I32(v)) => Ok(v),
            _ => Err(format!("constant `{name}` is not int32")),
        }
    }

    /// Quantizes one float sample (the float graph's layout) to the input tensor.
    pub fn quantize_input(&self, sample: &[f32]) -> Vec<i8> {
        let t = &self.tensors[self.input];
        let q: Vec<i8> = sample
            .iter()
            .map(|&v| quant::quantize_value(v as f64, t.scale, t.zero_point) as i8)
            .collect();
        to_memory(&q, &self.input_shape, t.layout)
    }

    /// Dequantizes the output tensor to the float graph's layout.
    pub fn dequantize_output(&self, q: &[i8]) -> Vec<f32> {
        let t = &self.tensors[self.output];
        let plain = from_memory(q, &self.output_shape, t.layout);
        plain
            .iter()
            .map(|&v| (t.scale * (v as i32 - t.zero_point) as f64) as f32)
            .collect()
    }

    /// Runs the model on one int8 input, calling `each(node, output)` after every node.
    pub fn run_with(
        &self,
        input: &[i8],
        mut each: impl FnMut(usize, &[i8]),
    ) -> Result<Vec<i8>, String> {
        let mut values: Vec<Option<Vec<i8>>> = vec![None; self.tensors.len()];
        if input.len() != self.tensors[self.input].len() {
            return Err(format!(
                "the input has {} values, the model takes {}",
                input.len(),
                self.tensors[self.input].len()
            ));
        }
        values[self.input] = Some(input.to_vec());
        for (i, node) in self.nodes.iter().enumerate() {
            let get = |t: usize| -> Result<&[i8], String> {
                values[t]
                    .as_deref()
                    .ok_or_else(|| format!("node `{}` reads a tensor not computed yet", node.name))
            };
            let mut out = vec![0i8; self.tensors[node.output].len()];
            let e = |e: KernelError| format!("node `{}` ({}): {e}", node.name, node.kernel.name());
            match &node.kernel {
                Kernel::Conv {
                    params,
                    weights,
                    bias,
                    mult,
                    shift,
                } => {
                    let rq = Requant {
                        mult: self.i32s(mult)?,
                        shift: self.i32s(shift)?,
                    };
                    let bias = bias.as_deref().map(|b| self.i32s(b)).transpose()?;
                    conv::conv2d(
                        params,
                        &rq,
                        get(node.inputs[0])?,
                        self.i8s(weights)?,
                        bias,
                        &mut out,
                    )
                    .map_err(e)?
                }
                Kernel::Depthwise {
                    params,
                    weights,
                    bias,
                    mult,
                    shift,
                } => {
                    let rq = Requant {
                        mult: self.i32s(mult)?,
                        shift: self.i32s(shift)?,
                    };
                    let bias = bias.as_deref().map(|b| self.i32s(b)).transpose()?;
                    conv::depthwise_conv2d(
                        params,
                        &rq,
                        get(node.inputs[0])?,
                        self.i8s(weights)?,
                        bias,
                        &mut out,
                    )
                    .map_err(e)?
                }
                Kernel::FullyConnected {
                    params,
                    weights,
                    bias,
                    mult,
                    shift,
                } => {
                    let rq = Requant {
                        mult: self.i32s(mult)?,
                        shift: self.i32s(shift)?,
                    };
                    let bias = bias.as_deref().map(|b| self.i32s(b)).transpose()?;
                    conv::fully_connected(
                        params,
                        &rq,
                        get(node.inputs[0])?,
                        self.i8s(weights)?,
                        bias,
                        &mut out,
                    )
                    .map_err(e)?
                }
                Kernel::Add { params, constant } => {
                    let b = match constant {
                        Some(c) => self.i8s(c)?,
                        None => get(node.inputs[1])?,
                    };
                    ops::add(params, get(node.inputs[0])?, b, &mut out).map_err(e)?
                }
                Kernel::Mul { params, constant } => {
                    let b = match constant {
                        Some(c) => self.i8s(c)?,
                        None => get(node.inputs[1])?,
                    };
                    ops::mul(params, get(node.inputs[0])?, b, &mut out).map_err(e)?
                }
                Kernel::MaxPool { params } => {
                    ops::max_pool2d(params, get(node.inputs[0])?, &mut out).map_err(e)?
                }
                Kernel::AvgPool { params } => {
                    ops::avg_pool2d(params, get(node.inputs[0])?, &mut out).map_err(e)?
                }
                Kernel::GlobalAvgPool { params } => {
                    ops::global_avg_pool(params, get(node.inputs[0])?, &mut out).map_err(e)?
                }
                Kernel::Softmax { rows, cols, table } => {
                    let t: [u32; 256] = match self.blobs.get(table) {
                        Some(Blob::U32(v)) if v.len() == 256 => {
                            v.as_slice().try_into().expect("256 entries")
                        }
                        _ => return Err(format!("constant `{table}` is not a 256-entry table")),
                    };
                    ops::softmax(*rows, *cols, &t, get(node.inputs[0])?, &mut out).map_err(e)?
                }
                Kernel::Lut { table } => {
                    let t: [i8; 256] = self
                        .i8s(table)?
                        .try_into()
                        .map_err(|_| format!("constant `{table}` is not a 256-entry table"))?;
                    ops::lut(&t, get(node.inputs[0])?, &mut out).map_err(e)?
                }
                Kernel::Concat {
                    outer,
                    inner,
                    out_zp,
                    inputs,
                } => {
                    let parts: Vec<(ConcatInput, &[i8])> = inputs
                        .iter()
                        .zip(&node.inputs)
                        .map(|(c, &t)| get(t).map(|d| (*c, d)))
                        .collect::<Result<_, _>>()?;
                    ops::concat(*outer, *inner, *out_zp, &parts, &mut out).map_err(e)?
                }
                Kernel::Transpose { in_shape, perm } => {
                    ops::transpose(in_shape, perm, get(node.inputs[0])?, &mut out).map_err(e)?
                }
                Kernel::Pad {
                    in_shape,
                    before,
                    after,
                    value,
                } => ops::pad(
                    in_shape,
                    before,
                    after,
                    *value,
                    get(node.inputs[0])?,
                    &mut out,
                )
                .map_err(e)?,
                Kernel::View => out.copy_from_slice(get(node.inputs[0])?),
            }
            each(i, &out);
            values[node.output] = Some(out);
        }
        values[self.output]
            .take()
            .ok_or_else(|| "the output was not computed".to_string())
    }

    /// Runs the model on one int8 input.
    pub fn run(&self, input: &[i8]) -> Result<Vec<i8>, String> {
        self.run_with(input, |_, _| {})
    }
}

/// A float-layout (NCHW) tensor's values in memory order.
pub fn to_memory(values: &[i8], shape: &[usize], layout: Layout) -> Vec<i8> {
    match (layout, shape) {
        (Layout::Nhwc, [c, h, w]) => {
            let mut out = vec![0i8; values.len()];
            for ci in 0..*c {
                for y in 0..*h {
                    for x in 0..*w {
                        out[(y * w + x) * c + ci] = values[(ci * h + y) * w + x];
                    }
                }
            }
            out
        }
        _ => values.to_vec(),
    }
}

/// Memory order back to the float layout (NCHW).
pub fn from_memory(values: &[i8], shape: &[usize], layout: Layout) -> Vec<i8> {
    match (layout, shape) {
        (Layout::Nhwc, [c, h, w]) => {
            let mut out = vec![0i8; values.len()];
            for ci in 0..*c {
                for y in 0..*h {
                    for x in 0..*w {
                        out[(ci * h + y) * w + x] = values[(y * w + x) * c + ci];
                    }
                }
            }
            out
        }
        _ => values.to_vec(),
    }
}

/// Runs the model on every input (in parallel; the results in input order).
pub fn run_all(model: &Int8Model, inputs: &[Vec<i8>]) -> Result<Vec<Vec<i8>>, String> {
    use rayon::prelude::*;
    inputs.par_iter().map(|x| model.run(x)).collect()
}

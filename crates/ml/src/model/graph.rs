//! The graph model format (SPEC.md, "Graph models"): named tensors, nodes with ONNX semantics
//! that read and write them, in an order that is checked to be topological.
//!
//! A graph file's nodes are [`RawNode`]s: an `op` name, a `name`, `inputs`, `outputs` and the
//! op's attributes beside them. [`Graph::build`] types each node ([`Op`]), checks that every
//! input is the graph input, a weight, or the output of an earlier node, infers every tensor's
//! shape (with a batch of 1; the batch is dimension 0 and no op may move it), and computes each
//! node's parameters, MACs and activation bytes. The chain of layers of the older format is
//! turned into the same graph by [`super::layers`], so everything downstream sees one model.
//! This module computes nothing numeric: the forward passes are in [`super::exec`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A node as written in a graph file: `{op: Conv, name: c1, inputs: [x, c1.weight], outputs:
/// [y], kernel_shape: [3, 3], ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawNode {
    pub op: String,
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// The op's attributes, by their ONNX names.
    #[serde(flatten)]
    pub attrs: BTreeMap<String, serde_json::Value>,
}

/// A 2-D convolution (ONNX `Conv`): weights `[out, in/group, kh, kw]`, optional bias `[out]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv {
    pub kernel_shape: [usize; 2],
    #[serde(default = "ones2")]
    pub strides: [usize; 2],
    /// Top, left, bottom, right (ONNX order: all begins, then all ends).
    #[serde(default)]
    pub pads: [usize; 4],
    #[serde(default = "ones2")]
    pub dilations: [usize; 2],
    #[serde(default = "one")]
    pub group: usize,
}

/// A 2-D pooling window (ONNX `MaxPool`, `AveragePool`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub kernel_shape: [usize; 2],
    #[serde(default = "ones2")]
    pub strides: [usize; 2],
    #[serde(default)]
    pub pads: [usize; 4],
    #[serde(default = "ones2")]
    pub dilations: [usize; 2],
    #[serde(default)]
    pub ceil_mode: bool,
    /// AveragePool only: padded cells count in the divisor.
    #[serde(default)]
    pub count_include_pad: bool,
}

/// ONNX `Gemm`: `alpha · A' · B' + beta · C`, `'` a transpose when asked.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gemm {
    #[serde(default = "one_f")]
    pub alpha: f32,
    #[serde(default = "one_f")]
    pub beta: f32,
    #[serde(default, rename = "transA")]
    pub trans_a: bool,
    #[serde(default, rename = "transB")]
    pub trans_b: bool,
}

fn one() -> usize {
    1
}
fn ones2() -> [usize; 2] {
    [1, 1]
}
fn one_f() -> f32 {
    1.0
}
fn eps_default() -> f32 {
    1e-5
}
fn minus_one() -> i64 {
    -1
}

/// How Pad fills the new cells (ONNX `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PadMode {
    #[default]
    Constant,
    Reflect,
    Edge,
    Wrap,
}

/// An op with its attributes: ONNX semantics (SPEC.md, "Graph models" lists each). Constant
/// operands that ONNX passes as inputs (a Reshape's shape, Clip's bounds, Pad's pads) are
/// attributes here.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Conv(Conv),
    Gemm(Gemm),
    MatMul,
    Add,
    Mul,
    Concat {
        axis: i64,
    },
    Relu,
    Clip {
        min: f32,
        max: f32,
    },
    LeakyRelu {
        alpha: f32,
    },
    HardSwish,
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    Sigmoid,
    Tanh,
    /// `approximate: tanh` selects the tanh approximation; the default is the exact erf form.
    Gelu {
        tanh: bool,
    },
    /// `x · sigmoid(x)` (ONNX has no op of its own before `Swish`, opset 24).
    Silu,
    Erf,
    BatchNormalization {
        epsilon: f32,
    },
    MaxPool(Pool),
    AveragePool(Pool),
    GlobalAveragePool,
    Flatten {
        axis: i64,
    },
    /// Target shape with the batch dimension; `0` copies the input's dimension, `-1` is
    /// inferred.
    Reshape {
        shape: Vec<i64>,
    },
    Transpose {
        perm: Vec<usize>,
    },
    Squeeze {
        axes: Vec<i64>,
    },
    Unsqueeze {
        axes: Vec<i64>,
    },
    Softmax {
        axis: i64,
    },
    LayerNormalization {
        axis: i64,
        epsilon: f32,
    },
    /// Padding: begins of every axis, then ends (may be negative: a crop). `mode` is
    /// `constant` (with `value`), `reflect`, `edge` or `wrap`.
    Pad {
        pads: Vec<i64>,
        value: f32,
        mode: PadMode,
    },
    Identity,
}

/// Every op name a graph may use, sorted.
pub const OP_NAMES: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Concat",
    "Conv",
    "Erf",
    "Flatten",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LayerNormalization",
    "LeakyRelu",
    "MatMul",
    "MaxPool",
    "Mul",
    "Pad",
    "Relu",
    "Reshape",
    "Sigmoid",
    "Silu",
    "Softmax",
    "Squeeze",
    "Tanh",
    "Transpose",
    "Unsqueeze",
];

impl Op {
    /// Types an op from its name and attributes; unknown names and attributes are errors.
    pub fn parse(name: &str, attrs: &BTreeMap<String, serde_json::Value>) -> Result<Op, String> {
        let value = serde_json::Value::Object(attrs.clone().into_iter().collect());
        fn typed<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, String> {
            serde_json::from_value(v).map_err(|e| e.to_string())
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Nothing {}
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Axis {
            #[serde(default = "minus_one")]
            axis: i64,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct AxisOne {
            #[serde(default = "one_i")]
            axis: i64,
        }
        fn one_i() -> i64 {
            1
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Eps {
            #[serde(default = "eps_default")]
            epsilon: f32,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct LayerNorm {
            #[serde(default = "minus_one")]
            axis: i64,
            #[serde(default = "eps_default")]
            epsilon: f32,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Bounds {
            #[serde(default = "neg_inf")]
            min: f32,
            #[serde(default = "pos_inf")]
            max: f32,
        }
        fn neg_inf() -> f32 {
            f32::NEG_INFINITY
        }
        fn pos_inf() -> f32 {
            f32::INFINITY
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Alpha {
            #[serde(default = "alpha_default")]
            alpha: f32,
        }
        fn alpha_default() -> f32 {
            0.01
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct HardSigmoid {
            #[serde(default = "hs_alpha")]
            alpha: f32,
            #[serde(default = "hs_beta")]
            beta: f32,
        }
        fn hs_alpha() -> f32 {
            0.2
        }
        fn hs_beta() -> f32 {
            0.5
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Gelu {
            #[serde(default)]
            approximate: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Shape {
            shape: Vec<i64>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Perm {
            perm: Vec<usize>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Axes {
            axes: Vec<i64>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Pad {
            pads: Vec<i64>,
            #[serde(default)]
            value: f32,
            #[serde(default)]
            mode: PadMode,
        }
        let nothing = |op: Op| typed::<Nothing>(value.clone()).map(|_| op);
        Ok(match name {
            "Conv" => Op::Conv(typed(value)?),
            "Gemm" => Op::Gemm(typed(value)?),
            "MatMul" => nothing(Op::MatMul)?,
            "Add" => nothing(Op::Add)?,
            "Mul" => nothing(Op::Mul)?,
            "Concat" => Op::Concat {
                axis: typed::<Axis>(value)?.axis,
            },
            "Relu" => nothing(Op::Relu)?,
            "Clip" => {
                let b: Bounds = typed(value)?;
                if b.min.is_nan() || b.max.is_nan() || b.min > b.max {
                    return Err(format!("min {} is above max {}", b.min, b.max));
                }
                Op::Clip {
                    min: b.min,
                    max: b.max,
                }
            }
            "LeakyRelu" => Op::LeakyRelu {
                alpha: typed::<Alpha>(value)?.alpha,
            },
            "HardSwish" => nothing(Op::HardSwish)?,
            "HardSigmoid" => {
                let h: HardSigmoid = typed(value)?;
                Op::HardSigmoid {
                    alpha: h.alpha,
                    beta: h.beta,
                }
            }
            "Sigmoid" => nothing(Op::Sigmoid)?,
            "Tanh" => nothing(Op::Tanh)?,
            "Gelu" => {
                let g: Gelu = typed(value)?;
                match g.approximate.as_deref() {
                    None | Some("none") => Op::Gelu { tanh: false },
                    Some("tanh") => Op::Gelu { tanh: true },
                    Some(other) => {
                        return Err(format!("approximate `{other}` is not none or tanh"));
                    }
                }
            }
            "Silu" => nothing(Op::Silu)?,
            "Erf" => nothing(Op::Erf)?,
            "BatchNormalization" => Op::BatchNormalization {
                epsilon: typed::<Eps>(value)?.epsilon,
            },
            "MaxPool" => Op::MaxPool(typed(value)?),
            "AveragePool" => Op::AveragePool(typed(value)?),
            "GlobalAveragePool" => nothing(Op::GlobalAveragePool)?,
            "Flatten" => Op::Flatten {
                axis: typed::<AxisOne>(value)?.axis,
            },
            "Reshape" => Op::Reshape {
                shape: typed::<Shape>(value)?.shape,
            },
            "Transpose" => Op::Transpose {
                perm: typed::<Perm>(value)?.perm,
            },
            "Squeeze" => Op::Squeeze {
                axes: typed::<Axes>(value)?.axes,
            },
            "Unsqueeze" => Op::Unsqueeze {
                axes: typed::<Axes>(value)?.axes,
            },
            "Softmax" => Op::Softmax {
                axis: typed::<Axis>(value)?.axis,
            },
            "LayerNormalization" => {
                let l: LayerNorm = typed(value)?;
                Op::LayerNormalization {
                    axis: l.axis,
                    epsilon: l.epsilon,
                }
            }
            "Pad" => {
                let p: Pad = typed(value)?;
                Op::Pad {
                    pads: p.pads,
                    value: p.value,
                    mode: p.mode,
                }
            }
            "Identity" => nothing(Op::Identity)?,
            other => {
                return Err(format!(
                    "unknown op `{other}`; graph models use: {}",
                    OP_NAMES.join(", ")
                ));
            }
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv(_) => "Conv",
            Op::Gemm(_) => "Gemm",
            Op::MatMul => "MatMul",
            Op::Add => "Add",
            Op::Mul => "Mul",
            Op::Concat { .. } => "Concat",
            Op::Relu => "Relu",
            Op::Clip { .. } => "Clip",
            Op::LeakyRelu { .. } => "LeakyRelu",
            Op::HardSwish => "HardSwish",
            Op::HardSigmoid { .. } => "HardSigmoid",
            Op::Sigmoid => "Sigmoid",
            Op::Tanh => "Tanh",
            Op::Gelu { .. } => "Gelu",
            Op::Silu => "Silu",
            Op::Erf => "Erf",
            Op::BatchNormalization { .. } => "BatchNormalization",
            Op::MaxPool(_) => "MaxPool",
            Op::AveragePool(_) => "AveragePool",
            Op::GlobalAveragePool => "GlobalAveragePool",
            Op::Flatten { .. } => "Flatten",
            Op::Reshape { .. } => "Reshape",
            Op::Transpose { .. } => "Transpose",
            Op::Squeeze { .. } => "Squeeze",
            Op::Unsqueeze { .. } => "Unsqueeze",
            Op::Softmax { .. } => "Softmax",
            Op::LayerNormalization { .. } => "LayerNormalization",
            Op::Pad { .. } => "Pad",
            Op::Identity => "Identity",
        }
    }

    /// How many inputs the op takes: (required, at most).
    fn arity(&self) -> (usize, usize) {
        match self {
            Op::Conv(_) => (2, 3),
            Op::Gemm(_) => (2, 3),
            Op::MatMul | Op::Add | Op::Mul => (2, 2),
            Op::Concat { .. } => (1, usize::MAX),
            Op::BatchNormalization { .. } => (5, 5),
            Op::LayerNormalization { .. } => (2, 3),
            _ => (1, 1),
        }
    }

    /// Ops whose output is their input viewed with another shape: no new memory.
    pub fn is_view(&self) -> bool {
        matches!(
            self,
            Op::Flatten { .. }
                | Op::Reshape { .. }
                | Op::Squeeze { .. }
                | Op::Unsqueeze { .. }
                | Op::Identity
        )
    }

    /// Elementwise ops of one input.
    pub fn is_unary(&self) -> bool {
        matches!(
            self,
            Op::Relu
                | Op::Clip { .. }
                | Op::LeakyRelu { .. }
                | Op::HardSwish
                | Op::HardSigmoid { .. }
                | Op::Sigmoid
                | Op::Tanh
                | Op::Gelu { .. }
                | Op::Silu
                | Op::Erf
        )
    }
}

/// A typed, checked node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// How reports call it: the layer kind of a chain model (`linear`), else the op name.
    pub kind: String,
    /// The name a report shows: a chain layer's name, or the node's name in a graph.
    pub label: Option<String>,
}

/// A weight the model reads, with the shape it must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// A matmul weight: quantizable, stored as `[out, rows]` with rows of
    /// `shape[1..].product()` values.
    pub matmul: bool,
    /// A convolution's groups: each group's output channels multiply their own input columns.
    pub groups: usize,
}

/// A node with its shapes and costs, for validation and reports.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    pub index: usize,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Per sample (without the batch dimension).
    pub input_shape: Vec<usize>,
    pub output_shape: Vec<usize>,
    pub params: u64,
    /// Multiply-accumulates per sample.
    pub macs: u64,
    /// Bytes of the f32 output activation per sample.
    pub activation_bytes: u64,
    /// Bytes of the f32 activations the node reads per sample.
    #[serde(skip)]
    pub input_bytes: u64,
    #[serde(skip)]
    pub tensors: Vec<TensorSpec>,
}

/// A checked graph: nodes in order, every tensor's shape, every weight's spec.
#[derive(Debug, Clone)]
pub struct Graph {
    pub input: String,
    pub output: String,
    pub nodes: Vec<Node>,
    /// Every activation tensor's shape with a batch of 1 (dimension 0).
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// Weights by name, with their shapes.
    pub weights: BTreeMap<String, Vec<usize>>,
    /// Per node, in order.
    pub infos: Vec<LayerInfo>,
}

fn checked_product(dims: &[usize]) -> Result<usize, String> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("the dimensions {dims:?} overflow"))
}

/// Elements of a shape; shapes were checked when the graph was built.
pub fn numel(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// An axis of a rank-`rank` tensor, negative counting from the end.
pub fn axis_of(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(format!("axis {axis} is out of range for rank {rank}"))
    }
}

/// The output size of a window along one axis (ONNX pooling and convolution, with `ceil_mode`):
/// with ceil mode, a last window that would start in the end padding is dropped.
pub fn window_out(
    size: usize,
    pad_begin: usize,
    pad_end: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    ceil: bool,
) -> Option<usize> {
    let effective = dilation
        .checked_mul(kernel.checked_sub(1)?)?
        .checked_add(1)?;
    let padded = size.checked_add(pad_begin)?.checked_add(pad_end)?;
    if padded < effective || stride == 0 {
        return None;
    }
    let span = padded - effective;
    let mut out = if ceil {
        span.div_ceil(stride) + 1
    } else {
        span / stride + 1
    };
    if ceil && (out - 1) * stride >= size + pad_begin {
        out -= 1;
    }
    Some(out)
}

/// NumPy broadcasting of two shapes.
pub fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        };
    }
    Ok(out)
}

impl Graph {
    /// Checks and types a graph: `input` has per-sample shape `input_shape`; `weights` are the
    /// model's weight tensors with their shapes.
    pub fn build(
        input: &str,
        input_shape: &[usize],
        output: Option<&str>,
        raw: &[RawNode],
        weights: &BTreeMap<String, Vec<usize>>,
        kinds: Option<&[(String, Option<String>)]>,
    ) -> Result<Graph, String> {
        if input_shape.is_empty() || input_shape.contains(&0) {
            return Err(format!(
                "input_shape {input_shape:?} must be non-empty and positive"
            ));
        }
        let mut full = vec![1];
        full.extend_from_slice(input_shape);
        checked_product(&full)?;
        if weights.contains_key(input) {
            return Err(format!("the input `{input}` is also the name of a weight"));
        }
        for (name, shape) in weights {
            checked_product(shape).map_err(|e| format!("weight `{name}`: {e}"))?;
        }
        let mut shapes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        shapes.insert(input.to_string(), full);
        let mut nodes = Vec::new();
        let mut infos = Vec::new();
        let mut names = BTreeSet::new();
        for (index, rn) in raw.iter().enumerate() {
            let at = |msg: String| format!("node {index} `{}` ({}): {msg}", rn.name, rn.op);
            if rn.name.is_empty() {
                return Err(format!("node {index} ({}) has no name", rn.op));
            }
            if !names.insert(rn.name.clone()) {
                return Err(at("another node has the same name".into()));
            }
            let op = Op::parse(&rn.op, &rn.attrs).map_err(at)?;
            let (least, most) = op.arity();
            if rn.inputs.len() < least || rn.inputs.len() > most {
                return Err(at(format!(
                    "takes {} input(s), not {}",
                    if least == most {
                        least.to_string()
                    } else if most == usize::MAX {
                        format!("at least {least}")
                    } else {
                        format!("{least} to {most}")
                    },
                    rn.inputs.len()
                )));
            }
            if rn.outputs.len() != 1 {
                return Err(at(format!(
                    "writes exactly one output, not {}",
                    rn.outputs.len()
                )));
            }
            let out_name = &rn.outputs[0];
            if shapes.contains_key(out_name) || weights.contains_key(out_name) {
                return Err(at(format!(
                    "output `{out_name}` is already the graph input, a weight or an earlier node's output"
                )));
            }
            // Every input: an earlier tensor or a weight.
            let mut in_shapes: Vec<(Vec<usize>, bool)> = Vec::new();
            for name in &rn.inputs {
                match (shapes.get(name), weights.get(name)) {
                    (Some(s), _) => in_shapes.push((s.clone(), false)),
                    (None, Some(w)) => in_shapes.push((w.clone(), true)),
                    (None, None) => {
                        return Err(at(format!(
                            "input `{name}` is neither the graph input, a weight, nor the output of an earlier node (nodes must be in topological order)"
                        )));
                    }
                }
            }
            let (out_shape, tensors, macs) = infer(&op, &rn.inputs, &in_shapes).map_err(at)?;
            if out_shape.first() != Some(&1) {
                return Err(at(format!(
                    "its output {out_shape:?} does not keep the batch as dimension 0"
                )));
            }
            checked_product(&out_shape).map_err(at)?;
            let params = tensors
                .iter()
                .filter(|t| {
                    // Running statistics are buffers, not parameters.
                    !(matches!(op, Op::BatchNormalization { .. })
                        && (t.name == rn.inputs[3] || t.name == rn.inputs[4]))
                })
                .map(|t| numel(&t.shape) as u64)
                .sum();
            let (kind, label) = match kinds.and_then(|k| k.get(index)) {
                Some((kind, label)) => (kind.clone(), label.clone()),
                None => (op.name().to_string(), Some(rn.name.clone())),
            };
            let data_input = rn
                .inputs
                .iter()
                .zip(&in_shapes)
                .find(|(_, (_, w))| !w)
                .map(|(_, (s, _))| s[1..].to_vec())
                .unwrap_or_default();
            let input_bytes = in_shapes
                .iter()
                .filter(|(_, w)| !w)
                .map(|(s, _)| 4 * numel(s) as u64)
                .sum();
            infos.push(LayerInfo {
                index,
                input_bytes,
                kind: kind.clone(),
                name: label.clone(),
                input_shape: data_input,
                output_shape: out_shape[1..].to_vec(),
                params,
                macs,
                activation_bytes: 4 * numel(&out_shape) as u64,
                tensors,
            });
            shapes.insert(out_name.clone(), out_shape);
            nodes.push(Node {
                name: rn.name.clone(),
                op,
                inputs: rn.inputs.clone(),
                outputs: rn.outputs.clone(),
                kind,
                label,
            });
        }
        let output = match output {
            Some(o) => o.to_string(),
            None => nodes
                .last()
                .map(|n| n.outputs[0].clone())
                .unwrap_or_else(|| input.to_string()),
        };
        if !shapes.contains_key(&output) {
            return Err(format!(
                "the output `{output}` is not a tensor of the graph"
            ));
        }
        let used: BTreeSet<&str> = nodes
            .iter()
            .flat_map(|n| n.inputs.iter().map(String::as_str))
            .collect();
        if let Some(unused) = weights.keys().find(|w| !used.contains(w.as_str())) {
            return Err(format!("weight `{unused}` is not read by any node"));
        }
        Ok(Graph {
            input: input.to_string(),
            output,
            nodes,
            shapes,
            weights: weights.clone(),
            infos,
        })
    }

    /// Per-sample shape of the output.
    pub fn output_shape(&self) -> &[usize] {
        &self.shapes[&self.output][1..]
    }

    /// Every weight with its spec, in node order (each once).
    pub fn tensor_specs(&self) -> Vec<TensorSpec> {
        let mut seen = BTreeSet::new();
        self.infos
            .iter()
            .flat_map(|i| i.tensors.iter().cloned())
            .filter(|t| seen.insert(t.name.clone()))
            .collect()
    }

    /// The peak of the f32 activations live at once, per sample, in node order: a tensor lives
    /// from the node that writes it to the last node that reads it (the graph input from the
    /// start, the output to the end); a view (Reshape, Flatten, ...) shares its input's memory.
    pub fn peak_activation_bytes(&self) -> u64 {
        // Which buffer each tensor is: a view is its input's buffer.
        let mut buffer: BTreeMap<&str, &str> = BTreeMap::new();
        buffer.insert(&self.input, &self.input);
        for node in &self.nodes {
            let out = node.outputs[0].as_str();
            let own = if node.op.is_view() {
                buffer.get(node.inputs[0].as_str()).copied().unwrap_or(out)
            } else {
                out
            };
            buffer.insert(out, own);
        }
        let n = self.nodes.len();
        let mut first: BTreeMap<&str, usize> = BTreeMap::new();
        let mut last: BTreeMap<&str, usize> = BTreeMap::new();
        first.insert(&self.input, 0);
        last.insert(&self.input, 0);
        for (i, node) in self.nodes.iter().enumerate() {
            for t in node.inputs.iter().chain(&node.outputs) {
                let Some(&b) = buffer.get(t.as_str()) else {
                    continue; // a weight
                };
                first.entry(b).or_insert(i);
                last.insert(b, i);
            }
        }
        if let Some(&b) = buffer.get(self.output.as_str()) {
            last.insert(b, n.saturating_sub(1));
        }
        let bytes = |b: &str| 4 * numel(&self.shapes[b]) as u64;
        (0..n.max(1))
            .map(|i| {
                first
                    .iter()
                    .filter(|(b, f)| **f <= i && last[**b] >= i)
                    .map(|(b, _)| bytes(b))
                    .sum::<u64>()
            })
            .max()
            .unwrap_or(0)
    }
}

/// The output shape of one node given its inputs' shapes (`true`: a weight), for the importer.
pub fn output_shape(op: &Op, inputs: &[(Vec<usize>, bool)]) -> Result<Vec<usize>, String> {
    let names: Vec<String> = (0..inputs.len()).map(|i| format!("input {i}")).collect();
    infer(op, &names, inputs).map(|(s, _, _)| s)
}

/// The output shape, the weights read (with specs) and the MACs per sample of one node.
fn infer(
    op: &Op,
    names: &[String],
    inputs: &[(Vec<usize>, bool)],
) -> Result<(Vec<usize>, Vec<TensorSpec>, u64), String> {
    let shape = |i: usize| inputs[i].0.as_slice();
    let is_weight = |i: usize| inputs[i].1;
    let spec = |i: usize, matmul: bool, groups: usize| TensorSpec {
        name: names[i].clone(),
        shape: inputs[i].0.clone(),
        matmul,
        groups,
    };
    let weights_of = |skip: &[usize]| -> Vec<TensorSpec> {
        (0..inputs.len())
            .filter(|i| is_weight(*i) && !skip.contains(i))
            .map(|i| spec(i, false, 1))
            .collect()
    };
    let x = shape(0);
    if is_weight(0) && !matches!(op, Op::Add | Op::Mul | Op::Concat { .. }) {
        return Err(format!(
            "its first input `{}` is a weight; it must be an activation",
            names[0]
        ));
    }
    let macs_of = |v: usize| v as u64;
    Ok(match op {
        Op::Conv(c) => {
            let [n, cin, h, w] = x[..] else {
                return Err(format!("expects an [N, C, H, W] input, got {x:?}"));
            };
            if !is_weight(1) {
                return Err(format!("its weight `{}` must be a weight tensor", names[1]));
            }
            let ws = shape(1);
            let [cout, cpg, kh, kw] = ws[..] else {
                return Err(format!(
                    "its weight has shape {ws:?}, not [out, in/group, kh, kw]"
                ));
            };
            if c.group == 0 || cin % c.group != 0 || cout % c.group != 0 {
                return Err(format!(
                    "group {} does not divide its {cin} input and {cout} output channels",
                    c.group
                ));
            }
            if cpg != cin / c.group {
                return Err(format!(
                    "its weight {ws:?} expects {} input channels per group, the input has {}",
                    cpg,
                    cin / c.group
                ));
            }
            if [kh, kw] != c.kernel_shape {
                return Err(format!(
                    "kernel_shape {:?} differs from its weight's {:?}",
                    c.kernel_shape,
                    [kh, kw]
                ));
            }
            if c.strides.contains(&0) || c.dilations.contains(&0) || kh == 0 || kw == 0 {
                return Err("strides, dilations and the kernel must be at least 1".into());
            }
            let oh = window_out(
                h,
                c.pads[0],
                c.pads[2],
                kh,
                c.strides[0],
                c.dilations[0],
                false,
            );
            let ow = window_out(
                w,
                c.pads[1],
                c.pads[3],
                kw,
                c.strides[1],
                c.dilations[1],
                false,
            );
            let (Some(oh), Some(ow)) = (oh, ow) else {
                return Err(format!(
                    "its {kh}×{kw} kernel does not fit the {h}×{w} input"
                ));
            };
            let mut tensors = vec![spec(1, true, c.group)];
            if names.len() > 2 {
                if !is_weight(2) || shape(2) != [cout] {
                    return Err(format!("its bias must be a weight of shape [{cout}]"));
                }
                tensors.push(spec(2, false, 1));
            }
            let macs = macs_of(oh * ow * cout * cpg * kh * kw);
            (vec![n, cout, oh, ow], tensors, macs)
        }
        Op::Gemm(g) => {
            let [m, k] = x[..] else {
                return Err(format!("expects a 2-D input, got {x:?}"));
            };
            if g.trans_a {
                return Err("transA is not supported: A is the batch of samples".into());
            }
            let ws = shape(1);
            let [r, c] = ws[..] else {
                return Err(format!("its B has shape {ws:?}, not 2-D"));
            };
            let (kb, out) = if g.trans_b { (c, r) } else { (r, c) };
            if kb != k {
                return Err(format!("A {x:?} and B {ws:?} do not multiply"));
            }
            // B is the matmul weight (SPEC.md, "Graph models"); two activations are a MatMul.
            if !is_weight(1) {
                return Err(format!(
                    "its B `{}` must be a weight (a product of two activations is a MatMul)",
                    names[1]
                ));
            }
            if !g.trans_b {
                return Err(
                    "a weight B must be stored transposed (transB: 1, rows of K values)".into(),
                );
            }
            let mut tensors = vec![spec(1, true, 1)];
            if names.len() > 2 {
                broadcast(&[m, out], shape(2))
                    .ok()
                    .filter(|s| s == &[m, out])
                    .ok_or_else(|| {
                        format!("its C {:?} does not broadcast to [{m}, {out}]", shape(2))
                    })?;
                if is_weight(2) {
                    tensors.push(spec(2, false, 1));
                }
            }
            (vec![m, out], tensors, macs_of(k * out))
        }
        Op::MatMul => {
            let b = shape(1);
            if x.len() < 2 || b.len() != 2 {
                return Err(format!(
                    "multiplies an input of rank ≥ 2 by a 2-D B, not {x:?} by {b:?}"
                ));
            }
            let k = x[x.len() - 1];
            if b[0] != k {
                return Err(format!("{x:?} and {b:?} do not multiply"));
            }
            if is_weight(1) {
                return Err(
                    "a weight B of MatMul must be stored as a Gemm with transB: 1 (the importer does this)"
                        .into(),
                );
            }
            let mut out = x.to_vec();
            *out.last_mut().expect("rank ≥ 2") = b[1];
            let rows: usize = x[1..x.len() - 1].iter().product();
            (out, Vec::new(), macs_of(rows * k * b[1]))
        }
        Op::Add | Op::Mul => {
            let out = broadcast(x, shape(1))?;
            let base = if is_weight(0) { shape(1) } else { x };
            if out.len() != base.len() || out[0] != 1 {
                return Err(format!(
                    "broadcasting {x:?} with {:?} gives {out:?}, which changes the batch",
                    shape(1)
                ));
            }
            if is_weight(0) && is_weight(1) {
                return Err("both operands are weights: a constant (fold it)".into());
            }
            (out, weights_of(&[]), 0)
        }
        Op::Concat { axis } => {
            let a = axis_of(*axis, x.len())?;
            if a == 0 {
                return Err("concatenates along the batch".into());
            }
            let mut out = x.to_vec();
            for (i, (s, _)) in inputs.iter().enumerate().skip(1) {
                if s.len() != x.len()
                    || s.iter()
                        .zip(x)
                        .enumerate()
                        .any(|(d, (p, q))| d != a && p != q)
                {
                    return Err(format!(
                        "input {i} {s:?} does not match {x:?} except along axis {a}"
                    ));
                }
                out[a] += s[a];
            }
            (out, weights_of(&[]), 0)
        }
        Op::Relu
        | Op::Clip { .. }
        | Op::LeakyRelu { .. }
        | Op::HardSwish
        | Op::HardSigmoid { .. }
        | Op::Sigmoid
        | Op::Tanh
        | Op::Gelu { .. }
        | Op::Silu
        | Op::Erf
        | Op::Identity => (x.to_vec(), Vec::new(), 0),
        Op::BatchNormalization { .. } => {
            if x.len() < 2 {
                return Err(format!("expects [N, C, ...], got {x:?}"));
            }
            let c = x[1];
            for (i, name) in names.iter().enumerate().take(5).skip(1) {
                if !is_weight(i) || shape(i) != [c] {
                    return Err(format!(
                        "its input `{}` must be a weight of shape [{c}]",
                        name
                    ));
                }
            }
            (x.to_vec(), weights_of(&[]), 0)
        }
        Op::MaxPool(p) | Op::AveragePool(p) => {
            let [n, c, h, w] = x[..] else {
                return Err(format!("expects an [N, C, H, W] input, got {x:?}"));
            };
            if p.strides.contains(&0) || p.dilations.contains(&0) || p.kernel_shape.contains(&0) {
                return Err("strides, dilations and the kernel must be at least 1".into());
            }
            if matches!(op, Op::AveragePool(_)) && p.dilations != [1, 1] {
                return Err("AveragePool has no dilations".into());
            }
            let [kh, kw] = p.kernel_shape;
            let oh = window_out(
                h,
                p.pads[0],
                p.pads[2],
                kh,
                p.strides[0],
                p.dilations[0],
                p.ceil_mode,
            );
            let ow = window_out(
                w,
                p.pads[1],
                p.pads[3],
                kw,
                p.strides[1],
                p.dilations[1],
                p.ceil_mode,
            );
            let (Some(oh), Some(ow)) = (oh, ow) else {
                return Err(format!(
                    "its {kh}×{kw} window does not fit the {h}×{w} input"
                ));
            };
            if p.pads[0] >= kh || p.pads[2] >= kh || p.pads[1] >= kw || p.pads[3] >= kw {
                return Err("a pad must be smaller than the window".into());
            }
            (vec![n, c, oh, ow], Vec::new(), 0)
        }
        Op::GlobalAveragePool => {
            if x.len() < 3 {
                return Err(format!("expects [N, C, spatial...], got {x:?}"));
            }
            let mut out = x[..2].to_vec();
            out.extend(std::iter::repeat_n(1, x.len() - 2));
            (out, Vec::new(), 0)
        }
        Op::Flatten { axis } => {
            let a = if *axis == x.len() as i64 {
                x.len()
            } else {
                axis_of(*axis, x.len())?
            };
            if a == 0 {
                return Err("flattens the batch into the features (axis 0)".into());
            }
            (
                vec![x[..a].iter().product(), x[a..].iter().product()],
                Vec::new(),
                0,
            )
        }
        Op::Reshape { shape: target } => (reshape(x, target)?, Vec::new(), 0),
        Op::Transpose { perm } => {
            let mut sorted = perm.clone();
            sorted.sort_unstable();
            if sorted != (0..x.len()).collect::<Vec<_>>() {
                return Err(format!(
                    "perm {perm:?} is not a permutation of {} axes",
                    x.len()
                ));
            }
            if perm[0] != 0 {
                return Err("moves the batch (perm[0] must be 0)".into());
            }
            (perm.iter().map(|&p| x[p]).collect(), Vec::new(), 0)
        }
        Op::Squeeze { axes } => {
            let axes: Vec<usize> = axes
                .iter()
                .map(|&a| axis_of(a, x.len()))
                .collect::<Result<_, _>>()?;
            if axes.contains(&0) {
                return Err("squeezes the batch".into());
            }
            if let Some(&a) = axes.iter().find(|&&a| x[a] != 1) {
                return Err(format!("axis {a} of {x:?} is not 1"));
            }
            (
                x.iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, d)| *d)
                    .collect(),
                Vec::new(),
                0,
            )
        }
        Op::Unsqueeze { axes } => {
            let rank = x.len() + axes.len();
            let mut axes: Vec<usize> = axes
                .iter()
                .map(|&a| axis_of(a, rank))
                .collect::<Result<_, _>>()?;
            axes.sort_unstable();
            axes.dedup();
            if axes.len() + x.len() != rank || axes.contains(&0) {
                return Err("axes repeat or insert before the batch".into());
            }
            let mut rest = x.iter();
            (
                (0..rank)
                    .map(|i| {
                        if axes.contains(&i) {
                            1
                        } else {
                            *rest.next().expect("counted")
                        }
                    })
                    .collect(),
                Vec::new(),
                0,
            )
        }
        Op::Softmax { axis } => {
            if axis_of(*axis, x.len())? == 0 {
                return Err("normalizes across the batch (axis 0)".into());
            }
            (x.to_vec(), Vec::new(), 0)
        }
        Op::LayerNormalization { axis, .. } => {
            let a = axis_of(*axis, x.len())?;
            if a == 0 {
                return Err("normalizes across the batch (axis 0)".into());
            }
            let normalized = &x[a..];
            for (i, name) in names.iter().enumerate().take(inputs.len()).skip(1) {
                if !is_weight(i)
                    || broadcast(normalized, shape(i)).ok().as_deref() != Some(normalized)
                {
                    return Err(format!(
                        "its `{}` must be a weight that broadcasts to {normalized:?}",
                        name
                    ));
                }
            }
            (x.to_vec(), weights_of(&[]), 0)
        }
        Op::Pad { pads, mode, .. } => {
            if *mode != PadMode::Constant {
                for (i, &d) in x.iter().enumerate() {
                    let (b, e) = (
                        pads[i.min(pads.len() - 1)],
                        pads[(i + x.len()).min(pads.len() - 1)],
                    );
                    let limit = if *mode == PadMode::Reflect {
                        d as i64 - 1
                    } else {
                        d as i64
                    };
                    if (*mode != PadMode::Edge) && (b > limit || e > limit) {
                        return Err(format!(
                            "{mode:?} padding of {b}/{e} on an axis of size {d}"
                        ));
                    }
                }
            }
            if pads.len() != 2 * x.len() {
                return Err(format!(
                    "has {} pads for a rank-{} input (begins of every axis, then ends)",
                    pads.len(),
                    x.len()
                ));
            }
            if pads[0] != 0 || pads[x.len()] != 0 {
                return Err("pads the batch".into());
            }
            let mut out = Vec::new();
            for (i, &d) in x.iter().enumerate() {
                let v = d as i64 + pads[i] + pads[i + x.len()];
                if v < 1 {
                    return Err(format!("axis {i} would have size {v}"));
                }
                out.push(v as usize);
            }
            (out, Vec::new(), 0)
        }
    })
}

/// A Reshape's output shape: `0` copies the input's dimension, one `-1` is inferred.
pub fn reshape(x: &[usize], target: &[i64]) -> Result<Vec<usize>, String> {
    let total = numel(x);
    let mut out = Vec::new();
    let mut infer_at = None;
    for (i, &t) in target.iter().enumerate() {
        match t {
            0 => out.push(*x.get(i).ok_or_else(|| {
                format!("shape {target:?}: a 0 at axis {i} copies an axis the input lacks")
            })?),
            -1 if infer_at.is_none() => {
                infer_at = Some(i);
                out.push(1);
            }
            t if t > 0 => out.push(t as usize),
            _ => return Err(format!("shape {target:?} is not valid")),
        }
    }
    let known = checked_product(&out)?;
    if let Some(i) = infer_at {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {x:?} to {target:?}"));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(format!(
            "cannot reshape {x:?} ({total} values) to {target:?}"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, name: &str, inputs: &[&str], out: &str, attrs: serde_json::Value) -> RawNode {
        RawNode {
            op: op.into(),
            name: name.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![out.into()],
            attrs: attrs
                .as_object()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn window_sizes_follow_onnx() {
        // floor: (5 + 0 - 3) / 2 + 1 = 2; ceil: ceil(2/2) + 1 = 2.
        assert_eq!(window_out(5, 0, 0, 3, 2, 1, false), Some(2));
        // ceil mode: (6 - 3) / 2 = 1.5 → 2 + 1 = 3 windows; the last starts at 4 < 6.
        assert_eq!(window_out(6, 0, 0, 3, 2, 1, true), Some(3));
        // A last window that would start in the end padding is dropped.
        assert_eq!(window_out(4, 0, 1, 2, 2, 1, true), Some(2));
        // dilation 2: effective kernel 5.
        assert_eq!(window_out(7, 0, 0, 3, 1, 2, false), Some(3));
        assert_eq!(window_out(2, 0, 0, 3, 1, 1, false), None);
    }

    #[test]
    fn depthwise_and_grouped_costs() {
        let mut weights = BTreeMap::new();
        weights.insert("dw.weight".to_string(), vec![8, 1, 3, 3]);
        weights.insert("g.weight".to_string(), vec![8, 4, 1, 1]);
        let raw = vec![
            node(
                "Conv",
                "dw",
                &["x", "dw.weight"],
                "a",
                serde_json::json!({"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "group": 8}),
            ),
            node(
                "Conv",
                "g",
                &["a", "g.weight"],
                "b",
                serde_json::json!({"kernel_shape": [1, 1], "group": 2}),
            ),
        ];
        let g = Graph::build("x", &[8, 5, 5], None, &raw, &weights, None).unwrap();
        assert_eq!(g.infos[0].macs, 25 * 8 * 9);
        assert_eq!(g.infos[0].params, 72);
        assert_eq!(g.infos[1].macs, 25 * 8 * 4);
        assert_eq!(g.output_shape(), &[8, 5, 5]);
        assert_eq!(g.tensor_specs()[0].groups, 8);
    }

    #[test]
    fn liveness_counts_tensors_live_at_once() {
        // x → a → b, and a skip x + b: x stays live until the add.
        let mut weights = BTreeMap::new();
        weights.insert("w1".to_string(), vec![4, 4, 1, 1]);
        weights.insert("w2".to_string(), vec![4, 4, 1, 1]);
        let conv = serde_json::json!({"kernel_shape": [1, 1]});
        let raw = vec![
            node("Conv", "c1", &["x", "w1"], "a", conv.clone()),
            node("Conv", "c2", &["a", "w2"], "b", conv),
            node("Add", "add", &["x", "b"], "y", serde_json::json!({})),
            node("Flatten", "f", &["y"], "z", serde_json::json!({})),
        ];
        let g = Graph::build("x", &[4, 2, 2], None, &raw, &weights, None).unwrap();
        // 16 floats per tensor: at c2, x, a and b are live; at the add, x, b and y.
        assert_eq!(g.peak_activation_bytes(), 3 * 16 * 4);
    }

    #[test]
    fn order_batch_and_references_are_checked() {
        let weights = BTreeMap::new();
        let later = vec![
            node("Relu", "r1", &["b"], "a", serde_json::json!({})),
            node("Relu", "r2", &["x"], "b", serde_json::json!({})),
        ];
        let err = Graph::build("x", &[3], None, &later, &weights, None).unwrap_err();
        assert!(err.contains("topological order"), "{err}");
        let bad = vec![node(
            "Transpose",
            "t",
            &["x"],
            "y",
            serde_json::json!({"perm": [1, 0]}),
        )];
        let err = Graph::build("x", &[3], None, &bad, &weights, None).unwrap_err();
        assert!(err.contains("batch"), "{err}");
        let unknown = vec![node("Einsum", "e", &["x"], "y", serde_json::json!({}))];
        let err = Graph::build("x", &[3], None, &unknown, &weights, None).unwrap_err();
        assert!(
            err.contains("unknown op `Einsum`") && err.contains("Conv"),
            "{err}"
        );
        let attr = vec![node(
            "Relu",
            "r",
            &["x"],
            "y",
            serde_json::json!({"alpha": 1}),
        )];
        assert!(Graph::build("x", &[3], None, &attr, &weights, None).is_err());
    }

    #[test]
    fn reshape_zero_and_minus_one() {
        assert_eq!(reshape(&[1, 2, 3, 4], &[0, -1]).unwrap(), vec![1, 24]);
        assert_eq!(reshape(&[1, 2, 3, 4], &[0, 6, -1]).unwrap(), vec![1, 6, 4]);
        assert_eq!(reshape(&[1, 2, 3, 4], &[1, 0, 12]).unwrap(), vec![1, 2, 12]);
        assert!(reshape(&[1, 5], &[1, 3]).is_err());
        assert!(reshape(&[1, 5], &[-1, -1]).is_err());
    }

    #[test]
    fn broadcasting() {
        assert_eq!(
            broadcast(&[1, 8, 4, 4], &[1, 8, 1, 1]).unwrap(),
            vec![1, 8, 4, 4]
        );
        assert_eq!(broadcast(&[1, 8, 4, 4], &[]).unwrap(), vec![1, 8, 4, 4]);
        assert!(broadcast(&[1, 8], &[3]).is_err());
    }
}

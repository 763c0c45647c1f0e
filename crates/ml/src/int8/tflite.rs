//! The int8 model as a `.tflite` file (SPEC.md, "`int8`"): TFLite's flatbuffer schema
//! (version 3), one subgraph, every kernel call one builtin operator, at the integers of the
//! int8 model. LiteRT, TFLite Micro and the vendors' converters read it; it is also the
//! independent check of edgebuild's int8 arithmetic, which is TFLite's.
//!
//! The model keeps each output channel's fixed-point multiplier, not the float weight scale
//! TFLite stores; the export writes `s_w = M · 2^(S−31) · s_out / s_in`, from which TFLite
//! recomputes the multiplier (to within its float32 precision). Explicit padding that is not
//! TFLite's `SAME` becomes a `PAD` operator before a `VALID` convolution.

use std::collections::BTreeMap;

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use super::conv::ConvParams;
use super::quant::{Activation, activation_range};
use super::{Blob, Int8Model, Kernel, QTensor};

// TFLite schema constants (tensorflow/compiler/mlir/lite/schema/schema.fbs).
const INT8: i8 = 9;
const INT32: i8 = 2;
const SAME: i8 = 0;
const VALID: i8 = 1;

/// A builtin operator: (code, version, options type).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Builtin {
    code: i32,
    version: i32,
    options: u8,
}
const ADD: Builtin = Builtin {
    code: 0,
    version: 2,
    options: 11,
};
const AVERAGE_POOL_2D: Builtin = Builtin {
    code: 1,
    version: 2,
    options: 5,
};
const CONCATENATION: Builtin = Builtin {
    code: 2,
    version: 2,
    options: 10,
};
const CONV_2D: Builtin = Builtin {
    code: 3,
    version: 3,
    options: 1,
};
const DEPTHWISE_CONV_2D: Builtin = Builtin {
    code: 4,
    version: 3,
    options: 2,
};
const FULLY_CONNECTED: Builtin = Builtin {
    code: 9,
    version: 4,
    options: 8,
};
const MAX_POOL_2D: Builtin = Builtin {
    code: 17,
    version: 2,
    options: 5,
};
const MUL: Builtin = Builtin {
    code: 18,
    version: 2,
    options: 21,
};
const RESHAPE: Builtin = Builtin {
    code: 22,
    version: 1,
    options: 17,
};
const SOFTMAX: Builtin = Builtin {
    code: 25,
    version: 2,
    options: 9,
};
const PAD: Builtin = Builtin {
    code: 34,
    version: 2,
    options: 22,
};
const TRANSPOSE: Builtin = Builtin {
    code: 39,
    version: 2,
    options: 26,
};

/// Quantization of a tensor: per tensor (one scale) or per channel along `dim`.
struct Quant {
    scales: Vec<f32>,
    zero_points: Vec<i64>,
    dim: i32,
}

struct Tensor {
    name: String,
    shape: Vec<i32>,
    kind: i8,
    /// Index into the buffers (0: no data, an activation).
    buffer: u32,
    quant: Option<Quant>,
}

/// One operator's options table, as (field slot, value) scalars.
enum Options {
    /// An empty table.
    None,
    Scalars(Vec<(u16, i32)>),
    /// SoftmaxOptions: beta.
    Beta(f32),
}

struct Operator {
    op: Builtin,
    inputs: Vec<i32>,
    outputs: Vec<i32>,
    options: Options,
}

/// The model being built, before serialization.
#[derive(Default)]
struct Graph {
    tensors: Vec<Tensor>,
    buffers: Vec<Vec<u8>>,
    operators: Vec<Operator>,
    /// The tensor of each int8-model tensor, once made.
    of_model: BTreeMap<usize, i32>,
}

fn shape_i32(shape: &[usize]) -> Result<Vec<i32>, String> {
    shape
        .iter()
        .map(|&d| i32::try_from(d).map_err(|_| format!("dimension {d} is too large for TFLite")))
        .collect()
}

fn per_tensor(scale: f64, zp: i32) -> Option<Quant> {
    Some(Quant {
        scales: vec![scale as f32],
        zero_points: vec![i64::from(zp)],
        dim: 0,
    })
}

impl Graph {
    fn tensor(&mut self, t: Tensor) -> i32 {
        self.tensors.push(t);
        (self.tensors.len() - 1) as i32
    }

    fn constant(
        &mut self,
        name: String,
        shape: Vec<i32>,
        kind: i8,
        data: Vec<u8>,
        quant: Option<Quant>,
    ) -> i32 {
        self.buffers.push(data);
        let buffer = self.buffers.len() as u32; // buffer 0 is the empty one
        self.tensor(Tensor {
            name,
            shape,
            kind,
            buffer,
            quant,
        })
    }

    fn int32s(&mut self, name: String, values: &[i32]) -> i32 {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(name, vec![values.len() as i32], INT32, data, None)
    }

    /// The TFLite tensor of int8-model tensor `t`.
    fn activation(&mut self, model: &Int8Model, t: usize) -> Result<i32, String> {
        if let Some(&i) = self.of_model.get(&t) {
            return Ok(i);
        }
        let q: &QTensor = model
            .tensors
            .get(t)
            .ok_or_else(|| format!("tensor {t} is missing"))?;
        let i = self.tensor(Tensor {
            name: q.name.clone(),
            shape: shape_i32(&q.shape)?,
            kind: INT8,
            buffer: 0,
            quant: per_tensor(q.scale, q.zero_point),
        });
        self.of_model.insert(t, i);
        Ok(i)
    }

    /// An int8 activation that the int8 model does not have (a padded input).
    fn extra(&mut self, name: String, shape: Vec<i32>, like: &QTensor) -> i32 {
        self.tensor(Tensor {
            name,
            shape,
            kind: INT8,
            buffer: 0,
            quant: per_tensor(like.scale, like.zero_point),
        })
    }

    fn op(&mut self, op: Builtin, inputs: Vec<i32>, outputs: Vec<i32>, options: Options) {
        self.operators.push(Operator {
            op,
            inputs,
            outputs,
            options,
        });
    }
}

fn blob<'a>(model: &'a Int8Model, name: &str) -> Result<&'a Blob, String> {
    model
        .blobs
        .get(name)
        .ok_or_else(|| format!("constant `{name}` is missing"))
}

fn i32s<'a>(model: &'a Int8Model, name: &str) -> Result<&'a [i32], String> {
    match blob(model, name)? {
        Blob::I32(v) => Ok(v),
        _ => Err(format!("constant `{name}` is not int32")),
    }
}

fn i8s<'a>(model: &'a Int8Model, name: &str) -> Result<&'a [i8], String> {
    match blob(model, name)? {
        Blob::I8(v) => Ok(v),
        _ => Err(format!("constant `{name}` is not int8")),
    }
}

/// TFLite's fused activation whose clamp (for the output's scale and zero point) is
/// `(lo, hi)`.
fn fused_activation(node: &str, lo: i32, hi: i32, out: &QTensor) -> Result<i32, String> {
    let candidates = [
        (0, Activation::None),
        (1, Activation::Relu),
        (3, Activation::Clip(0.0, 6.0)),
        (2, Activation::Clip(-1.0, 1.0)),
    ];
    candidates
        .iter()
        .find(|(_, a)| activation_range(*a, out.scale, out.zero_point) == (lo, hi))
        .map(|&(code, _)| code)
        .ok_or_else(|| {
            format!(
                "node `{node}`: its clamp [{lo}, {hi}] is no fused activation of TFLite (none, ReLU, ReLU6, ReLU-1..1)"
            )
        })
}

/// Whether one spatial dim's explicit pads are TFLite's `padding` (`SAME` or `VALID`).
fn pads_are(
    padding: i8,
    input: i32,
    k: i32,
    stride: i32,
    dil: i32,
    pads: (i32, i32),
    out: i32,
) -> bool {
    if padding == VALID {
        return pads == (0, 0);
    }
    let eff = (k - 1) * dil + 1;
    let same_out = (input + stride - 1) / stride;
    let total = ((same_out - 1) * stride + eff - input).max(0);
    out == same_out && pads == (total / 2, total - total / 2)
}

/// The input of a conv or pool (padded by a `PAD` operator if its padding is not TFLite's),
/// and its padding kind.
fn spatial_input(
    g: &mut Graph,
    model: &Int8Model,
    node: &str,
    input: usize,
    p: &ConvParams,
    pad_with_zero_point: bool,
) -> Result<(i32, i8), String> {
    let x = g.activation(model, input)?;
    for padding in [VALID, SAME] {
        if pads_are(
            padding,
            p.in_h,
            p.k_h,
            p.stride_h,
            p.dil_h,
            (p.pad_top, p.pad_bottom),
            p.out_h,
        ) && pads_are(
            padding,
            p.in_w,
            p.k_w,
            p.stride_w,
            p.dil_w,
            (p.pad_left, p.pad_right),
            p.out_w,
        ) {
            return Ok((x, padding));
        }
    }
    if !pad_with_zero_point {
        return Err(format!(
            "node `{node}`: its padding is not TFLite's SAME or VALID, and a pool cannot be padded with zeros"
        ));
    }
    let q = &model.tensors[input];
    let shape = vec![
        1,
        p.in_h + p.pad_top + p.pad_bottom,
        p.in_w + p.pad_left + p.pad_right,
        p.in_c,
    ];
    let padded = g.extra(format!("{}.padded", q.name), shape, q);
    let pads = g.int32s(
        format!("{node}.paddings"),
        &[0, 0, p.pad_top, p.pad_bottom, p.pad_left, p.pad_right, 0, 0],
    );
    g.op(PAD, vec![x, pads], vec![padded], Options::None);
    Ok((padded, VALID))
}

/// Per-channel weight scales from the multipliers: `s_w = M · 2^(S−31) · s_out / s_in`.
fn weight_scales(mult: &[i32], shift: &[i32], n: usize, s_in: f64, s_out: f64) -> Vec<f32> {
    (0..n)
        .map(|c| {
            let k = if mult.len() == 1 { 0 } else { c };
            let real = f64::from(mult[k]) * 2f64.powi(shift[k] - 31);
            let s = real * s_out / s_in;
            (if s > 0.0 && s.is_finite() { s } else { 1e-9 }) as f32
        })
        .collect()
}

/// Weights and bias of a conv, depthwise conv or fully connected node.
#[allow(clippy::too_many_arguments)]
fn mac_constants(
    g: &mut Graph,
    model: &Int8Model,
    node: &str,
    (weights, bias, mult, shift): (&str, Option<&String>, &str, &str),
    shape: Vec<i32>,
    channels: usize,
    dim: i32,
    (s_in, s_out): (f64, f64),
) -> Result<(i32, i32), String> {
    let w = i8s(model, weights)?;
    let (m, s) = (i32s(model, mult)?, i32s(model, shift)?);
    if m.is_empty() || m.len() != s.len() || (m.len() != 1 && m.len() != channels) {
        return Err(format!(
            "node `{node}`: multipliers do not match its channels"
        ));
    }
    let scales = weight_scales(m, s, channels, s_in, s_out);
    // A channel with M = 0 outputs the zero point whatever it sums; TFLite takes no weight
    // scale of 0 (the file says 1e-9), so its weights and bias go in as 0 for LiteRT to sum 0.
    let dead = |c: usize| m[if m.len() == 1 { 0 } else { c }] == 0;
    let inner: usize = shape[dim as usize + 1..]
        .iter()
        .map(|&d| d as usize)
        .product();
    let per_dim = shape[dim as usize] as usize;
    let w_bytes: Vec<u8> = w
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            if dead(i / inner % per_dim) {
                0
            } else {
                v as u8
            }
        })
        .collect();
    let w_t = g.constant(
        format!("{node}.weights"),
        shape,
        INT8,
        w_bytes,
        Some(Quant {
            scales: scales.clone(),
            zero_points: vec![0; channels],
            dim,
        }),
    );
    let b_t = match bias {
        Some(b) => {
            let values: Vec<i32> = i32s(model, b)?
                .iter()
                .enumerate()
                .map(|(c, &v)| if dead(c) { 0 } else { v })
                .collect();
            g.constant(
                format!("{node}.bias"),
                vec![values.len() as i32],
                INT32,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Some(Quant {
                    scales: scales
                        .iter()
                        .map(|&sw| (f64::from(sw) * s_in) as f32)
                        .collect(),
                    zero_points: vec![0; channels],
                    dim: 0,
                }),
            )
        }
        None => -1,
    };
    Ok((w_t, b_t))
}

/// The `.tflite` bytes of `model`. A kernel call TFLite has no operator for (a table
/// lookup, a binary op with a constant, a concat that requantizes) is an error naming the
/// node.
pub fn export(model: &Int8Model) -> Result<Vec<u8>, String> {
    let mut g = Graph::default();
    let input = g.activation(model, model.input)?;
    for node in &model.nodes {
        let name = node.name.as_str();
        let x = |k: usize| -> Result<usize, String> {
            node.inputs
                .get(k)
                .copied()
                .ok_or_else(|| format!("node `{name}` lacks input {k}"))
        };
        let out_q = model
            .tensors
            .get(node.output)
            .ok_or_else(|| format!("node `{name}`: its output is missing"))?;
        let scale_of = |k: usize| -> Result<f64, String> { Ok(model.tensors[x(k)?].scale) };
        match &node.kernel {
            Kernel::Conv {
                params: p,
                weights,
                bias,
                mult,
                shift,
            }
            | Kernel::Depthwise {
                params: p,
                weights,
                bias,
                mult,
                shift,
            } => {
                let depthwise = matches!(node.kernel, Kernel::Depthwise { .. });
                let (xin, padding) = spatial_input(&mut g, model, name, x(0)?, p, true)?;
                let (shape, dim) = if depthwise {
                    (vec![1, p.k_h, p.k_w, p.out_c], 3)
                } else {
                    (vec![p.out_c, p.k_h, p.k_w, p.in_c / p.groups.max(1)], 0)
                };
                let (w, b) = mac_constants(
                    &mut g,
                    model,
                    name,
                    (weights, bias.as_ref(), mult, shift),
                    shape,
                    p.out_c as usize,
                    dim,
                    (scale_of(0)?, out_q.scale),
                )?;
                let act = fused_activation(name, p.act_min, p.act_max, out_q)?;
                let y = g.activation(model, node.output)?;
                let pad = i32::from(padding);
                let options = if depthwise {
                    vec![
                        (4, pad),
                        (6, p.stride_w),
                        (8, p.stride_h),
                        (10, p.depth_mult),
                        (12, act),
                        (14, p.dil_w),
                        (16, p.dil_h),
                    ]
                } else {
                    vec![
                        (4, pad),
                        (6, p.stride_w),
                        (8, p.stride_h),
                        (10, act),
                        (12, p.dil_w),
                        (14, p.dil_h),
                    ]
                };
                let op = if depthwise {
                    DEPTHWISE_CONV_2D
                } else {
                    CONV_2D
                };
                g.op(op, vec![xin, w, b], vec![y], Options::Scalars(options));
            }
            Kernel::FullyConnected {
                params: p,
                weights,
                bias,
                mult,
                shift,
            } => {
                let xin = g.activation(model, x(0)?)?;
                let (w, b) = mac_constants(
                    &mut g,
                    model,
                    name,
                    (weights, bias.as_ref(), mult, shift),
                    vec![p.out_features, p.in_features],
                    p.out_features as usize,
                    0,
                    (scale_of(0)?, out_q.scale),
                )?;
                let act = fused_activation(name, p.act_min, p.act_max, out_q)?;
                let y = g.activation(model, node.output)?;
                // keep_num_dims where the output keeps the input's leading dims
                let keep = i32::from(out_q.shape.len() > 2);
                g.op(
                    FULLY_CONNECTED,
                    vec![xin, w, b],
                    vec![y],
                    Options::Scalars(vec![(4, act), (8, keep)]),
                );
            }
            Kernel::Add {
                constant: Some(_), ..
            }
            | Kernel::Mul {
                constant: Some(_), ..
            } => {
                return Err(format!(
                    "node `{name}`: a binary op with a constant operand has no TFLite export yet"
                ));
            }
            Kernel::Add { params: a, .. } => {
                let (x1, x2) = (g.activation(model, x(0)?)?, g.activation(model, x(1)?)?);
                let act = fused_activation(name, a.act_min, a.act_max, out_q)?;
                let y = g.activation(model, node.output)?;
                g.op(ADD, vec![x1, x2], vec![y], Options::Scalars(vec![(4, act)]));
            }
            Kernel::Mul { params: m, .. } => {
                let (x1, x2) = (g.activation(model, x(0)?)?, g.activation(model, x(1)?)?);
                let act = fused_activation(name, m.act_min, m.act_max, out_q)?;
                let y = g.activation(model, node.output)?;
                g.op(MUL, vec![x1, x2], vec![y], Options::Scalars(vec![(4, act)]));
            }
            Kernel::MaxPool { params: q } | Kernel::AvgPool { params: q } => {
                let max = matches!(node.kernel, Kernel::MaxPool { .. });
                if !max
                    && q.count_include_pad != 0
                    && q.pad_top + q.pad_left + q.pad_bottom + q.pad_right > 0
                {
                    return Err(format!(
                        "node `{name}`: an average pool that counts its padding has no TFLite operator"
                    ));
                }
                let as_conv = ConvParams {
                    in_h: q.in_h,
                    in_w: q.in_w,
                    in_c: q.channels,
                    out_h: q.out_h,
                    out_w: q.out_w,
                    out_c: q.channels,
                    k_h: q.k_h,
                    k_w: q.k_w,
                    stride_h: q.stride_h,
                    stride_w: q.stride_w,
                    dil_h: 1,
                    dil_w: 1,
                    pad_top: q.pad_top,
                    pad_left: q.pad_left,
                    pad_bottom: q.pad_bottom,
                    pad_right: q.pad_right,
                    groups: 1,
                    depth_mult: 1,
                    in_zp: q.zp,
                    out_zp: q.zp,
                    act_min: q.act_min,
                    act_max: q.act_max,
                };
                let (xin, padding) = spatial_input(&mut g, model, name, x(0)?, &as_conv, false)?;
                let act = fused_activation(name, q.act_min, q.act_max, out_q)?;
                let y = g.activation(model, node.output)?;
                let options = vec![
                    (4, i32::from(padding)),
                    (6, q.stride_w),
                    (8, q.stride_h),
                    (10, q.k_w),
                    (12, q.k_h),
                    (14, act),
                ];
                g.op(
                    if max { MAX_POOL_2D } else { AVERAGE_POOL_2D },
                    vec![xin],
                    vec![y],
                    Options::Scalars(options),
                );
            }
            Kernel::GlobalAvgPool { params: q } => {
                let xin = g.activation(model, x(0)?)?;
                let act = fused_activation(name, q.act_min, q.act_max, out_q)?;
                let y = g.activation(model, node.output)?;
                let pooled = if out_q.shape.len() == 4 {
                    y
                } else {
                    g.extra(
                        format!("{}.pooled", out_q.name),
                        vec![1, 1, 1, q.channels],
                        out_q,
                    )
                };
                let options = vec![
                    (4, i32::from(VALID)),
                    (6, 1),
                    (8, 1),
                    (10, q.in_w),
                    (12, q.in_h),
                    (14, act),
                ];
                g.op(
                    AVERAGE_POOL_2D,
                    vec![xin],
                    vec![pooled],
                    Options::Scalars(options),
                );
                if pooled != y {
                    let shape = shape_i32(&out_q.shape)?;
                    let s = g.int32s(format!("{name}.shape"), &shape);
                    g.op(RESHAPE, vec![pooled, s], vec![y], Options::None);
                }
            }
            Kernel::Softmax { .. } => {
                let xin = g.activation(model, x(0)?)?;
                let y = g.activation(model, node.output)?;
                g.op(SOFTMAX, vec![xin], vec![y], Options::Beta(1.0));
            }
            Kernel::Lut { .. } => {
                return Err(format!(
                    "node `{name}`: a table lookup (sigmoid, tanh, ...) has no TFLite export yet"
                ));
            }
            Kernel::Concat {
                outer,
                inner,
                inputs,
                ..
            } => {
                if inputs.iter().any(|c| c.requant) {
                    return Err(format!(
                        "node `{name}`: a concat of inputs at different scales has no TFLite export"
                    ));
                }
                let shape: Vec<i64> = out_q.shape.iter().map(|&d| d as i64).collect();
                let axis = (0..shape.len())
                    .find(|&k| {
                        shape[..k].iter().product::<i64>() == i64::from(*outer)
                            && shape[k + 1..].iter().product::<i64>() == i64::from(*inner)
                    })
                    .ok_or_else(|| {
                        format!("node `{name}`: no axis of its output is the concat's")
                    })?;
                let xs = (0..inputs.len())
                    .map(|k| g.activation(model, x(k)?))
                    .collect::<Result<Vec<_>, _>>()?;
                let y = g.activation(model, node.output)?;
                g.op(
                    CONCATENATION,
                    xs,
                    vec![y],
                    Options::Scalars(vec![(4, axis as i32)]),
                );
            }
            Kernel::Transpose { perm, .. } => {
                let rank = out_q.shape.len();
                let skip = 4usize.saturating_sub(rank) as i32;
                let perm: Vec<i32> = perm[4 - rank.min(4)..].iter().map(|&v| v - skip).collect();
                let xin = g.activation(model, x(0)?)?;
                let y = g.activation(model, node.output)?;
                let p = g.int32s(format!("{name}.perm"), &perm);
                g.op(TRANSPOSE, vec![xin, p], vec![y], Options::None);
            }
            Kernel::Pad { before, after, .. } => {
                let rank = out_q.shape.len().min(4);
                let pads: Vec<i32> = (4 - rank..4).flat_map(|k| [before[k], after[k]]).collect();
                let xin = g.activation(model, x(0)?)?;
                let y = g.activation(model, node.output)?;
                let p = g.int32s(format!("{name}.paddings"), &pads);
                g.op(PAD, vec![xin, p], vec![y], Options::None);
            }
            Kernel::View => {
                let xin = g.activation(model, x(0)?)?;
                let y = g.activation(model, node.output)?;
                let shape = shape_i32(&out_q.shape)?;
                let s = g.int32s(format!("{name}.shape"), &shape);
                g.op(RESHAPE, vec![xin, s], vec![y], Options::None);
            }
        }
    }
    let output = g.activation(model, model.output)?;
    Ok(serialize(&g, &model.name, input, output))
}

/// The flatbuffer of `g` (file identifier `TFL3`).
fn serialize(g: &Graph, name: &str, input: i32, output: i32) -> Vec<u8> {
    let mut b = FlatBufferBuilder::new();
    // operator codes, in order of first use
    let mut codes: Vec<Builtin> = Vec::new();
    for o in &g.operators {
        if !codes.contains(&o.op) {
            codes.push(o.op);
        }
    }
    let code_tables: Vec<_> = codes
        .iter()
        .map(|c| {
            let t = b.start_table();
            b.push_slot::<i8>(4, c.code.min(127) as i8, 0);
            b.push_slot::<i32>(8, c.version, 1);
            b.push_slot::<i32>(10, c.code, 0);
            b.end_table(t)
        })
        .collect();
    let tensors: Vec<_> = g
        .tensors
        .iter()
        .map(|t| {
            let shape = b.create_vector(&t.shape);
            let tname = b.create_string(&t.name);
            let quant = t.quant.as_ref().map(|q| {
                let scales = b.create_vector(&q.scales);
                let zps = b.create_vector(&q.zero_points);
                let s = b.start_table();
                b.push_slot_always::<WIPOffset<_>>(8, scales);
                b.push_slot_always::<WIPOffset<_>>(10, zps);
                b.push_slot::<i32>(16, q.dim, 0);
                b.end_table(s)
            });
            let s = b.start_table();
            b.push_slot_always::<WIPOffset<_>>(4, shape);
            b.push_slot::<i8>(6, t.kind, 0);
            b.push_slot::<u32>(8, t.buffer, 0);
            b.push_slot_always::<WIPOffset<_>>(10, tname);
            if let Some(q) = quant {
                b.push_slot_always::<WIPOffset<_>>(12, q);
            }
            b.end_table(s)
        })
        .collect();
    let operators: Vec<_> = g
        .operators
        .iter()
        .map(|o| {
            let opcode = codes.iter().position(|c| *c == o.op).unwrap_or(0) as u32;
            // every operator gets its options table (RESHAPE, PAD and TRANSPOSE an empty one)
            let s = b.start_table();
            match &o.options {
                Options::None => {}
                Options::Scalars(fields) => {
                    for &(slot, v) in fields {
                        // enum fields (padding, activations) are bytes in the schema
                        if is_byte_field(o.op, slot) {
                            b.push_slot_always::<i8>(slot, v as i8);
                        } else {
                            b.push_slot_always::<i32>(slot, v);
                        }
                    }
                }
                Options::Beta(beta) => b.push_slot_always::<f32>(4, *beta),
            }
            let options = b.end_table(s).as_union_value();
            let inputs = b.create_vector(&o.inputs);
            let outputs = b.create_vector(&o.outputs);
            let s = b.start_table();
            b.push_slot::<u32>(4, opcode, 0);
            b.push_slot_always::<WIPOffset<_>>(6, inputs);
            b.push_slot_always::<WIPOffset<_>>(8, outputs);
            b.push_slot::<u8>(10, o.op.options, 0);
            b.push_slot_always::<WIPOffset<_>>(12, options);
            b.end_table(s)
        })
        .collect();
    let tensors = b.create_vector(&tensors);
    let inputs = b.create_vector(&[input]);
    let outputs = b.create_vector(&[output]);
    let operators = b.create_vector(&operators);
    let sg_name = b.create_string(name);
    let s = b.start_table();
    b.push_slot_always::<WIPOffset<_>>(4, tensors);
    b.push_slot_always::<WIPOffset<_>>(6, inputs);
    b.push_slot_always::<WIPOffset<_>>(8, outputs);
    b.push_slot_always::<WIPOffset<_>>(10, operators);
    b.push_slot_always::<WIPOffset<_>>(12, sg_name);
    let subgraph = b.end_table(s);
    let mut buffers = Vec::with_capacity(g.buffers.len() + 1);
    let s = b.start_table();
    buffers.push(b.end_table(s));
    for data in &g.buffers {
        let v = b.create_vector(data);
        let s = b.start_table();
        b.push_slot_always::<WIPOffset<_>>(4, v);
        buffers.push(b.end_table(s));
    }
    let codes = b.create_vector(&code_tables);
    let subgraphs = b.create_vector(&[subgraph]);
    let buffers = b.create_vector(&buffers);
    let description = b.create_string("edgebuild int8");
    let s = b.start_table();
    b.push_slot::<u32>(4, 3, 0);
    b.push_slot_always::<WIPOffset<_>>(6, codes);
    b.push_slot_always::<WIPOffset<_>>(8, subgraphs);
    b.push_slot_always::<WIPOffset<_>>(10, description);
    b.push_slot_always::<WIPOffset<_>>(12, buffers);
    let root = b.end_table(s);
    b.finish(root, Some("TFL3"));
    b.finished_data().to_vec()
}

/// Whether an options field is a byte-sized enum (padding, fused activation) in the schema.
fn is_byte_field(op: Builtin, slot: u16) -> bool {
    match op {
        CONV_2D => matches!(slot, 4 | 10),
        DEPTHWISE_CONV_2D => matches!(slot, 4 | 12),
        MAX_POOL_2D | AVERAGE_POOL_2D => matches!(slot, 4 | 14),
        FULLY_CONNECTED => matches!(slot, 4 | 8),
        ADD | MUL => slot == 4,
        CONCATENATION => slot == 6,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::int8::Layout;

    #[test]
    fn explicit_pads_are_same_valid_or_neither() {
        // 3x3 stride 1 pad 1: SAME
        assert!(pads_are(SAME, 32, 3, 1, 1, (1, 1), 32));
        assert!(!pads_are(VALID, 32, 3, 1, 1, (1, 1), 32));
        // 3x3 stride 2 on an even input: TF puts the extra pad after
        assert!(pads_are(SAME, 32, 3, 2, 1, (0, 1), 16));
        assert!(!pads_are(SAME, 32, 3, 2, 1, (1, 0), 16));
        // no pads: VALID
        assert!(pads_are(VALID, 5, 3, 1, 1, (0, 0), 3));
        // pads TFLite does not have: neither
        assert!(!pads_are(SAME, 8, 3, 1, 1, (2, 2), 10));
    }

    #[test]
    fn clamps_map_to_fused_activations() {
        let out = QTensor {
            name: "y".into(),
            shape: vec![1, 4],
            layout: Layout::Plain,
            scale: 0.05,
            zero_point: -20,
        };
        assert_eq!(fused_activation("n", -128, 127, &out), Ok(0));
        assert_eq!(fused_activation("n", -20, 127, &out), Ok(1));
        assert_eq!(fused_activation("n", -20, 100, &out), Ok(3));
        assert_eq!(fused_activation("n", -40, 0, &out), Ok(2));
        let e = fused_activation("conv7", -10, 127, &out).unwrap_err();
        assert!(e.contains("conv7"), "{e}");
    }
}

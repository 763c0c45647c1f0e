//! The int8 model as a QDQ ONNX file (SPEC.md, "`int8`"): the float graph with
//! QuantizeLinear/DequantizeLinear pairs at every int8 tensor, int8 weights per output channel
//! and int32 biases behind DequantizeLinear, at the scales and zero points of the int8 model.
//! ONNX Runtime (and any QDQ-aware runtime on a Linux-class device) runs it; it is also the
//! independent check of edgebuild's int8 arithmetic.

use prost::Message;

use super::Int8Model;
use crate::model::Params;
use crate::model::graph::{Graph, Op, PadMode};
use crate::onnx::proto;

/// The opset of the export (per-axis QuantizeLinear from 13, HardSwish from 14).
pub const OPSET: i64 = 17;

struct Builder {
    nodes: Vec<proto::NodeProto>,
    inits: Vec<proto::TensorProto>,
    count: usize,
}

fn attr_i(name: &str, v: i64) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(proto::attribute_proto::AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_f(name: &str, v: f32) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(proto::attribute_proto::AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[i64]) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(proto::attribute_proto::AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

impl Builder {
    fn fresh(&mut self, base: &str) -> String {
        self.count += 1;
        format!("{base}#{}", self.count)
    }

    fn node(
        &mut self,
        op: &str,
        inputs: Vec<String>,
        output: String,
        attrs: Vec<proto::AttributeProto>,
    ) -> String {
        self.nodes.push(proto::NodeProto {
            op_type: Some(op.into()),
            name: Some(format!("{op}_{}", self.nodes.len())),
            input: inputs,
            output: vec![output.clone()],
            attribute: attrs,
            ..Default::default()
        });
        output
    }

    fn init_f32(&mut self, name: String, dims: &[usize], v: &[f32]) -> String {
        self.inits.push(proto::TensorProto {
            name: Some(name.clone()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(proto::tensor_proto::DataType::Float as i32),
            raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            ..Default::default()
        });
        name
    }

    fn init_i8(&mut self, name: String, dims: &[usize], v: &[i8]) -> String {
        self.inits.push(proto::TensorProto {
            name: Some(name.clone()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(proto::tensor_proto::DataType::Int8 as i32),
            raw_data: Some(v.iter().map(|&x| x as u8).collect()),
            ..Default::default()
        });
        name
    }

    fn init_i32(&mut self, name: String, dims: &[usize], v: &[i32]) -> String {
        self.inits.push(proto::TensorProto {
            name: Some(name.clone()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(proto::tensor_proto::DataType::Int32 as i32),
            raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            ..Default::default()
        });
        name
    }

    fn init_i64(&mut self, name: String, v: &[i64]) -> String {
        self.inits.push(proto::TensorProto {
            name: Some(name.clone()),
            dims: vec![v.len() as i64],
            data_type: Some(proto::tensor_proto::DataType::Int64 as i32),
            raw_data: Some(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            ..Default::default()
        });
        name
    }

    /// `x` quantized to (scale, zp) and back: the int8 tensor `name` as the float graph sees
    /// it. The new values are named after the tensor (`{name}.q#N`, `{name}.dq#N`).
    fn qdq(&mut self, x: &str, name: &str, scale: f64, zp: i32) -> String {
        let s = self.fresh(&format!("{name}.scale"));
        let s = self.init_f32(s, &[], &[scale as f32]);
        let z = self.fresh(&format!("{name}.zero_point"));
        let z = self.init_i8(z, &[], &[zp as i8]);
        let q = self.fresh(&format!("{name}.q"));
        self.node(
            "QuantizeLinear",
            vec![x.into(), s.clone(), z.clone()],
            q.clone(),
            vec![],
        );
        let dq = self.fresh(&format!("{name}.dq"));
        self.node("DequantizeLinear", vec![q, s, z], dq, vec![])
    }

    /// An int8 weight per output channel (axis 0) behind DequantizeLinear.
    fn weight(&mut self, base: &str, q: &[i8], dims: &[usize], scales: &[f64]) -> String {
        let w = self.init_i8(format!("{base}.int8"), dims, q);
        let s: Vec<f32> = scales.iter().map(|&v| v as f32).collect();
        let s = self.init_f32(format!("{base}.scales"), &[scales.len()], &s);
        let z = self.init_i8(
            format!("{base}.zero_points"),
            &[scales.len()],
            &vec![0i8; scales.len()],
        );
        self.node(
            "DequantizeLinear",
            vec![w, s, z],
            format!("{base}.dq"),
            vec![attr_i("axis", 0)],
        )
    }

    fn bias(&mut self, base: &str, q: &[i32], scales: &[f64]) -> String {
        let b = self.init_i32(format!("{base}.int32"), &[q.len()], q);
        let s: Vec<f32> = scales.iter().map(|&v| v as f32).collect();
        let s = self.init_f32(format!("{base}.scales"), &[scales.len()], &s);
        let z = self.init_i32(
            format!("{base}.zero_points"),
            &[scales.len()],
            &vec![0i32; scales.len()],
        );
        self.node(
            "DequantizeLinear",
            vec![b, s, z],
            format!("{base}.dq"),
            vec![attr_i("axis", 0)],
        )
    }
}

/// The int8 weights, scales and int32 biases of a layer, exactly as [`super::lower`] makes
/// them (`quant::per_channel`).
fn per_channel(
    node: &str,
    w: &[f32],
    out: usize,
    bias: Option<&[f32]>,
    s_in: Option<f64>,
) -> Result<(Vec<i8>, Vec<f64>, Vec<i32>), String> {
    let s_in = match (bias, s_in) {
        (Some(_), None) => return Err(format!("node `{node}`: no input scale")),
        (_, s) => s.unwrap_or(1.0),
    };
    super::quant::per_channel(w, out, bias, s_in)
        .map_err(|c| format!("node `{node}`: the bias of channel {c} is not finite"))
}

/// Exports the QDQ ONNX model of `model`, lowered from `graph` and `weights`.
pub fn export(
    graph: &Graph,
    weights: &dyn Params<f32>,
    model: &Int8Model,
) -> Result<Vec<u8>, String> {
    let qparams = |name: &str| -> Option<(f64, i32)> {
        model
            .tensors
            .iter()
            .find(|t| t.name == name)
            .map(|t| (t.scale, t.zero_point))
    };
    let dense = |name: &str| {
        weights
            .dense(name)
            .ok_or_else(|| format!("weight `{name}` is not available"))
    };
    let mut b = Builder {
        nodes: Vec::new(),
        inits: Vec::new(),
        count: 0,
    };
    // The float value each float tensor has in the exported graph.
    let mut value: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    let input_q = qparams(&graph.input).ok_or("the int8 model has no input tensor")?;
    let x = b.qdq("input", &graph.input, input_q.0, input_q.1);
    value.insert(graph.input.clone(), x);
    for node in &graph.nodes {
        let get = |t: &str,
                   value: &std::collections::BTreeMap<String, String>|
         -> Result<String, String> {
            value
                .get(t)
                .cloned()
                .ok_or_else(|| format!("tensor `{t}` is not exported yet"))
        };
        let out = format!("{}.out", node.name);
        let in_scale = |t: &str| qparams(t).map(|q| q.0);
        let produced = match &node.op {
            Op::Conv(c) => {
                let x = get(&node.inputs[0], &value)?;
                let wshape = &graph.weights[&node.inputs[1]];
                let bias = match node.inputs.get(2) {
                    Some(t) => Some(dense(t)?),
                    None => None,
                };
                let s_in = in_scale(&node.inputs[0]);
                let (q, s, qb) =
                    per_channel(&node.name, dense(&node.inputs[1])?, wshape[0], bias, s_in)?;
                let w = b.weight(&format!("{}.weight", node.name), &q, wshape, &s);
                let mut inputs = vec![x, w];
                if bias.is_some() {
                    let bs: Vec<f64> = s.iter().map(|&v| v * s_in.unwrap_or(1.0)).collect();
                    inputs.push(b.bias(&format!("{}.bias", node.name), &qb, &bs));
                }
                b.node(
                    "Conv",
                    inputs,
                    out,
                    vec![
                        attr_ints("kernel_shape", &c.kernel_shape.map(|v| v as i64)),
                        attr_ints("strides", &c.strides.map(|v| v as i64)),
                        attr_ints("pads", &c.pads.map(|v| v as i64)),
                        attr_ints("dilations", &c.dilations.map(|v| v as i64)),
                        attr_i("group", c.group as i64),
                    ],
                )
            }
            Op::Gemm(g) => {
                let x = get(&node.inputs[0], &value)?;
                let wshape = &graph.weights[&node.inputs[1]];
                let w: Vec<f32> = dense(&node.inputs[1])?
                    .iter()
                    .map(|v| v * g.alpha)
                    .collect();
                let bias = match node.inputs.get(2) {
                    Some(t) => {
                        let bv = dense(t)?;
                        Some(
                            (0..wshape[0])
                                .map(|o| bv[if bv.len() == 1 { 0 } else { o }] * g.beta)
                                .collect::<Vec<f32>>(),
                        )
                    }
                    None => None,
                };
                let s_in = in_scale(&node.inputs[0]);
                let (q, s, qb) = per_channel(&node.name, &w, wshape[0], bias.as_deref(), s_in)?;
                let wq = b.weight(&format!("{}.weight", node.name), &q, wshape, &s);
                let mut inputs = vec![x, wq];
                if bias.is_some() {
                    let bs: Vec<f64> = s.iter().map(|&v| v * s_in.unwrap_or(1.0)).collect();
                    inputs.push(b.bias(&format!("{}.bias", node.name), &qb, &bs));
                }
                b.node("Gemm", inputs, out, vec![attr_i("transB", 1)])
            }
            Op::Add | Op::Mul => {
                let mut ins = Vec::new();
                for t in &node.inputs {
                    ins.push(match graph.weights.get(t) {
                        Some(shape) => {
                            let (q, s) = super::quant::symmetric(dense(t)?);
                            let w = b.init_i8(format!("{t}.int8"), shape, &q);
                            let sc = b.init_f32(format!("{t}.scale"), &[], &[s as f32]);
                            let z = b.init_i8(format!("{t}.zero_point"), &[], &[0]);
                            b.node(
                                "DequantizeLinear",
                                vec![w, sc, z],
                                format!("{t}.dq"),
                                vec![],
                            )
                        }
                        None => get(t, &value)?,
                    });
                }
                b.node(node.op.name(), ins, out, vec![])
            }
            Op::Relu | Op::Sigmoid | Op::Tanh | Op::HardSwish | Op::Erf | Op::Identity => {
                let x = get(&node.inputs[0], &value)?;
                b.node(node.op.name(), vec![x], out, vec![])
            }
            Op::Clip { min, max } => {
                let x = get(&node.inputs[0], &value)?;
                let lo = b.init_f32(format!("{}.min", node.name), &[], &[*min]);
                let hi = b.init_f32(format!("{}.max", node.name), &[], &[*max]);
                b.node("Clip", vec![x, lo, hi], out, vec![])
            }
            Op::LeakyRelu { alpha } => {
                let x = get(&node.inputs[0], &value)?;
                b.node("LeakyRelu", vec![x], out, vec![attr_f("alpha", *alpha)])
            }
            Op::HardSigmoid { alpha, beta } => {
                let x = get(&node.inputs[0], &value)?;
                b.node(
                    "HardSigmoid",
                    vec![x],
                    out,
                    vec![attr_f("alpha", *alpha), attr_f("beta", *beta)],
                )
            }
            Op::Gelu { tanh: false } => {
                // 0.5 · x · (1 + erf(x / √2))
                let x = get(&node.inputs[0], &value)?;
                let r = b.init_f32(
                    format!("{}.sqrt2", node.name),
                    &[],
                    &[std::f32::consts::SQRT_2],
                );
                let one = b.init_f32(format!("{}.one", node.name), &[], &[1.0]);
                let half = b.init_f32(format!("{}.half", node.name), &[], &[0.5]);
                let d = b.node(
                    "Div",
                    vec![x.clone(), r],
                    format!("{}.div", node.name),
                    vec![],
                );
                let e = b.node("Erf", vec![d], format!("{}.erf", node.name), vec![]);
                let a = b.node("Add", vec![e, one], format!("{}.add", node.name), vec![]);
                let m = b.node("Mul", vec![x, a], format!("{}.mul", node.name), vec![]);
                b.node("Mul", vec![m, half], out, vec![])
            }
            Op::Silu => {
                let x = get(&node.inputs[0], &value)?;
                let s = b.node(
                    "Sigmoid",
                    vec![x.clone()],
                    format!("{}.sigmoid", node.name),
                    vec![],
                );
                b.node("Mul", vec![x, s], out, vec![])
            }
            Op::MaxPool(p) | Op::AveragePool(p) => {
                let x = get(&node.inputs[0], &value)?;
                let mut attrs = vec![
                    attr_ints("kernel_shape", &p.kernel_shape.map(|v| v as i64)),
                    attr_ints("strides", &p.strides.map(|v| v as i64)),
                    attr_ints("pads", &p.pads.map(|v| v as i64)),
                    attr_i("ceil_mode", i64::from(p.ceil_mode)),
                ];
                if matches!(node.op, Op::AveragePool(_)) {
                    attrs.push(attr_i("count_include_pad", i64::from(p.count_include_pad)));
                }
                b.node(node.op.name(), vec![x], out, attrs)
            }
            Op::GlobalAveragePool => {
                let x = get(&node.inputs[0], &value)?;
                b.node("GlobalAveragePool", vec![x], out, vec![])
            }
            Op::Flatten { .. } | Op::Reshape { .. } | Op::Squeeze { .. } | Op::Unsqueeze { .. } => {
                let x = get(&node.inputs[0], &value)?;
                let shape: Vec<i64> = graph.shapes[&node.outputs[0]]
                    .iter()
                    .map(|&d| d as i64)
                    .collect();
                let s = b.init_i64(format!("{}.shape", node.name), &shape);
                b.node("Reshape", vec![x, s], out, vec![])
            }
            Op::Transpose { perm } => {
                let x = get(&node.inputs[0], &value)?;
                let perm: Vec<i64> = perm.iter().map(|&p| p as i64).collect();
                b.node("Transpose", vec![x], out, vec![attr_ints("perm", &perm)])
            }
            Op::Concat { axis } => {
                let ins = node
                    .inputs
                    .iter()
                    .map(|t| get(t, &value))
                    .collect::<Result<_, _>>()?;
                b.node("Concat", ins, out, vec![attr_i("axis", *axis)])
            }
            Op::Softmax { axis } => {
                let x = get(&node.inputs[0], &value)?;
                b.node("Softmax", vec![x], out, vec![attr_i("axis", *axis)])
            }
            Op::Pad {
                pads,
                value: v,
                mode: PadMode::Constant,
            } => {
                let x = get(&node.inputs[0], &value)?;
                let p = b.init_i64(format!("{}.pads", node.name), pads);
                let c = b.init_f32(format!("{}.value", node.name), &[], &[*v]);
                b.node("Pad", vec![x, p, c], out, vec![])
            }
            Op::BatchNormalization { epsilon } => {
                let x = get(&node.inputs[0], &value)?;
                let mut ins = vec![x];
                for t in &node.inputs[1..] {
                    ins.push(b.init_f32(format!("{t}.f32"), &graph.weights[t], dense(t)?));
                }
                b.node(
                    "BatchNormalization",
                    ins,
                    out,
                    vec![attr_f("epsilon", *epsilon)],
                )
            }
            other => {
                return Err(format!(
                    "node `{}` ({}): no QDQ export",
                    node.name,
                    other.name()
                ));
            }
        };
        // An int8 tensor of the model: quantized there, so here too.
        let t = &node.outputs[0];
        let v = match qparams(t) {
            Some((s, z)) => b.qdq(&produced, t, s, z),
            None => produced,
        };
        value.insert(t.clone(), v);
    }
    let out = value
        .get(&graph.output)
        .cloned()
        .ok_or("the output was not exported")?;
    let float_info = |name: &str, shape: &[usize]| proto::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(proto::TypeProto {
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: Some(proto::tensor_proto::DataType::Float as i32),
                    shape: Some(proto::TensorShapeProto {
                        dim: shape
                            .iter()
                            .map(|&d| proto::tensor_shape_proto::Dimension {
                                value: Some(proto::tensor_shape_proto::dimension::Value::DimValue(
                                    d as i64,
                                )),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    // The graph's input is named `input`; its output `output`.
    let last = b.node("Identity", vec![out], "output".into(), vec![]);
    let model_proto = proto::ModelProto {
        ir_version: Some(8),
        opset_import: vec![proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("edgebuild".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        graph: Some(proto::GraphProto {
            name: Some(model.name.clone()),
            node: b.nodes,
            initializer: b.inits,
            input: vec![float_info("input", &graph.shapes[&graph.input])],
            output: vec![float_info(&last, &graph.shapes[&graph.output])],
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(model_proto.encode_to_vec())
}

//! From a float graph, its weights and the calibrated ranges to an [`Int8Model`] (SPEC.md,
//! "`int8`"), TFLite's way: weights symmetric per output channel, activations asymmetric
//! per tensor, int32 biases at input × weight scale, fixed-point multipliers; a ReLU or Clip
//! that alone reads a Conv's, Gemm's or Add's output is fused into its clamp; pools, views,
//! transposes and pads keep their input's scale and zero point; Softmax writes TFLite's fixed
//! 1/256 grid. 4-D activations move to NHWC; a view that flattens one with several channels and
//! pixels gets a transpose back to the float order first, so the numbers keep their meaning.

use std::collections::BTreeMap;

use super::calibrate::Ranges;
use super::quant::{self, Activation};
use super::{
    AddParams, Blob, ConcatInput, ConvParams, FcParams, GlobalPoolParams, Int8Model, Kernel,
    Layout, MulParams, PoolParams, QNode, QTensor,
};
use crate::model::Params;
use crate::model::graph::{Graph, Node, Op};

/// `(scale, zero point)` of a range, which is widened to include 0.
pub fn qparams(min: f64, max: f64) -> Result<(f64, i32), String> {
    let (lo, hi) = (min.min(0.0), max.max(0.0));
    let scale = quant::as_f32((hi - lo) / 255.0);
    if !(scale.is_finite() && scale > 0.0) {
        return Err(format!("range [{min}, {max}] is degenerate"));
    }
    let zp = (-128.0 - lo / scale).round().clamp(-128.0, 127.0) as i32;
    Ok((scale, zp))
}

/// NHWC memory axis `i` holds NCHW axis `NHWC[i]`.
const NHWC: [usize; 4] = [0, 2, 3, 1];
/// NCHW axis `a` sits at NHWC memory axis `TO_NHWC[a]`.
const TO_NHWC: [usize; 4] = [0, 3, 1, 2];

fn right4(shape: &[usize]) -> Result<[i32; 4], String> {
    if shape.len() > 4 {
        return Err(format!("rank {} is above the runtime's 4", shape.len()));
    }
    let mut out = [1i32; 4];
    for (i, &d) in shape.iter().enumerate() {
        out[4 - shape.len() + i] = i32::try_from(d).map_err(|_| "a dimension is too large")?;
    }
    Ok(out)
}

fn i32_of(v: usize) -> Result<i32, String> {
    i32::try_from(v).map_err(|_| format!("{v} does not fit the runtime's int32 sizes"))
}

struct Lowering<'a> {
    graph: &'a Graph,
    weights: &'a dyn Params<f32>,
    ranges: &'a Ranges,
    model: Int8Model,
    /// Float tensor → int8 tensor index.
    map: BTreeMap<String, usize>,
    /// Float tensors whose producer fused the activation that reads them: activation node
    /// name → (the fused node's float output, the activation).
    fused: BTreeMap<String, (String, Activation)>,
}

impl Lowering<'_> {
    fn range(&self, name: &str) -> Result<(f64, i32), String> {
        let r = self.ranges.tensors.get(name).ok_or_else(|| {
            format!(
                "the ranges have no entry for activation `{name}` (calibrated for another model?)"
            )
        })?;
        qparams(r.min, r.max).map_err(|e| format!("activation `{name}`: {e}"))
    }

    /// Adds the int8 tensor of a float tensor, with its calibrated or the given qparams.
    fn tensor(&mut self, name: &str, q: Option<(f64, i32)>) -> Result<usize, String> {
        let shape = self.graph.shapes[name].clone();
        let (scale, zero_point) = match q {
            Some(q) => q,
            None => self.range(name)?,
        };
        let (layout, mem) = if shape.len() == 4 {
            (Layout::Nhwc, NHWC.iter().map(|&a| shape[a]).collect())
        } else {
            (Layout::Plain, shape.clone())
        };
        self.model.tensors.push(QTensor {
            name: name.to_string(),
            shape: mem,
            layout,
            scale,
            zero_point,
        });
        let i = self.model.tensors.len() - 1;
        self.map.insert(name.to_string(), i);
        Ok(i)
    }

    /// A scratch tensor (not of the float graph) with given memory shape and qparams.
    fn temp(&mut self, name: String, shape: Vec<usize>, layout: Layout, q: (f64, i32)) -> usize {
        self.model.tensors.push(QTensor {
            name,
            shape,
            layout,
            scale: q.0,
            zero_point: q.1,
        });
        self.model.tensors.len() - 1
    }

    fn input(&self, name: &str) -> Result<usize, String> {
        self.map
            .get(name)
            .copied()
            .ok_or_else(|| format!("activation `{name}` was not lowered before it is read"))
    }

    fn dense(&self, name: &str) -> Result<&[f32], String> {
        self.weights
            .dense(name)
            .ok_or_else(|| format!("weight `{name}` is not available as values"))
    }

    fn blob(&mut self, name: String, b: Blob) -> String {
        self.model.blobs.insert(name.clone(), b);
        name
    }

    fn push(&mut self, name: &str, kernel: Kernel, inputs: Vec<usize>, output: usize) {
        self.model.nodes.push(QNode {
            name: name.to_string(),
            kernel,
            inputs,
            output,
        });
    }

    /// The activation fused into `node`'s output, and the float tensor it then writes.
    fn fusion(&self, node: &Node) -> (Activation, String) {
        let out = &node.outputs[0];
        for (act_node, (from, act)) in &self.fused {
            if from == out {
                let n = self
                    .graph
                    .nodes
                    .iter()
                    .find(|n| &n.name == act_node)
                    .expect("fused nodes exist");
                return (*act, n.outputs[0].clone());
            }
        }
        (Activation::None, out.clone())
    }

    /// Per-output-channel symmetric int8 of `w` viewed `[out, k]` and the int32 biases
    /// (`quant::per_channel`): values, scales, biases (when there are any).
    fn per_channel(
        node: &str,
        w: &[f32],
        out: usize,
        bias: Option<&[f32]>,
        s_in: f64,
    ) -> Result<(Vec<i8>, Vec<f64>, Option<Vec<i32>>), String> {
        let (q, s, b) = quant::per_channel(w, out, bias, s_in).map_err(|c| {
            format!("node `{node}`: the bias of channel {c} is not a finite number")
        })?;
        Ok((q, s, bias.map(|_| b)))
    }

    fn requant_blobs(
        &mut self,
        node: &str,
        s_in: f64,
        s_w: &[f64],
        s_out: f64,
    ) -> (String, String) {
        let (m, s) = quant::conv_multipliers(s_in, s_w, s_out);
        (
            self.blob(format!("{node}.mult"), Blob::I32(m)),
            self.blob(format!("{node}.shift"), Blob::I32(s)),
        )
    }

    fn conv(&mut self, node: &Node, c: &crate::model::graph::Conv) -> Result<(), String> {
        let x = self.input(&node.inputs[0])?;
        let (act, out_name) = self.fusion(node);
        let y = self.tensor(&out_name, None)?;
        let (xt, yt) = (self.model.tensors[x].clone(), self.model.tensors[y].clone());
        let wshape = &self.graph.weights[&node.inputs[1]];
        let (cout, cpg, kh, kw) = (wshape[0], wshape[1], wshape[2], wshape[3]);
        let cin = xt.shape[3];
        let w = self.dense(&node.inputs[1])?.to_vec();
        let b = match node.inputs.get(2) {
            Some(b) => Some(self.dense(b)?.to_vec()),
            None => None,
        };
        let (qw, s_w, qb) = Self::per_channel(&node.name, &w, cout, b.as_deref(), xt.scale)?;
        let depthwise = c.group > 1 && c.group == cin && cpg == 1;
        // OHWI for conv; [kh][kw][out] for depthwise.
        let k = cpg * kh * kw;
        let mut laid = vec![0i8; qw.len()];
        for o in 0..cout {
            for ci in 0..cpg {
                for y0 in 0..kh {
                    for x0 in 0..kw {
                        let v = qw[o * k + (ci * kh + y0) * kw + x0];
                        let at = if depthwise {
                            (y0 * kw + x0) * cout + o
                        } else {
                            ((o * kh + y0) * kw + x0) * cpg + ci
                        };
                        laid[at] = v;
                    }
                }
            }
        }
        let name = &node.name;
        let bias = qb.map(|q| self.blob(format!("{name}.bias"), Blob::I32(q)));
        let weights = self.blob(format!("{name}.weights"), Blob::I8(laid));
        let (mult, shift) = self.requant_blobs(name, xt.scale, &s_w, yt.scale);
        let (act_min, act_max) = quant::activation_range(act, yt.scale, yt.zero_point);
        let params = ConvParams {
            in_h: i32_of(xt.shape[1])?,
            in_w: i32_of(xt.shape[2])?,
            in_c: i32_of(cin)?,
            out_h: i32_of(yt.shape[1])?,
            out_w: i32_of(yt.shape[2])?,
            out_c: i32_of(cout)?,
            k_h: i32_of(kh)?,
            k_w: i32_of(kw)?,
            stride_h: i32_of(c.strides[0])?,
            stride_w: i32_of(c.strides[1])?,
            dil_h: i32_of(c.dilations[0])?,
            dil_w: i32_of(c.dilations[1])?,
            pad_top: i32_of(c.pads[0])?,
            pad_left: i32_of(c.pads[1])?,
            pad_bottom: i32_of(c.pads[2])?,
            pad_right: i32_of(c.pads[3])?,
            groups: if depthwise { 1 } else { i32_of(c.group)? },
            depth_mult: if depthwise { i32_of(cout / cin)? } else { 1 },
            in_zp: xt.zero_point,
            out_zp: yt.zero_point,
            act_min,
            act_max,
        };
        let kernel = if depthwise {
            Kernel::Depthwise {
                params,
                weights,
                bias,
                mult,
                shift,
            }
        } else {
            Kernel::Conv {
                params,
                weights,
                bias,
                mult,
                shift,
            }
        };
        self.push(name, kernel, vec![x], y);
        Ok(())
    }

    fn gemm(&mut self, node: &Node, g: &crate::model::graph::Gemm) -> Result<(), String> {
        let x = self.input(&node.inputs[0])?;
        let (act, out_name) = self.fusion(node);
        let y = self.tensor(&out_name, None)?;
        let (xt, yt) = (self.model.tensors[x].clone(), self.model.tensors[y].clone());
        if xt.shape.len() != 2 {
            return Err(format!(
                "node `{}`: Gemm of a rank-{} input",
                node.name,
                xt.shape.len()
            ));
        }
        let wshape = self.graph.weights[&node.inputs[1]].clone();
        let (out, k) = (wshape[0], wshape[1]);
        let w: Vec<f32> = self
            .dense(&node.inputs[1])?
            .iter()
            .map(|v| v * g.alpha)
            .collect();
        let b = match node.inputs.get(2) {
            Some(b) => {
                let b = self.dense(b)?;
                Some(
                    (0..out)
                        .map(|o| b[if b.len() == 1 { 0 } else { o }] * g.beta)
                        .collect::<Vec<f32>>(),
                )
            }
            None => None,
        };
        let name = &node.name;
        let (qw, s_w, qb) = Self::per_channel(name, &w, out, b.as_deref(), xt.scale)?;
        let bias = qb.map(|q| self.blob(format!("{name}.bias"), Blob::I32(q)));
        let weights = self.blob(format!("{name}.weights"), Blob::I8(qw));
        let (mult, shift) = self.requant_blobs(name, xt.scale, &s_w, yt.scale);
        let (act_min, act_max) = quant::activation_range(act, yt.scale, yt.zero_point);
        let params = FcParams {
            batches: 1,
            in_features: i32_of(k)?,
            out_features: i32_of(out)?,
            in_zp: xt.zero_point,
            out_zp: yt.zero_point,
            act_min,
            act_max,
        };
        self.push(
            name,
            Kernel::FullyConnected {
                params,
                weights,
                bias,
                mult,
                shift,
            },
            vec![x],
            y,
        );
        Ok(())
    }

    /// A float constant as an int8 operand in the memory layout of `like`.
    fn constant(
        &mut self,
        node: &str,
        name: &str,
        like: &QTensor,
    ) -> Result<(String, Vec<usize>, f64), String> {
        let shape = self.graph.weights[name].clone();
        let (q, scale) = quant::symmetric(self.dense(name)?);
        // Right-aligned to the activation's rank; a 4-D NCHW constant moves to NHWC.
        let rank = like.shape.len();
        if shape.len() > rank {
            return Err(format!(
                "node `{node}`: the constant `{name}` has a higher rank than its partner"
            ));
        }
        let mut full = vec![1usize; rank - shape.len()];
        full.extend(&shape);
        let (q, mem) = if like.layout == Layout::Nhwc {
            let mem: Vec<usize> = NHWC.iter().map(|&a| full[a]).collect();
            let moved = super::to_memory(&q, &full[1..], Layout::Nhwc);
            (if full[0] == 1 { moved } else { q }, mem)
        } else {
            (q, full)
        };
        let blob = self.blob(format!("{node}.const"), Blob::I8(q));
        Ok((blob, mem, scale))
    }

    fn add_mul(&mut self, node: &Node) -> Result<(), String> {
        let is_add = matches!(node.op, Op::Add);
        let (a_w, b_w) = (
            self.graph.weights.contains_key(&node.inputs[0]),
            self.graph.weights.contains_key(&node.inputs[1]),
        );
        let (act_name, const_name) = match (a_w, b_w) {
            (false, false) => (node.inputs[0].clone(), None),
            (false, true) => (node.inputs[0].clone(), Some(node.inputs[1].clone())),
            (true, false) => (node.inputs[1].clone(), Some(node.inputs[0].clone())),
            (true, true) => return Err(format!("node `{}`: an op of two constants", node.name)),
        };
        let x = self.input(&act_name)?;
        let (act, out_name) = if is_add {
            self.fusion(node)
        } else {
            (Activation::None, node.outputs[0].clone())
        };
        let y = self.tensor(&out_name, None)?;
        let (xt, yt) = (self.model.tensors[x].clone(), self.model.tensors[y].clone());
        let (second, s2_shape, s2, zp2, constant) = match &const_name {
            Some(c) => {
                let (blob, mem, scale) = self.constant(&node.name, c, &xt)?;
                (None, mem, scale, 0, Some(blob))
            }
            None => {
                let b = self.input(&node.inputs[1])?;
                let bt = self.model.tensors[b].clone();
                if bt.shape.len() != xt.shape.len() {
                    return Err(format!(
                        "node `{}`: broadcasting activations of different ranks",
                        node.name
                    ));
                }
                (Some(b), bt.shape.clone(), bt.scale, bt.zero_point, None)
            }
        };
        let (act_min, act_max) = quant::activation_range(act, yt.scale, yt.zero_point);
        let kernel = if is_add {
            let m = quant::add_multipliers(xt.scale, s2, yt.scale);
            Kernel::Add {
                params: AddParams {
                    out_shape: right4(&yt.shape)?,
                    in1_shape: right4(&xt.shape)?,
                    in2_shape: right4(&s2_shape)?,
                    in1_zp: xt.zero_point,
                    in2_zp: zp2,
                    out_zp: yt.zero_point,
                    left_shift: m.left_shift,
                    in1_mult: m.in1.0,
                    in1_shift: m.in1.1,
                    in2_mult: m.in2.0,
                    in2_shift: m.in2.1,
                    out_mult: m.out.0,
                    out_shift: m.out.1,
                    act_min,
                    act_max,
                },
                constant,
            }
        } else {
            let (mult, shift) = quant::mul_multiplier(xt.scale, s2, yt.scale);
            Kernel::Mul {
                params: MulParams {
                    out_shape: right4(&yt.shape)?,
                    in1_shape: right4(&xt.shape)?,
                    in2_shape: right4(&s2_shape)?,
                    in1_zp: xt.zero_point,
                    in2_zp: zp2,
                    out_zp: yt.zero_point,
                    out_mult: mult,
                    out_shift: shift,
                    act_min,
                    act_max,
                },
                constant,
            }
        };
        let mut inputs = vec![x];
        inputs.extend(second);
        self.push(&node.name, kernel, inputs, y);
        Ok(())
    }

    fn unary(&mut self, node: &Node) -> Result<(), String> {
        let x = self.input(&node.inputs[0])?;
        let y = self.tensor(&node.outputs[0], None)?;
        let (xt, yt) = (self.model.tensors[x].clone(), self.model.tensors[y].clone());
        use quant::funcs;
        let f: Box<dyn Fn(f64) -> f64> = match &node.op {
            Op::Relu => Box::new(|v: f64| v.max(0.0)),
            Op::Clip { min, max } => {
                let (lo, hi) = (*min as f64, *max as f64);
                Box::new(move |v: f64| v.clamp(lo, hi))
            }
            Op::LeakyRelu { alpha } => {
                let a = *alpha as f64;
                Box::new(move |v: f64| if v < 0.0 { a * v } else { v })
            }
            Op::HardSwish => Box::new(funcs::hard_swish),
            Op::HardSigmoid { alpha, beta } => {
                let (a, b) = (*alpha as f64, *beta as f64);
                Box::new(move |v: f64| (a * v + b).clamp(0.0, 1.0))
            }
            Op::Sigmoid => Box::new(funcs::sigmoid),
            Op::Tanh => Box::new(funcs::tanh),
            Op::Gelu { tanh: false } => Box::new(funcs::gelu),
            Op::Gelu { tanh: true } => Box::new(|v: f64| {
                0.5 * v
                    * (1.0
                        + libm::tanh(
                            (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v),
                        ))
            }),
            Op::Silu => Box::new(funcs::silu),
            Op::Erf => Box::new(libm::erf),
            other => {
                return Err(format!(
                    "node `{}`: {} is not elementwise",
                    node.name,
                    other.name()
                ));
            }
        };
        let table = quant::unary_table(f, xt.scale, xt.zero_point, yt.scale, yt.zero_point);
        let table = self.blob(format!("{}.table", node.name), Blob::I8(table.to_vec()));
        self.push(&node.name, Kernel::Lut { table }, vec![x], y);
        Ok(())
    }

    fn pool(
        &mut self,
        node: &Node,
        p: &crate::model::graph::Pool,
        max: bool,
    ) -> Result<(), String> {
        let x = self.input(&node.inputs[0])?;
        let xt = self.model.tensors[x].clone();
        let y = self.tensor(&node.outputs[0], Some((xt.scale, xt.zero_point)))?;
        let yt = self.model.tensors[y].clone();
        if p.dilations != [1, 1] {
            return Err(format!(
                "node `{}`: the int8 runtime has no dilated pooling",
                node.name
            ));
        }
        // ceil mode: extra end padding makes the floor formula count the last window.
        let mut pads = p.pads;
        for a in 0..2 {
            let (size, k, s, out) = (
                xt.shape[1 + a],
                p.kernel_shape[a],
                p.strides[a],
                yt.shape[1 + a],
            );
            let need = ((out - 1) * s + k).saturating_sub(size + pads[a] + pads[2 + a]);
            if need > 0 {
                if p.count_include_pad && !max {
                    return Err(format!(
                        "node `{}`: ceil_mode with count_include_pad has no int8 kernel",
                        node.name
                    ));
                }
                pads[2 + a] += need;
            }
        }
        let params = PoolParams {
            in_h: i32_of(xt.shape[1])?,
            in_w: i32_of(xt.shape[2])?,
            channels: i32_of(xt.shape[3])?,
            out_h: i32_of(yt.shape[1])?,
            out_w: i32_of(yt.shape[2])?,
            k_h: i32_of(p.kernel_shape[0])?,
            k_w: i32_of(p.kernel_shape[1])?,
            stride_h: i32_of(p.strides[0])?,
            stride_w: i32_of(p.strides[1])?,
            pad_top: i32_of(pads[0])?,
            pad_left: i32_of(pads[1])?,
            pad_bottom: i32_of(pads[2])?,
            pad_right: i32_of(pads[3])?,
            count_include_pad: i32::from(p.count_include_pad),
            zp: xt.zero_point,
            act_min: -128,
            act_max: 127,
        };
        let kernel = if max {
            Kernel::MaxPool { params }
        } else {
            Kernel::AvgPool { params }
        };
        self.push(&node.name, kernel, vec![x], y);
        Ok(())
    }

    /// A view, Flatten or Reshape: memory-order changes become transposes.
    fn view(&mut self, node: &Node) -> Result<(), String> {
        let x = self.input(&node.inputs[0])?;
        let xt = self.model.tensors[x].clone();
        let q = (xt.scale, xt.zero_point);
        let out_float = self.graph.shapes[&node.outputs[0]].clone();
        let in_float = self.graph.shapes[&node.inputs[0]].clone();
        let trivial = |s: &[usize]| s.len() != 4 || s[1] == 1 || s[2] * s[3] == 1;
        let mut src = x;
        // Into float (NCHW) order first, when the input is NHWC with real channels and pixels.
        if xt.layout == Layout::Nhwc && !trivial(&in_float) {
            let t = self.temp(
                format!("{}#nchw", node.name),
                in_float.clone(),
                Layout::Plain,
                q,
            );
            self.push(
                &format!("{}#nchw", node.name),
                Kernel::Transpose {
                    in_shape: right4(&xt.shape)?,
                    perm: [0, 3, 1, 2],
                },
                vec![src],
                t,
            );
            src = t;
        }
        if out_float.len() == 4 && !trivial(&out_float) {
            let plain = self.temp(
                format!("{}#plain", node.name),
                out_float.clone(),
                Layout::Plain,
                q,
            );
            self.push(&node.name, Kernel::View, vec![src], plain);
            let y = self.tensor(&node.outputs[0], Some(q))?;
            self.push(
                &format!("{}#nhwc", node.name),
                Kernel::Transpose {
                    in_shape: right4(&out_float)?,
                    perm: [0, 2, 3, 1],
                },
                vec![plain],
                y,
            );
        } else {
            let y = self.tensor(&node.outputs[0], Some(q))?;
            self.push(&node.name, Kernel::View, vec![src], y);
        }
        Ok(())
    }

    fn transpose(&mut self, node: &Node, perm: &[usize]) -> Result<(), String> {
        let x = self.input(&node.inputs[0])?;
        let xt = self.model.tensors[x].clone();
        let y = self.tensor(&node.outputs[0], Some((xt.scale, xt.zero_point)))?;
        let memory: Vec<usize> = if perm.len() == 4 {
            // Output memory axis i holds float output axis NHWC[i] = float input axis
            // perm[NHWC[i]], which sits at input memory axis TO_NHWC[...].
            (0..4).map(|i| TO_NHWC[perm[NHWC[i]]]).collect()
        } else {
            perm.to_vec()
        };
        if memory.iter().enumerate().all(|(i, &p)| i == p) {
            self.push(&node.name, Kernel::View, vec![x], y);
            return Ok(());
        }
        let pad = 4 - memory.len();
        let mut p4 = [0i32; 4];
        for i in 0..pad {
            p4[i] = i as i32;
        }
        for (i, &p) in memory.iter().enumerate() {
            p4[pad + i] = (p + pad) as i32;
        }
        self.push(
            &node.name,
            Kernel::Transpose {
                in_shape: right4(&xt.shape)?,
                perm: p4,
            },
            vec![x],
            y,
        );
        Ok(())
    }

    fn concat(&mut self, node: &Node, axis: i64) -> Result<(), String> {
        let y = self.tensor(&node.outputs[0], None)?;
        let yt = self.model.tensors[y].clone();
        let rank = self.graph.shapes[&node.outputs[0]].len();
        let a = crate::model::graph::axis_of(axis, rank)?;
        let mem_axis = if yt.layout == Layout::Nhwc {
            TO_NHWC[a]
        } else {
            a
        };
        let outer: usize = yt.shape[..mem_axis].iter().product();
        let inner: usize = yt.shape[mem_axis + 1..].iter().product();
        let mut inputs = Vec::new();
        let mut indices = Vec::new();
        for input in &node.inputs {
            if self.graph.weights.contains_key(input) {
                return Err(format!(
                    "node `{}`: the int8 runtime concatenates activations only",
                    node.name
                ));
            }
            let i = self.input(input)?;
            let t = self.model.tensors[i].clone();
            let same = t.scale == yt.scale && t.zero_point == yt.zero_point;
            let (mult, shift) = quant::quantize_multiplier(t.scale / yt.scale);
            inputs.push(ConcatInput {
                axis_size: i32_of(t.shape[mem_axis])?,
                requant: !same,
                zp: t.zero_point,
                mult,
                shift,
            });
            indices.push(i);
        }
        self.push(
            &node.name,
            Kernel::Concat {
                outer: i32_of(outer)?,
                inner: i32_of(inner)?,
                out_zp: yt.zero_point,
                inputs,
            },
            indices,
            y,
        );
        Ok(())
    }

    fn pad(&mut self, node: &Node, pads: &[i64], value: f32) -> Result<(), String> {
        let x = self.input(&node.inputs[0])?;
        let xt = self.model.tensors[x].clone();
        let y = self.tensor(&node.outputs[0], Some((xt.scale, xt.zero_point)))?;
        if pads.iter().any(|&p| p < 0) {
            return Err(format!(
                "node `{}`: the int8 runtime has no cropping pad",
                node.name
            ));
        }
        let r = pads.len() / 2;
        let (mut before, mut after) = (vec![0i32; r], vec![0i32; r]);
        for i in 0..r {
            let m = if xt.layout == Layout::Nhwc {
                NHWC[i]
            } else {
                i
            };
            before[i] = i32::try_from(pads[m]).map_err(|_| "pad too large")?;
            after[i] = i32::try_from(pads[m + r]).map_err(|_| "pad too large")?;
        }
        let pad4 = |v: &[i32]| -> [i32; 4] {
            let mut o = [0; 4];
            o[4 - v.len()..].copy_from_slice(v);
            o
        };
        let value = quant::quantize_value(value as f64, xt.scale, xt.zero_point);
        self.push(
            &node.name,
            Kernel::Pad {
                in_shape: right4(&xt.shape)?,
                before: pad4(&before),
                after: pad4(&after),
                value,
            },
            vec![x],
            y,
        );
        Ok(())
    }
}

/// Lowers a float graph to int8.
pub fn lower(
    graph: &Graph,
    weights: &dyn Params<f32>,
    ranges: &Ranges,
    name: &str,
    labels: &[String],
) -> Result<Int8Model, String> {
    let mut l = Lowering {
        graph,
        weights,
        ranges,
        model: Int8Model {
            format: super::FORMAT.into(),
            name: name.into(),
            labels: labels.to_vec(),
            tensors: Vec::new(),
            input: 0,
            output: 0,
            nodes: Vec::new(),
            input_shape: graph.shapes[&graph.input][1..].to_vec(),
            output_shape: graph.output_shape().to_vec(),
            blobs: BTreeMap::new(),
        },
        map: BTreeMap::new(),
        fused: BTreeMap::new(),
    };
    // Activations that fuse into the node before them.
    let readers = |t: &str| {
        graph
            .nodes
            .iter()
            .filter(|n| n.inputs.iter().any(|i| i == t))
            .count()
    };
    for node in &graph.nodes {
        let act = match node.op {
            Op::Relu => Activation::Relu,
            Op::Clip { min, max } => Activation::Clip(min as f64, max as f64),
            _ => continue,
        };
        let x = &node.inputs[0];
        let producer = graph.nodes.iter().find(|n| &n.outputs[0] == x);
        if let Some(p) = producer
            && matches!(p.op, Op::Conv(_) | Op::Gemm(_) | Op::Add)
            && readers(x) == 1
            && *x != graph.output
        {
            l.fused.insert(node.name.clone(), (x.clone(), act));
        }
    }
    l.model.input = l.tensor(&graph.input, None)?;
    for node in &graph.nodes {
        if l.fused.contains_key(&node.name) {
            continue;
        }
        let unsupported = |what: &str| {
            Err(format!(
                "node `{}` ({}): the int8 runtime has no kernel for {what}",
                node.name,
                node.op.name()
            ))
        };
        let in_rank = graph.shapes.get(&node.inputs[0]).map_or(0, Vec::len);
        match &node.op {
            Op::Conv(c) => l.conv(node, c)?,
            Op::Gemm(g) => l.gemm(node, g)?,
            Op::Add | Op::Mul => l.add_mul(node)?,
            op if op.is_unary() => l.unary(node)?,
            Op::MaxPool(p) => l.pool(node, p, true)?,
            Op::AveragePool(p) => l.pool(node, p, false)?,
            Op::GlobalAveragePool => {
                let x = l.input(&node.inputs[0])?;
                let xt = l.model.tensors[x].clone();
                if xt.layout != Layout::Nhwc {
                    return unsupported("a global pool of a non-4-D input");
                }
                let y = l.tensor(&node.outputs[0], Some((xt.scale, xt.zero_point)))?;
                let params = GlobalPoolParams {
                    in_h: i32_of(xt.shape[1])?,
                    in_w: i32_of(xt.shape[2])?,
                    channels: i32_of(xt.shape[3])?,
                    act_min: -128,
                    act_max: 127,
                };
                l.push(&node.name, Kernel::GlobalAvgPool { params }, vec![x], y);
            }
            Op::Softmax { axis } => {
                let x = l.input(&node.inputs[0])?;
                let xt = l.model.tensors[x].clone();
                let a = crate::model::graph::axis_of(*axis, in_rank)?;
                let last = if xt.layout == Layout::Nhwc {
                    a == 1
                } else {
                    a == in_rank - 1
                };
                if !last {
                    return unsupported("a softmax over an axis other than the last in memory");
                }
                let y = l.tensor(&node.outputs[0], Some((1.0 / 256.0, -128)))?;
                let cols = *xt.shape.last().expect("rank ≥ 1");
                let rows = xt.len() / cols;
                let table = quant::softmax_table(xt.scale);
                let table = l.blob(format!("{}.table", node.name), Blob::U32(table.to_vec()));
                l.push(
                    &node.name,
                    Kernel::Softmax {
                        rows: i32_of(rows)?,
                        cols: i32_of(cols)?,
                        table,
                    },
                    vec![x],
                    y,
                );
            }
            Op::Flatten { .. }
            | Op::Reshape { .. }
            | Op::Squeeze { .. }
            | Op::Unsqueeze { .. }
            | Op::Identity => l.view(node)?,
            Op::Transpose { perm } => l.transpose(node, perm)?,
            Op::Concat { axis } => l.concat(node, *axis)?,
            Op::Pad { pads, value, mode } => {
                if *mode != crate::model::graph::PadMode::Constant {
                    return unsupported("reflect, edge or wrap padding");
                }
                l.pad(node, pads, *value)?
            }
            Op::BatchNormalization { epsilon } => {
                if in_rank != 4 {
                    return unsupported("a batch normalization of a non-4-D input");
                }
                // A depthwise 1×1 convolution with the normalization's per-channel affine map.
                let get = |i: usize| l.dense(&node.inputs[i]).map(<[f32]>::to_vec);
                let (scale, beta, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
                let factor: Vec<f64> = scale
                    .iter()
                    .zip(&var)
                    .map(|(&s, &v)| s as f64 / (v as f64 + *epsilon as f64).sqrt())
                    .collect();
                let w: Vec<f32> = factor.iter().map(|&f| f as f32).collect();
                let b: Vec<f32> = (0..factor.len())
                    .map(|c| (beta[c] as f64 - mean[c] as f64 * factor[c]) as f32)
                    .collect();
                let x = l.input(&node.inputs[0])?;
                let y = l.tensor(&node.outputs[0], None)?;
                let (xt, yt) = (l.model.tensors[x].clone(), l.model.tensors[y].clone());
                let c = xt.shape[3];
                let (qw, s_w, bias) = Lowering::per_channel(&node.name, &w, c, Some(&b), xt.scale)?;
                let weights = l.blob(format!("{}.weights", node.name), Blob::I8(qw));
                let bias = bias.map(|q| l.blob(format!("{}.bias", node.name), Blob::I32(q)));
                let (mult, shift) = l.requant_blobs(&node.name, xt.scale, &s_w, yt.scale);
                let params = ConvParams {
                    in_h: i32_of(xt.shape[1])?,
                    in_w: i32_of(xt.shape[2])?,
                    in_c: i32_of(c)?,
                    out_h: i32_of(xt.shape[1])?,
                    out_w: i32_of(xt.shape[2])?,
                    out_c: i32_of(c)?,
                    k_h: 1,
                    k_w: 1,
                    stride_h: 1,
                    stride_w: 1,
                    dil_h: 1,
                    dil_w: 1,
                    pad_top: 0,
                    pad_left: 0,
                    pad_bottom: 0,
                    pad_right: 0,
                    groups: 1,
                    depth_mult: 1,
                    in_zp: xt.zero_point,
                    out_zp: yt.zero_point,
                    act_min: -128,
                    act_max: 127,
                };
                l.push(
                    &node.name,
                    Kernel::Depthwise {
                        params,
                        weights,
                        bias,
                        mult,
                        shift,
                    },
                    vec![x],
                    y,
                );
            }
            Op::MatMul => return unsupported("a product of two activations"),
            Op::LayerNormalization { .. } => return unsupported("LayerNormalization"),
            other => return unsupported(other.name()),
        }
    }
    l.model.output = l.input(&graph.output)?;
    l.model.check()?;
    Ok(l.model)
}

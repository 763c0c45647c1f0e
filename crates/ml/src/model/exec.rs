//! Forward passes over a [`Graph`]: every op with its ONNX semantics, on batches of samples in
//! NCHW layout, for any [`Real`] scalar.
//!
//! How a weight multiplies and where the other tensors come from is a [`Params`] value: float
//! weights (f32, multiplied by the `gemm` crate), the plain-f64 reference with a fixed
//! summation order (whose results do not depend on the CPU: the importance matrix and so the
//! shipped GGUF are computed with it, SPEC.md, "`imatrix`"), or a GGUF run through candle's
//! quantized kernels (SPEC.md, "`evaluate`"). An observer sees every row a matmul weight
//! multiplies (the importance matrix is made of them). This module owns no file format.

use std::ops::Range;

use super::graph::{Graph, Node, Op, Pool, axis_of, numel};

/// The scalars a forward pass runs in: f32 (evaluation) and f64 (the reference).
pub trait Real:
    Copy
    + PartialOrd
    + Send
    + Sync
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    fn of(v: f64) -> Self;
    fn f64(self) -> f64;
    fn exp(self) -> Self;
    fn tanh(self) -> Self;
    fn sqrt(self) -> Self;
    fn erf(self) -> Self;
    fn max(self, other: Self) -> Self {
        if other > self { other } else { self }
    }
    fn min(self, other: Self) -> Self {
        if other < self { other } else { self }
    }
}

impl Real for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    fn of(v: f64) -> f32 {
        v as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
    fn exp(self) -> f32 {
        f32::exp(self)
    }
    fn tanh(self) -> f32 {
        f32::tanh(self)
    }
    fn sqrt(self) -> f32 {
        f32::sqrt(self)
    }
    fn erf(self) -> f32 {
        libm::erff(self)
    }
}

/// f64 with libm's functions: the same bits on every platform.
impl Real for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    fn of(v: f64) -> f64 {
        v
    }
    fn f64(self) -> f64 {
        self
    }
    fn exp(self) -> f64 {
        libm::exp(self)
    }
    fn tanh(self) -> f64 {
        libm::tanh(self)
    }
    fn sqrt(self) -> f64 {
        libm::sqrt(self)
    }
    fn erf(self) -> f64 {
        libm::erf(self)
    }
}

/// A batch of samples: `shape[0]` is the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor<F> {
    pub shape: Vec<usize>,
    pub data: Vec<F>,
}

impl<F: Real> Tensor<F> {
    pub fn new(shape: Vec<usize>, data: Vec<F>) -> Tensor<F> {
        debug_assert_eq!(numel(&shape), data.len());
        Tensor { shape, data }
    }
}

/// Where a forward pass gets its weights, and how it multiplies by one.
pub trait Params<F: Real>: Sync {
    /// A weight as plain values (a bias, a norm's parameters, a constant operand; a matmul
    /// weight too when it is not block-quantized). `None` for a block-quantized weight.
    fn dense(&self, name: &str) -> Option<&[F]>;
    /// `x · Wᵀ` for the output rows `rows` of the matmul weight `W` viewed as `[out, k]`: `x` is
    /// `[m, k]`, the result `[m, rows.len()]`.
    fn matmul(
        &self,
        weight: &str,
        rows: Range<usize>,
        x: &[F],
        m: usize,
        k: usize,
    ) -> Result<Vec<F>, String>;
}

/// Sees every row a matmul weight multiplies: `(weight, group, rows)` with `rows` `[m, k]`.
pub type ObserveFn<'o, F> = dyn FnMut(&str, usize, &[F], usize) + 'o;

/// An [`ObserveFn`] as a forward pass takes it.
pub type Observer<'a, F> = &'a mut dyn FnMut(&str, usize, &[F], usize);

/// `x · Wᵀ` with a fixed summation order: every sum in index order, no fused multiply-add.
pub fn matmul_reference<F: Real>(
    w: &[F],
    rows: Range<usize>,
    x: &[F],
    m: usize,
    k: usize,
) -> Vec<F> {
    let mut out = Vec::with_capacity(m * rows.len());
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for o in rows.clone() {
            let wr = &w[o * k..(o + 1) * k];
            let mut acc = F::ZERO;
            for j in 0..k {
                acc += xr[j] * wr[j];
            }
            out.push(acc);
        }
    }
    out
}

/// `x · Wᵀ` in f32 through the `gemm` crate, on this thread.
pub fn matmul_f32(w: &[f32], rows: Range<usize>, x: &[f32], m: usize, k: usize) -> Vec<f32> {
    let n = rows.len();
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return out;
    }
    if k == 0 {
        return out;
    }
    let w = &w[rows.start * k..rows.end * k];
    // dst [m, n] row-major; lhs x [m, k] row-major; rhs Wᵀ [k, n]: element (j, o) at w[o*k + j].
    // SAFETY: every pointer covers the extent the strides and sizes describe.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    out
}

/// Runs the graph on a batch `[n, input_shape...]` and returns its output.
pub fn forward<F: Real>(
    graph: &Graph,
    params: &dyn Params<F>,
    input: Tensor<F>,
    observe: Option<Observer<'_, F>>,
) -> Result<Tensor<F>, String> {
    forward_each(graph, params, input, observe, &mut |_, _| {})
}

/// [`forward`], calling `each(name, tensor)` with the input and every node's output.
pub fn forward_each<F: Real>(
    graph: &Graph,
    params: &dyn Params<F>,
    input: Tensor<F>,
    mut observe: Option<Observer<'_, F>>,
    each: &mut dyn FnMut(&str, &Tensor<F>),
) -> Result<Tensor<F>, String> {
    each(&graph.input, &input);
    let mut live: std::collections::BTreeMap<&str, Tensor<F>> = std::collections::BTreeMap::new();
    // How many reads each tensor has left, so it is dropped after its last.
    let mut reads: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for node in &graph.nodes {
        for i in &node.inputs {
            *reads.entry(i.as_str()).or_default() += 1;
        }
    }
    *reads.entry(graph.output.as_str()).or_default() += 1;
    live.insert(&graph.input, input);
    for node in &graph.nodes {
        let out = run_node(graph, node, params, &live, observe.as_deref_mut())
            .map_err(|e| format!("node `{}` ({}): {e}", node.name, node.op.name()))?;
        each(&node.outputs[0], &out);
        for i in &node.inputs {
            if let Some(left) = reads.get_mut(i.as_str()) {
                *left -= 1;
                if *left == 0 {
                    live.remove(i.as_str());
                }
            }
        }
        live.insert(&node.outputs[0], out);
    }
    live.remove(graph.output.as_str())
        .ok_or_else(|| "the graph's output was not computed".to_string())
}

/// An input of a node: an activation of the batch, or a weight broadcast over it.
enum Operand<'a, F> {
    Activation(&'a Tensor<F>),
    Weight(Vec<usize>, &'a [F]),
}

impl<F: Real> Operand<'_, F> {
    fn shape(&self) -> &[usize] {
        match self {
            Operand::Activation(t) => &t.shape,
            Operand::Weight(s, _) => s,
        }
    }
    fn data(&self) -> &[F] {
        match self {
            Operand::Activation(t) => &t.data,
            Operand::Weight(_, d) => d,
        }
    }
}

fn operand<'a, F: Real>(
    graph: &Graph,
    params: &'a dyn Params<F>,
    live: &'a std::collections::BTreeMap<&str, Tensor<F>>,
    name: &str,
) -> Result<Operand<'a, F>, String> {
    if let Some(t) = live.get(name) {
        return Ok(Operand::Activation(t));
    }
    let shape = graph
        .weights
        .get(name)
        .ok_or_else(|| format!("no tensor `{name}`"))?;
    let data = params
        .dense(name)
        .ok_or_else(|| format!("weight `{name}` is not available as values"))?;
    Ok(Operand::Weight(shape.clone(), data))
}

fn run_node<'o, F: Real>(
    graph: &Graph,
    node: &Node,
    params: &dyn Params<F>,
    live: &std::collections::BTreeMap<&str, Tensor<F>>,
    observe: Option<&mut ObserveFn<'o, F>>,
) -> Result<Tensor<F>, String> {
    let x = live
        .get(node.inputs[0].as_str())
        .ok_or_else(|| format!("input `{}` is not computed", node.inputs[0]))?;
    let n = x.shape[0];
    let out_shape = |graph: &Graph| -> Vec<usize> {
        let mut s = graph.shapes[&node.outputs[0]].clone();
        s[0] = n;
        s
    };
    Ok(match &node.op {
        Op::Conv(c) => {
            let bias = node
                .inputs
                .get(2)
                .map(|b| params.dense(b).ok_or("the bias is not available"))
                .transpose()?;
            conv2d(
                x,
                &node.inputs[1],
                &graph.weights[&node.inputs[1]],
                bias,
                c,
                params,
                observe,
            )?
        }
        Op::Gemm(g) => {
            let k = x.shape[1];
            let out = graph.weights[&node.inputs[1]][0];
            if let Some(observe) = observe {
                observe(&node.inputs[1], 0, &x.data, k);
            }
            let mut y = params.matmul(&node.inputs[1], 0..out, &x.data, n, k)?;
            let alpha = F::of(g.alpha as f64);
            if g.alpha != 1.0 {
                for v in &mut y {
                    *v = *v * alpha;
                }
            }
            let mut t = Tensor::new(vec![n, out], y);
            if let Some(c) = node.inputs.get(2) {
                let c = operand(graph, params, live, c)?;
                let beta = F::of(g.beta as f64);
                t = binary(&t.shape.clone(), &Operand::Activation(&t), &c, |a, b| {
                    a + beta * b
                });
            }
            t
        }
        Op::MatMul => {
            let b = operand(graph, params, live, &node.inputs[1])?;
            let shape = out_shape(graph);
            match b {
                Operand::Activation(b) => batched_matmul(x, b, shape)?,
                Operand::Weight(..) => {
                    return Err("a weight B belongs in a Gemm (transB: 1)".into());
                }
            }
        }
        Op::Add | Op::Mul => {
            let a = operand(graph, params, live, &node.inputs[0])?;
            let b = operand(graph, params, live, &node.inputs[1])?;
            let shape = out_shape(graph);
            if matches!(node.op, Op::Add) {
                binary(&shape, &a, &b, |p, q| p + q)
            } else {
                binary(&shape, &a, &b, |p, q| p * q)
            }
        }
        Op::Concat { axis } => {
            let parts: Vec<Operand<F>> = node
                .inputs
                .iter()
                .map(|i| operand(graph, params, live, i))
                .collect::<Result<_, _>>()?;
            concat(&parts, *axis, n)?
        }
        op if op.is_unary() => {
            let f = unary::<F>(op);
            Tensor::new(x.shape.clone(), x.data.iter().map(|&v| f(v)).collect())
        }
        Op::BatchNormalization { epsilon } => {
            let get = |i: usize| {
                params
                    .dense(&node.inputs[i])
                    .ok_or_else(|| format!("`{}` is not available", node.inputs[i]))
            };
            let (scale, beta, mean, var) = (get(1)?, get(2)?, get(3)?, get(4)?);
            let c = x.shape[1];
            let inner: usize = x.shape[2..].iter().product();
            let eps = F::of(*epsilon as f64);
            let mut data = x.data.clone();
            for (i, v) in data.iter_mut().enumerate() {
                let ch = (i / inner) % c;
                *v = (*v - mean[ch]) / (var[ch] + eps).sqrt() * scale[ch] + beta[ch];
            }
            Tensor::new(x.shape.clone(), data)
        }
        Op::MaxPool(p) => pool(x, p, out_shape(graph), true),
        Op::AveragePool(p) => pool(x, p, out_shape(graph), false),
        Op::GlobalAveragePool => {
            let c = x.shape[1];
            let inner: usize = x.shape[2..].iter().product();
            let denom = F::of(inner as f64);
            let mut data = Vec::with_capacity(n * c);
            for plane in x.data.chunks(inner) {
                let mut acc = F::ZERO;
                for &v in plane {
                    acc += v;
                }
                data.push(acc / denom);
            }
            Tensor::new(out_shape(graph), data)
        }
        Op::Flatten { .. }
        | Op::Reshape { .. }
        | Op::Squeeze { .. }
        | Op::Unsqueeze { .. }
        | Op::Identity => Tensor::new(out_shape(graph), x.data.clone()),
        Op::Transpose { perm } => transpose(x, perm),
        Op::Softmax { axis } => softmax(x, axis_of(*axis, x.shape.len())?),
        Op::LayerNormalization { axis, epsilon } => {
            let a = axis_of(*axis, x.shape.len())?;
            let inner: usize = x.shape[a..].iter().product();
            let normalized = x.shape[a..].to_vec();
            let scale = operand(graph, params, live, &node.inputs[1])?;
            let bias = node
                .inputs
                .get(2)
                .map(|b| operand(graph, params, live, b))
                .transpose()?;
            let expand = |o: &Operand<F>| -> Vec<F> {
                let mut full = vec![1; normalized.len() + 1];
                full[1..].copy_from_slice(&normalized);
                broadcast_to(&full, o.shape(), o.data())
            };
            let scale = expand(&scale);
            let bias = bias.as_ref().map(expand);
            let eps = F::of(*epsilon as f64);
            let denom = F::of(inner as f64);
            let mut data = Vec::with_capacity(x.data.len());
            for block in x.data.chunks(inner) {
                let mut mean = F::ZERO;
                for &v in block {
                    mean += v;
                }
                mean = mean / denom;
                let mut var = F::ZERO;
                for &v in block {
                    var += (v - mean) * (v - mean);
                }
                let inv = (var / denom + eps).sqrt();
                for (j, &v) in block.iter().enumerate() {
                    let y = (v - mean) / inv * scale[j];
                    data.push(match &bias {
                        Some(b) => y + b[j],
                        None => y,
                    });
                }
            }
            Tensor::new(x.shape.clone(), data)
        }
        Op::Pad { pads, value, mode } => {
            pad(x, pads, F::of(*value as f64), *mode, out_shape(graph))
        }
        other => return Err(format!("{} has no forward pass", other.name())),
    })
}

/// The elementwise function of a unary op.
fn unary<F: Real>(op: &Op) -> Box<dyn Fn(F) -> F + '_> {
    let half = F::of(0.5);
    match op {
        Op::Relu => Box::new(|v: F| v.max(F::ZERO)),
        Op::Clip { min, max } => {
            let (lo, hi) = (F::of(*min as f64), F::of(*max as f64));
            Box::new(move |v: F| v.max(lo).min(hi))
        }
        Op::LeakyRelu { alpha } => {
            let a = F::of(*alpha as f64);
            Box::new(move |v: F| if v < F::ZERO { a * v } else { v })
        }
        Op::HardSwish => {
            let (three, six) = (F::of(3.0), F::of(6.0));
            Box::new(move |v: F| v * (v + three).max(F::ZERO).min(six) / six)
        }
        Op::HardSigmoid { alpha, beta } => {
            let (a, b) = (F::of(*alpha as f64), F::of(*beta as f64));
            Box::new(move |v: F| (a * v + b).max(F::ZERO).min(F::ONE))
        }
        Op::Sigmoid => Box::new(|v: F| F::ONE / (F::ONE + (-v).exp())),
        Op::Tanh => Box::new(|v: F| v.tanh()),
        Op::Gelu { tanh: false } => {
            let r = F::of(std::f64::consts::FRAC_1_SQRT_2);
            Box::new(move |v: F| half * v * (F::ONE + (v * r).erf()))
        }
        Op::Gelu { tanh: true } => {
            let (c, k) = (F::of((2.0 / std::f64::consts::PI).sqrt()), F::of(0.044715));
            Box::new(move |v: F| half * v * (F::ONE + (c * (v + k * v * v * v)).tanh()))
        }
        Op::Silu => Box::new(|v: F| v / (F::ONE + (-v).exp())),
        Op::Erf => Box::new(|v: F| v.erf()),
        _ => Box::new(|v: F| v),
    }
}

/// Strides of a row-major shape.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// `data` of shape `from` broadcast (NumPy rules) to `to`.
fn broadcast_to<F: Real>(to: &[usize], from: &[usize], data: &[F]) -> Vec<F> {
    let rank = to.len();
    let pad = rank - from.len();
    let from_strides = strides(from);
    // The stride along each output axis: 0 where `from` broadcasts.
    let st: Vec<usize> = (0..rank)
        .map(|i| {
            if i < pad || from[i - pad] == 1 {
                0
            } else {
                from_strides[i - pad]
            }
        })
        .collect();
    let total = numel(to);
    let mut out = Vec::with_capacity(total);
    let mut idx = vec![0usize; rank];
    for _ in 0..total {
        let off: usize = idx.iter().zip(&st).map(|(i, s)| i * s).sum();
        out.push(data[off]);
        for a in (0..rank).rev() {
            idx[a] += 1;
            if idx[a] < to[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    out
}

/// An elementwise op of two operands, broadcast to `shape` (the batch included).
fn binary<F: Real>(
    shape: &[usize],
    a: &Operand<F>,
    b: &Operand<F>,
    f: impl Fn(F, F) -> F,
) -> Tensor<F> {
    let same = |o: &Operand<F>| o.shape() == shape;
    let av = if same(a) {
        std::borrow::Cow::Borrowed(a.data())
    } else {
        std::borrow::Cow::Owned(broadcast_to(shape, a.shape(), a.data()))
    };
    let bv = if same(b) {
        std::borrow::Cow::Borrowed(b.data())
    } else {
        std::borrow::Cow::Owned(broadcast_to(shape, b.shape(), b.data()))
    };
    Tensor::new(
        shape.to_vec(),
        av.iter().zip(bv.iter()).map(|(&p, &q)| f(p, q)).collect(),
    )
}

fn concat<F: Real>(parts: &[Operand<F>], axis: i64, n: usize) -> Result<Tensor<F>, String> {
    let shape_of = |o: &Operand<F>| -> Vec<usize> {
        let mut s = o.shape().to_vec();
        if matches!(o, Operand::Weight(..)) && s.first() == Some(&1) {
            s[0] = n;
        }
        s
    };
    let first = shape_of(&parts[0]);
    let a = axis_of(axis, first.len())?;
    let outer: usize = first[..a].iter().product();
    let mut out_shape = first.clone();
    out_shape[a] = parts.iter().map(|p| shape_of(p)[a]).sum();
    let mut data = Vec::with_capacity(numel(&out_shape));
    let blocks: Vec<(usize, Vec<F>)> = parts
        .iter()
        .map(|p| {
            let s = shape_of(p);
            let inner: usize = s[a..].iter().product();
            let values = if p.shape() == s.as_slice() {
                p.data().to_vec()
            } else {
                broadcast_to(&s, p.shape(), p.data())
            };
            (inner, values)
        })
        .collect();
    for o in 0..outer {
        for (inner, values) in &blocks {
            data.extend_from_slice(&values[o * inner..(o + 1) * inner]);
        }
    }
    Ok(Tensor::new(out_shape, data))
}

fn transpose<F: Real>(x: &Tensor<F>, perm: &[usize]) -> Tensor<F> {
    let out_shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let in_strides = strides(&x.shape);
    let st: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let rank = out_shape.len();
    let mut idx = vec![0usize; rank];
    let mut data = Vec::with_capacity(x.data.len());
    for _ in 0..x.data.len() {
        let off: usize = idx.iter().zip(&st).map(|(i, s)| i * s).sum();
        data.push(x.data[off]);
        for a in (0..rank).rev() {
            idx[a] += 1;
            if idx[a] < out_shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    Tensor::new(out_shape, data)
}

fn softmax<F: Real>(x: &Tensor<F>, axis: usize) -> Tensor<F> {
    let len = x.shape[axis];
    let inner: usize = x.shape[axis + 1..].iter().product();
    let outer: usize = x.shape[..axis].iter().product();
    let mut data = x.data.clone();
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| (o * len + j) * inner + i;
            let mut max = data[at(0)];
            for j in 1..len {
                max = max.max(data[at(j)]);
            }
            let mut sum = F::ZERO;
            for j in 0..len {
                let e = (data[at(j)] - max).exp();
                data[at(j)] = e;
                sum += e;
            }
            for j in 0..len {
                data[at(j)] = data[at(j)] / sum;
            }
        }
    }
    Tensor::new(x.shape.clone(), data)
}

fn pad<F: Real>(
    x: &Tensor<F>,
    pads: &[i64],
    value: F,
    mode: super::graph::PadMode,
    out_shape: Vec<usize>,
) -> Tensor<F> {
    use super::graph::PadMode;
    let rank = x.shape.len();
    if mode != PadMode::Constant {
        // Every output cell reads an input cell: mirrored, clamped or wrapped.
        let in_strides = strides(&x.shape);
        let mut idx = vec![0usize; rank];
        let mut data = Vec::with_capacity(numel(&out_shape));
        for _ in 0..numel(&out_shape) {
            let mut off = 0usize;
            for a in 0..rank {
                let d = x.shape[a] as i64;
                let mut p = idx[a] as i64 - pads[a];
                p = match mode {
                    PadMode::Edge => p.clamp(0, d - 1),
                    PadMode::Wrap => p.rem_euclid(d),
                    _ => {
                        // reflect: ... 2 1 | 0 1 2 | 1 0 ...
                        let period = 2 * (d - 1).max(1);
                        let q = p.rem_euclid(period);
                        if q >= d { period - q } else { q }
                    }
                };
                off += p as usize * in_strides[a];
            }
            data.push(x.data[off]);
            for a in (0..rank).rev() {
                idx[a] += 1;
                if idx[a] < out_shape[a] {
                    break;
                }
                idx[a] = 0;
            }
        }
        return Tensor::new(out_shape, data);
    }
    let mut data = vec![value; numel(&out_shape)];
    let out_strides = strides(&out_shape);
    let mut idx = vec![0usize; rank];
    for &v in &x.data {
        // Where this input element lands, if inside the (possibly cropped) output.
        let mut off = 0usize;
        let mut inside = true;
        for a in 0..rank {
            let p = idx[a] as i64 + pads[a];
            if p < 0 || p >= out_shape[a] as i64 {
                inside = false;
                break;
            }
            off += p as usize * out_strides[a];
        }
        if inside {
            data[off] = v;
        }
        for a in (0..rank).rev() {
            idx[a] += 1;
            if idx[a] < x.shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    Tensor::new(out_shape, data)
}

/// Max or average pooling with pads, dilations and ceil mode. An average divides by the cells
/// of the window inside the input, or, with `count_include_pad`, inside the padded input
/// (never the part of a ceil-mode window past the end padding).
fn pool<F: Real>(x: &Tensor<F>, p: &Pool, out_shape: Vec<usize>, max: bool) -> Tensor<F> {
    let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (oh, ow) = (out_shape[2], out_shape[3]);
    let [kh, kw] = p.kernel_shape;
    let [sh, sw] = p.strides;
    let [dh, dw] = p.dilations;
    let (pt, pl, pb, pr) = (
        p.pads[0] as isize,
        p.pads[1] as isize,
        p.pads[2] as isize,
        p.pads[3] as isize,
    );
    let mut data = Vec::with_capacity(n * c * oh * ow);
    for plane in x.data.chunks(h * w) {
        for oy in 0..oh {
            for ox in 0..ow {
                let y0 = (oy * sh) as isize - pt;
                let x0 = (ox * sw) as isize - pl;
                let mut acc = if max { None } else { Some(F::ZERO) };
                let mut best: Option<F> = None;
                let mut count = 0usize;
                let mut padded_count = 0usize;
                for ky in 0..kh {
                    let iy = y0 + (ky * dh) as isize;
                    for kx in 0..kw {
                        let ix = x0 + (kx * dw) as isize;
                        if iy >= -pt && iy < h as isize + pb && ix >= -pl && ix < w as isize + pr {
                            padded_count += 1;
                        }
                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                            continue;
                        }
                        let v = plane[iy as usize * w + ix as usize];
                        count += 1;
                        if max {
                            best = Some(best.map_or(v, |b: F| b.max(v)));
                        } else if let Some(a) = acc.as_mut() {
                            *a += v;
                        }
                    }
                }
                data.push(if max {
                    best.unwrap_or(F::ZERO)
                } else {
                    let d = if p.count_include_pad {
                        padded_count
                    } else {
                        count
                    };
                    acc.unwrap_or(F::ZERO) / F::of(d.max(1) as f64)
                });
            }
        }
    }
    Tensor::new(out_shape, data)
}

/// `[..., m, k] · [..., k, p]` of two activations.
fn batched_matmul<F: Real>(
    a: &Tensor<F>,
    b: &Tensor<F>,
    out_shape: Vec<usize>,
) -> Result<Tensor<F>, String> {
    let r = out_shape.len();
    let (m, k, p) = (a.shape[r - 2], a.shape[r - 1], b.shape[b.shape.len() - 1]);
    let batch: usize = out_shape[..r - 2].iter().product();
    let mut prefix = out_shape[..r - 2].to_vec();
    let a_full = {
        let mut s = prefix.clone();
        s.extend([m, k]);
        broadcast_to(&s, &a.shape, &a.data)
    };
    prefix.extend([k, p]);
    let b_full = broadcast_to(&prefix, &b.shape, &b.data);
    let mut data = Vec::with_capacity(batch * m * p);
    for bi in 0..batch {
        let am = &a_full[bi * m * k..(bi + 1) * m * k];
        let bm = &b_full[bi * k * p..(bi + 1) * k * p];
        for i in 0..m {
            for j in 0..p {
                let mut acc = F::ZERO;
                for t in 0..k {
                    acc += am[i * k + t] * bm[t * p + j];
                }
                data.push(acc);
            }
        }
    }
    Ok(Tensor::new(out_shape, data))
}

/// A 2-D convolution of a batch: per group, im2col patches `[n·oh·ow, cpg·kh·kw]` times the
/// group's weight rows, or a direct loop for a depthwise weight available as values.
fn conv2d<'o, F: Real>(
    x: &Tensor<F>,
    weight: &str,
    wshape: &[usize],
    bias: Option<&[F]>,
    c: &super::graph::Conv,
    params: &dyn Params<F>,
    observe: Option<&mut ObserveFn<'o, F>>,
) -> Result<Tensor<F>, String> {
    let (n, cin, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let (cout, cpg, kh, kw) = (wshape[0], wshape[1], wshape[2], wshape[3]);
    let g = c.group;
    let opg = cout / g;
    let [sh, sw] = c.strides;
    let [dh, dw] = c.dilations;
    let (pt, pl) = (c.pads[0] as isize, c.pads[1] as isize);
    let oh = super::graph::window_out(h, c.pads[0], c.pads[2], kh, sh, dh, false).unwrap_or(0);
    let ow = super::graph::window_out(w, c.pads[1], c.pads[3], kw, sw, dw, false).unwrap_or(0);
    let k = cpg * kh * kw;
    let positions = oh * ow;
    let mut out = vec![F::ZERO; n * cout * positions];
    let at = |oy: usize, ky: usize| (oy * sh) as isize - pt + (ky * dh) as isize;
    let atx = |ox: usize, kx: usize| (ox * sw) as isize - pl + (kx * dw) as isize;
    // Depthwise with plain weights: a direct loop, no patches.
    if let (1, Some(wv), None) = (cpg, params.dense(weight), observe.as_ref()) {
        for b in 0..n {
            for o in 0..cout {
                let ic = o / opg;
                let plane = &x.data[(b * cin + ic) * h * w..(b * cin + ic + 1) * h * w];
                let wk = &wv[o * kh * kw..(o + 1) * kh * kw];
                let dst = &mut out[(b * cout + o) * positions..(b * cout + o + 1) * positions];
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = F::ZERO;
                        for ky in 0..kh {
                            let iy = at(oy, ky);
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = atx(ox, kx);
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                acc += plane[iy as usize * w + ix as usize] * wk[ky * kw + kx];
                            }
                        }
                        dst[oy * ow + ox] = acc + bias.map_or(F::ZERO, |b| b[o]);
                    }
                }
            }
        }
        return Ok(Tensor::new(vec![n, cout, oh, ow], out));
    }
    let mut observe = observe;
    let mut cols = vec![F::ZERO; n * positions * k];
    for gi in 0..g {
        cols.iter_mut().for_each(|v| *v = F::ZERO);
        for b in 0..n {
            for ci in 0..cpg {
                let ch = gi * cpg + ci;
                let plane = &x.data[(b * cin + ch) * h * w..(b * cin + ch + 1) * h * w];
                for oy in 0..oh {
                    for ky in 0..kh {
                        let iy = at(oy, ky);
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for ox in 0..ow {
                            let row = (b * positions + oy * ow + ox) * k + (ci * kh + ky) * kw;
                            for kx in 0..kw {
                                let ix = atx(ox, kx);
                                if ix >= 0 && ix < w as isize {
                                    cols[row + kx] = plane[iy as usize * w + ix as usize];
                                }
                            }
                        }
                    }
                }
            }
        }
        if let Some(observe) = observe.as_mut() {
            observe(weight, gi, &cols, k);
        }
        let y = params.matmul(weight, gi * opg..(gi + 1) * opg, &cols, n * positions, k)?;
        for b in 0..n {
            for pos in 0..positions {
                let src = &y[(b * positions + pos) * opg..(b * positions + pos + 1) * opg];
                for (oi, &v) in src.iter().enumerate() {
                    let o = gi * opg + oi;
                    out[(b * cout + o) * positions + pos] = v + bias.map_or(F::ZERO, |b| b[o]);
                }
            }
        }
    }
    Ok(Tensor::new(vec![n, cout, oh, ow], out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Plain(BTreeMap<String, Vec<f64>>);

    impl Params<f64> for Plain {
        fn dense(&self, name: &str) -> Option<&[f64]> {
            self.0.get(name).map(Vec::as_slice)
        }
        fn matmul(
            &self,
            w: &str,
            rows: Range<usize>,
            x: &[f64],
            m: usize,
            k: usize,
        ) -> Result<Vec<f64>, String> {
            Ok(matmul_reference(&self.0[w], rows, x, m, k))
        }
    }

    #[test]
    fn gemm_crate_matches_the_reference() {
        let w: Vec<f32> = (0..6 * 5).map(|i| (i as f32 * 0.37).sin()).collect();
        let x: Vec<f32> = (0..4 * 5).map(|i| (i as f32 * 0.11).cos()).collect();
        let a = matmul_f32(&w, 1..5, &x, 4, 5);
        let b = matmul_reference(&w, 1..5, &x, 4, 5);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-5, "{p} {q}");
        }
    }

    #[test]
    fn grouped_conv_equals_separate_convs_and_depthwise_takes_the_direct_path() {
        use crate::model::graph::{Graph, RawNode};
        let mut weights = BTreeMap::new();
        weights.insert("w".to_string(), vec![4, 1, 3, 3]);
        let raw = vec![RawNode {
            op: "Conv".into(),
            name: "c".into(),
            inputs: vec!["x".into(), "w".into()],
            outputs: vec!["y".into()],
            attrs: serde_json::json!({"kernel_shape": [3, 3], "pads": [1, 0, 1, 2], "group": 2, "dilations": [1, 2]})
                .as_object()
                .unwrap()
                .clone()
                .into_iter()
                .collect(),
        }];
        let g = Graph::build("x", &[2, 5, 6], None, &raw, &weights, None).unwrap();
        let wv: Vec<f64> = (0..36).map(|i| i as f64 * 0.1 - 1.0).collect();
        let xv: Vec<f64> = (0..60).map(|i| (i as f64 * 0.7).sin()).collect();
        let params = Plain([("w".to_string(), wv.clone())].into_iter().collect());
        let direct = forward(&g, &params, Tensor::new(vec![1, 2, 5, 6], xv.clone()), None).unwrap();
        // With an observer the im2col path runs: the same numbers.
        let mut seen = 0;
        let mut obs = |_: &str, _: usize, _: &[f64], _: usize| seen += 1;
        let patches = forward(
            &g,
            &params,
            Tensor::new(vec![1, 2, 5, 6], xv.clone()),
            Some(&mut obs),
        )
        .unwrap();
        assert_eq!(seen, 2);
        assert_eq!(direct.shape, vec![1, 4, 5, 4]);
        for (a, b) in direct.data.iter().zip(&patches.data) {
            assert!((a - b).abs() < 1e-12);
        }
        // Output channel 3 is group 1 (input channel 1); check one value by hand: oy 0, ox 0.
        let mut acc = 0.0;
        for ky in 0..3 {
            let iy = ky as isize - 1;
            for kx in 0..3 {
                let ix = (kx * 2) as isize; // pad left 0, dilation 2
                if (0..5).contains(&iy) && ix < 6 {
                    acc += xv[30 + iy as usize * 6 + ix as usize] * wv[27 + ky * 3 + kx];
                }
            }
        }
        assert!((direct.data[3 * 20] - acc).abs() < 1e-12);
    }
}

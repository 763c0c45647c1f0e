//! ONNX import (SPEC.md, "`import`"): a `model.onnx` from `torch.onnx.export`, tf2onnx or
//! tflite2onnx in, an edgebuild graph architecture and safetensors weights out.
//!
//! The protobuf is decoded by prost code generated once from the `onnx` package's `onnx.proto`
//! and committed ([`proto`]), so a build needs no `protoc`. The importer reads inline and
//! external initializers, accepts opsets 11 to 21 of the default domain, folds every node whose
//! inputs are constants (the `Shape → Gather → Concat → Reshape` chains exporters write among
//! them), folds a BatchNormalization into the Conv or Gemm before it, turns a Transpose that
//! only moves axes of size 1 into a view and drops views that change nothing, and names what it
//! keeps after the op (`conv3`, `relu4`). The [`Imported::report`] lists what was folded,
//! removed and kept. Everything it refuses is an error that names the node, the op and the
//! opset. No size read from the file is trusted: dimensions are checked for overflow and data
//! lengths against the bytes actually there.

#[allow(clippy::all, clippy::pedantic, rustdoc::all, missing_docs, dead_code)]
pub mod proto;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};

use prost::Message;

use crate::model::Architecture;
use crate::model::graph::{self, Op, RawNode};
use proto::tensor_proto::DataType;

/// The opsets of the default domain the importer reads.
pub const OPSETS: std::ops::RangeInclusive<i64> = 11..=21;
/// The largest `.onnx` file (or external data file) read: 2 GiB.
pub const MAX_FILE_BYTES: u64 = 2 << 30;

/// What the `import` op's params say.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportOptions {
    /// The model's name (default: the ONNX graph's name).
    #[serde(default)]
    pub name: Option<String>,
    /// The graph input to use, when there are several.
    #[serde(default)]
    pub input: Option<String>,
    /// The graph output to use, when there are several.
    #[serde(default)]
    pub output: Option<String>,
    /// One sample's shape (without the batch): required when the ONNX input has dynamic
    /// dimensions besides the batch.
    #[serde(default)]
    pub input_shape: Option<Vec<usize>>,
    /// Class names, in output order.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// An imported model.
pub struct Imported {
    pub arch: Architecture,
    /// Every weight: shape and f32 values.
    pub weights: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// What was folded, removed and kept (the `report` output).
    pub report: serde_json::Value,
}

/// A constant's values.
#[derive(Debug, Clone, PartialEq)]
enum Data {
    F(Vec<f32>),
    I(Vec<i64>),
}

#[derive(Debug, Clone, PartialEq)]
struct Const {
    shape: Vec<usize>,
    data: Data,
}

impl Const {
    fn floats(&self) -> Vec<f32> {
        match &self.data {
            Data::F(v) => v.clone(),
            Data::I(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    fn ints(&self) -> Result<Vec<i64>, String> {
        match &self.data {
            Data::I(v) => Ok(v.clone()),
            Data::F(v) => {
                if v.iter().all(|x| x.fract() == 0.0 && x.is_finite()) {
                    Ok(v.iter().map(|&x| x as i64).collect())
                } else {
                    Err("expects integers, got floats".into())
                }
            }
        }
    }
    fn len(&self) -> usize {
        match &self.data {
            Data::F(v) => v.len(),
            Data::I(v) => v.len(),
        }
    }
    fn scalar_f(&self) -> Result<f32, String> {
        if self.len() != 1 {
            return Err(format!("expects a scalar, got shape {:?}", self.shape));
        }
        Ok(self.floats()[0])
    }
}

fn checked_numel(dims: &[usize]) -> Result<usize, String> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("dimensions {dims:?} overflow"))
}

fn dims_of(t: &proto::TensorProto) -> Result<Vec<usize>, String> {
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d} is negative")))
        .collect::<Result<_, _>>()?;
    checked_numel(&dims)?;
    Ok(dims)
}

/// Where an external tensor's bytes are: `location` relative to the model's directory, never
/// outside it.
fn external_bytes(t: &proto::TensorProto, dir: &Path, need: usize) -> Result<Vec<u8>, String> {
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for kv in &t.external_data {
        match kv.key() {
            "location" => location = Some(kv.value().to_string()),
            "offset" => {
                offset = kv
                    .value()
                    .parse()
                    .map_err(|_| format!("external offset `{}` is not a number", kv.value()))?
            }
            "length" => {
                length = Some(
                    kv.value()
                        .parse::<u64>()
                        .map_err(|_| format!("external length `{}` is not a number", kv.value()))?,
                )
            }
            _ => {}
        }
    }
    let location = location.ok_or("external data without a `location`")?;
    let rel = Path::new(&location);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!(
            "external data `{location}` is not a file beside the model (no absolute paths, no `..`)"
        ));
    }
    let path = dir.join(rel);
    let size = std::fs::metadata(&path)
        .map_err(|e| format!("external data file `{location}` is missing ({e}): it must lie beside the .onnx file"))?
        .len();
    let length = length.unwrap_or(need as u64);
    if length != need as u64 {
        return Err(format!(
            "external data `{location}` gives {length} bytes for a tensor of {need}"
        ));
    }
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(format!(
            "external data `{location}` is {size} bytes; the tensor wants {length} at offset {offset}"
        ));
    }
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(&path).map_err(|e| format!("`{location}`: {e}"))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| format!("`{location}`: {e}"))?;
    let mut bytes = vec![0u8; need];
    file.read_exact(&mut bytes)
        .map_err(|e| format!("`{location}`: {e}"))?;
    Ok(bytes)
}

/// A tensor's values as f32 or i64, from its typed fields, raw bytes or external data.
fn read_tensor(t: &proto::TensorProto, dir: &Path) -> Result<Const, String> {
    let shape = dims_of(t)?;
    let n = checked_numel(&shape)?;
    let dtype = DataType::try_from(t.data_type())
        .map_err(|_| format!("data type {} is not an ONNX type", t.data_type()))?;
    let width = match dtype {
        DataType::Float | DataType::Int32 => 4,
        DataType::Double | DataType::Int64 => 8,
        DataType::Float16 | DataType::Bfloat16 | DataType::Int16 | DataType::Uint16 => 2,
        DataType::Int8 | DataType::Uint8 | DataType::Bool => 1,
        other => {
            return Err(format!(
                "data type {} is not read by edgebuild (it reads float, float16, bfloat16, double, int8/16/32/64, uint8/16 and bool)",
                other.as_str_name()
            ));
        }
    };
    let external = t.data_location() == proto::tensor_proto::DataLocation::External;
    let need = n
        .checked_mul(width)
        .ok_or_else(|| format!("dimensions {shape:?} overflow"))?;
    let raw = if external {
        Some(external_bytes(t, dir, need)?)
    } else {
        t.raw_data.clone()
    };
    let data = if let Some(raw) = raw {
        if raw.len() != need {
            return Err(format!(
                "holds {} bytes of data for {n} values of {} bytes",
                raw.len(),
                width
            ));
        }
        let chunks = raw.chunks_exact(width);
        match dtype {
            DataType::Float => Data::F(
                chunks
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            ),
            DataType::Double => Data::F(
                chunks
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
            ),
            DataType::Float16 => Data::F(
                chunks
                    .map(|c| half::f16::from_le_bytes(c.try_into().expect("2 bytes")).to_f32())
                    .collect(),
            ),
            DataType::Bfloat16 => Data::F(
                chunks
                    .map(|c| half::bf16::from_le_bytes(c.try_into().expect("2 bytes")).to_f32())
                    .collect(),
            ),
            DataType::Int64 => Data::I(
                chunks
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            ),
            DataType::Int32 => Data::I(
                chunks
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                    .collect(),
            ),
            DataType::Int16 => Data::I(
                chunks
                    .map(|c| i16::from_le_bytes(c.try_into().expect("2 bytes")) as i64)
                    .collect(),
            ),
            DataType::Uint16 => Data::I(
                chunks
                    .map(|c| u16::from_le_bytes(c.try_into().expect("2 bytes")) as i64)
                    .collect(),
            ),
            DataType::Int8 => Data::I(chunks.map(|c| c[0] as i8 as i64).collect()),
            DataType::Uint8 | DataType::Bool => Data::I(chunks.map(|c| c[0] as i64).collect()),
            _ => unreachable!("widths are only given for the types above"),
        }
    } else {
        let (data, got) = match dtype {
            DataType::Float => (Data::F(t.float_data.clone()), t.float_data.len()),
            DataType::Double => (
                Data::F(t.double_data.iter().map(|&v| v as f32).collect()),
                t.double_data.len(),
            ),
            DataType::Int64 => (Data::I(t.int64_data.clone()), t.int64_data.len()),
            DataType::Float16 | DataType::Bfloat16 => {
                let to = |v: i32| {
                    let bits = v as u16;
                    if dtype == DataType::Float16 {
                        half::f16::from_bits(bits).to_f32()
                    } else {
                        half::bf16::from_bits(bits).to_f32()
                    }
                };
                (
                    Data::F(t.int32_data.iter().map(|&v| to(v)).collect()),
                    t.int32_data.len(),
                )
            }
            _ => (
                Data::I(t.int32_data.iter().map(|&v| v as i64).collect()),
                t.int32_data.len(),
            ),
        };
        if got != n {
            return Err(format!(
                "holds {got} values for shape {shape:?} ({n} values)"
            ));
        }
        data
    };
    if let Data::F(v) = &data
        && let Some(i) = v.iter().position(|x| !x.is_finite())
    {
        return Err(format!("value {i} is {} (not finite)", v[i]));
    }
    Ok(Const { shape, data })
}

/// An ONNX attribute by name.
struct Attrs<'a>(&'a [proto::AttributeProto]);

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&proto::AttributeProto> {
        self.0.iter().find(|a| a.name() == name)
    }
    fn int(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i())
    }
    fn float(&self, name: &str, default: f32) -> f32 {
        self.get(name).map_or(default, |a| a.f())
    }
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }
    fn string(&self, name: &str) -> Option<String> {
        self.get(name)
            .and_then(|a| a.s.as_ref())
            .map(|s| String::from_utf8_lossy(s).into_owned())
    }
}

fn usizes(v: &[i64], what: &str) -> Result<Vec<usize>, String> {
    v.iter()
        .map(|&x| usize::try_from(x).map_err(|_| format!("{what} has a negative value {x}")))
        .collect()
}

fn pair(v: Option<Vec<i64>>, default: usize, what: &str) -> Result<[usize; 2], String> {
    match v {
        None => Ok([default, default]),
        Some(v) => {
            let u = usizes(&v, what)?;
            match u[..] {
                [a, b] => Ok([a, b]),
                _ => Err(format!(
                    "{what} {v:?}: only 2-D convolutions and pools are supported"
                )),
            }
        }
    }
}

/// Explicit pads of a 2-D window from `pads` or `auto_pad`.
fn window_pads(
    attrs: &Attrs,
    input: &[usize],
    kernel: [usize; 2],
    strides: [usize; 2],
    dilations: [usize; 2],
) -> Result<[usize; 4], String> {
    let auto = attrs.string("auto_pad").unwrap_or_else(|| "NOTSET".into());
    match auto.as_str() {
        "NOTSET" => match attrs.ints("pads") {
            None => Ok([0; 4]),
            Some(p) => {
                let u = usizes(&p, "pads")?;
                match u[..] {
                    [t, l, b, r] => Ok([t, l, b, r]),
                    _ => Err(format!("pads {p:?}: only 2-D windows are supported")),
                }
            }
        },
        "VALID" => Ok([0; 4]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut out = [0; 4];
            for a in 0..2 {
                let size = input[2 + a];
                let effective = dilations[a] * (kernel[a] - 1) + 1;
                let total =
                    ((size.div_ceil(strides[a]) - 1) * strides[a] + effective).saturating_sub(size);
                let (begin, end) = if auto == "SAME_UPPER" {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                };
                out[a] = begin;
                out[a + 2] = end;
            }
            Ok(out)
        }
        other => Err(format!(
            "auto_pad `{other}` is not NOTSET, VALID, SAME_UPPER or SAME_LOWER"
        )),
    }
}

/// The ops the importer converts (besides constants folded away), for error messages.
pub const SUPPORTED: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Div",
    "Dropout",
    "Erf",
    "Flatten",
    "Gather",
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
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Tanh",
    "Transpose",
    "Unsqueeze",
];

/// The state of a conversion.
struct Converter {
    dir: std::path::PathBuf,
    opset: i64,
    /// Constants by ONNX name.
    consts: BTreeMap<String, Const>,
    /// Activations by ONNX name: our tensor name and shape (batch 1).
    acts: BTreeMap<String, (String, Vec<usize>)>,
    nodes: Vec<RawNode>,
    weights: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Per op, how many nodes got its name so far.
    counters: BTreeMap<String, usize>,
    folded: Vec<serde_json::Value>,
    removed: Vec<serde_json::Value>,
    renamed: BTreeMap<String, String>,
}

/// An input of an ONNX node: a constant, or an activation (our name, shape).
enum In<'a> {
    Const(&'a Const),
    Act(&'a str, &'a [usize]),
}

impl Converter {
    fn fresh(&mut self, op: &str) -> String {
        let base = op.to_lowercase();
        let n = self.counters.entry(base.clone()).or_default();
        let name = format!("{base}{n}");
        *n += 1;
        name
    }

    fn input(&self, name: &str) -> Result<In<'_>, String> {
        if let Some(c) = self.consts.get(name) {
            return Ok(In::Const(c));
        }
        if let Some((ours, shape)) = self.acts.get(name) {
            return Ok(In::Act(ours, shape));
        }
        Err(format!(
            "input `{name}` is not produced before this node (ONNX graphs are in topological order)"
        ))
    }

    fn weight(&mut self, name: String, shape: Vec<usize>, values: Vec<f32>) -> String {
        let shape = if shape.is_empty() { vec![1] } else { shape };
        self.weights.insert(name.clone(), (shape, values));
        name
    }

    /// Adds a node whose output is the activation `onnx_out`.
    fn emit(
        &mut self,
        op: Op,
        attrs: serde_json::Value,
        name: String,
        inputs: Vec<String>,
        onnx_out: &str,
    ) -> Result<(), String> {
        let in_shapes: Vec<(Vec<usize>, bool)> = inputs
            .iter()
            .map(|i| {
                self.weights
                    .get(i)
                    .map(|(s, _)| (s.clone(), true))
                    .or_else(|| {
                        self.acts
                            .values()
                            .find(|(ours, _)| ours == i)
                            .map(|(_, s)| (s.clone(), false))
                    })
                    .ok_or_else(|| format!("internal: no tensor `{i}`"))
            })
            .collect::<Result<_, _>>()?;
        let shape = graph::output_shape(&op, &in_shapes)?;
        self.nodes.push(RawNode {
            op: op.name().to_string(),
            name: name.clone(),
            inputs,
            outputs: vec![name.clone()],
            attrs: attrs
                .as_object()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        });
        self.acts.insert(onnx_out.to_string(), (name, shape));
        Ok(())
    }

    /// The activation behind an input, or an error when it is a constant.
    fn act(&self, name: &str) -> Result<(String, Vec<usize>), String> {
        match self.input(name)? {
            In::Act(n, s) => Ok((n.to_string(), s.to_vec())),
            In::Const(_) => Err(format!(
                "input `{name}` is a constant where an activation is expected"
            )),
        }
    }

    fn constant(&self, name: &str) -> Result<&Const, String> {
        match self.input(name)? {
            In::Const(c) => Ok(c),
            In::Act(..) => Err(format!(
                "input `{name}` must be a constant (edgebuild needs it when importing)"
            )),
        }
    }

    /// An optional input (`""` or missing means absent).
    fn optional(node: &proto::NodeProto, i: usize) -> Option<&str> {
        node.input
            .get(i)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    fn node(&mut self, node: &proto::NodeProto) -> Result<(), String> {
        let op = node.op_type();
        let attrs = Attrs(&node.attribute);
        if node.output.is_empty() {
            return Err("has no output".into());
        }
        let out = node.output[0].clone();
        let json = |v: serde_json::Value| v;
        // Constants in, constant out: fold.
        let all_const = node
            .input
            .iter()
            .filter(|i| !i.is_empty())
            .all(|i| self.consts.contains_key(i));
        if (op == "Constant" || (all_const && !node.input.is_empty()) || op == "Shape")
            && let Some(value) = self.fold(node)?
        {
            self.folded
                .push(serde_json::json!({"node": node.name(), "op": op}));
            self.consts.insert(out, value);
            return Ok(());
        }
        // The inputs each op reads by position: too few is an error, never out of bounds.
        let needs = match op {
            "Conv" | "Gemm" | "MatMul" | "Reshape" | "Add" | "Sub" | "Mul" | "Div" => 2,
            "Constant" => 0,
            _ => 1,
        };
        if node.input.len() < needs {
            return Err(format!(
                "has {} input(s); {op} reads at least {needs}",
                node.input.len()
            ));
        }
        match op {
            "Identity" | "Dropout" => {
                let (ours, shape) = self.act(&node.input[0])?;
                self.acts.insert(out, (ours, shape));
                self.removed.push(serde_json::json!({"node": node.name(), "op": op, "why": "an identity at inference"}));
            }
            "Conv" => {
                let (x, xs) = self.act(&node.input[0])?;
                let w = self.constant(&node.input[1])?.clone();
                if w.shape.len() != 4 {
                    return Err(format!(
                        "weight shape {:?}: only 2-D convolutions are supported",
                        w.shape
                    ));
                }
                let kernel = match attrs.ints("kernel_shape") {
                    Some(k) => pair(Some(k), 1, "kernel_shape")?,
                    None => [w.shape[2], w.shape[3]],
                };
                let strides = pair(attrs.ints("strides"), 1, "strides")?;
                let dilations = pair(attrs.ints("dilations"), 1, "dilations")?;
                let pads = window_pads(&attrs, &xs, kernel, strides, dilations)?;
                let name = self.fresh("conv");
                let wn = self.weight(format!("{name}.weight"), w.shape.clone(), w.floats());
                let mut inputs = vec![x, wn];
                if let Some(b) = Self::optional(node, 2) {
                    let b = self.constant(b)?.clone();
                    inputs.push(self.weight(format!("{name}.bias"), b.shape.clone(), b.floats()));
                }
                let attrs = json(serde_json::json!({
                    "kernel_shape": kernel, "strides": strides, "pads": pads,
                    "dilations": dilations, "group": attrs.int("group", 1),
                }));
                let typed = Op::parse(
                    "Conv",
                    &attrs
                        .as_object()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                )?;
                self.emit(typed, attrs, name, inputs, &out)?;
            }
            "Gemm" | "MatMul" => {
                let (a, as_) = self.act(&node.input[0])?;
                let (trans_a, trans_b, alpha, beta) = if op == "Gemm" {
                    (
                        attrs.int("transA", 0) != 0,
                        attrs.int("transB", 0) != 0,
                        attrs.float("alpha", 1.0),
                        attrs.float("beta", 1.0),
                    )
                } else {
                    (false, false, 1.0, 1.0)
                };
                if trans_a {
                    return Err("transA: 1 is not supported (A is the batch of samples)".into());
                }
                match self.input(&node.input[1])? {
                    In::Const(b) => {
                        let b = b.clone();
                        if b.shape.len() != 2 {
                            return Err(format!(
                                "B has shape {:?}; a weight B must be 2-D",
                                b.shape
                            ));
                        }
                        if as_.len() != 2 {
                            return Err(format!(
                                "multiplies a rank-{} input by a weight; edgebuild supports 2-D inputs here (flatten first)",
                                as_.len()
                            ));
                        }
                        // Stored as [out, k]: rows of k values, like a PyTorch linear weight.
                        let (rows, cols) = (b.shape[0], b.shape[1]);
                        let values = b.floats();
                        let (shape, values) = if trans_b {
                            (vec![rows, cols], values)
                        } else {
                            let mut t = vec![0f32; rows * cols];
                            for r in 0..rows {
                                for c in 0..cols {
                                    t[c * rows + r] = values[r * cols + c];
                                }
                            }
                            (vec![cols, rows], t)
                        };
                        let name = self.fresh("gemm");
                        let wn = self.weight(format!("{name}.weight"), shape, values);
                        let mut inputs = vec![a, wn];
                        if let Some(c) = Self::optional(node, 2) {
                            let c = self.constant(c)?.clone();
                            inputs.push(self.weight(
                                format!("{name}.bias"),
                                c.shape.clone(),
                                c.floats(),
                            ));
                        }
                        let attrs =
                            json(serde_json::json!({"alpha": alpha, "beta": beta, "transB": true}));
                        let typed = Op::parse(
                            "Gemm",
                            &attrs
                                .as_object()
                                .cloned()
                                .unwrap_or_default()
                                .into_iter()
                                .collect(),
                        )?;
                        self.emit(typed, attrs, name, inputs, &out)?;
                    }
                    In::Act(..) if op == "MatMul" => {
                        let (b, _) = self.act(&node.input[1])?;
                        let name = self.fresh("matmul");
                        self.emit(Op::MatMul, serde_json::json!({}), name, vec![a, b], &out)?;
                    }
                    In::Act(..) => return Err("a Gemm of two activations is not supported".into()),
                }
            }
            "Add" | "Sub" | "Mul" | "Div" => self.arithmetic(node, op, &out)?,
            "Concat" => {
                let axis = attrs.int("axis", 0);
                let name = self.fresh("concat");
                let mut inputs = Vec::new();
                for (i, input) in node.input.iter().enumerate() {
                    match self.input(input)? {
                        In::Act(n, _) => inputs.push(n.to_string()),
                        In::Const(c) => {
                            let c = c.clone();
                            inputs.push(self.weight(
                                format!("{name}.const{i}"),
                                c.shape.clone(),
                                c.floats(),
                            ));
                        }
                    }
                }
                self.emit(
                    Op::Concat { axis },
                    serde_json::json!({"axis": axis}),
                    name,
                    inputs,
                    &out,
                )?;
            }
            "Relu" | "Sigmoid" | "Tanh" | "HardSwish" | "Erf" | "Gelu" | "LeakyRelu"
            | "HardSigmoid" | "Clip" => {
                let (x, _) = self.act(&node.input[0])?;
                let attrs_json = match op {
                    "LeakyRelu" => serde_json::json!({"alpha": attrs.float("alpha", 0.01)}),
                    "HardSigmoid" => {
                        serde_json::json!({"alpha": attrs.float("alpha", 0.2), "beta": attrs.float("beta", 0.5)})
                    }
                    "Gelu" => match attrs.string("approximate") {
                        Some(a) => serde_json::json!({"approximate": a}),
                        None => serde_json::json!({}),
                    },
                    "Clip" => {
                        let min = Self::optional(node, 1)
                            .map(|n| self.constant(n).and_then(Const::scalar_f))
                            .transpose()?;
                        let max = Self::optional(node, 2)
                            .map(|n| self.constant(n).and_then(Const::scalar_f))
                            .transpose()?;
                        let mut m = serde_json::Map::new();
                        if let Some(v) = min {
                            m.insert("min".into(), serde_json::json!(v));
                        }
                        if let Some(v) = max {
                            m.insert("max".into(), serde_json::json!(v));
                        }
                        serde_json::Value::Object(m)
                    }
                    _ => serde_json::json!({}),
                };
                let typed = Op::parse(
                    op,
                    &attrs_json
                        .as_object()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                )?;
                let name = self.fresh(op);
                self.emit(typed, attrs_json, name, vec![x], &out)?;
            }
            "BatchNormalization" => {
                if attrs.int("training_mode", 0) != 0 {
                    return Err("training_mode: 1 is not an inference graph".into());
                }
                let (x, _) = self.act(&node.input[0])?;
                let name = self.fresh("batchnormalization");
                let mut inputs = vec![x];
                for (i, role) in ["scale", "bias", "mean", "var"].iter().enumerate() {
                    let c = self.constant(&node.input[i + 1])?.clone();
                    inputs.push(self.weight(format!("{name}.{role}"), c.shape.clone(), c.floats()));
                }
                let eps = attrs.float("epsilon", 1e-5);
                self.emit(
                    Op::BatchNormalization { epsilon: eps },
                    serde_json::json!({"epsilon": eps}),
                    name,
                    inputs,
                    &out,
                )?;
            }
            "MaxPool" | "AveragePool" => {
                let (x, xs) = self.act(&node.input[0])?;
                if node.output.len() > 1 && !node.output[1].is_empty() {
                    return Err("MaxPool's Indices output is not supported".into());
                }
                if attrs.int("storage_order", 0) != 0 {
                    return Err("storage_order: 1 is not supported".into());
                }
                let kernel = pair(
                    Some(attrs.ints("kernel_shape").ok_or("has no kernel_shape")?),
                    1,
                    "kernel_shape",
                )?;
                let strides = pair(attrs.ints("strides"), 1, "strides")?;
                let dilations = pair(attrs.ints("dilations"), 1, "dilations")?;
                let pads = window_pads(&attrs, &xs, kernel, strides, dilations)?;
                let mut a = serde_json::json!({
                    "kernel_shape": kernel, "strides": strides, "pads": pads,
                    "ceil_mode": attrs.int("ceil_mode", 0) != 0,
                });
                if op == "MaxPool" {
                    a["dilations"] = serde_json::json!(dilations);
                } else {
                    a["count_include_pad"] =
                        serde_json::json!(attrs.int("count_include_pad", 0) != 0);
                }
                let typed = Op::parse(
                    op,
                    &a.as_object()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                )?;
                let name = self.fresh(op);
                self.emit(typed, a, name, vec![x], &out)?;
            }
            "GlobalAveragePool" => {
                let (x, _) = self.act(&node.input[0])?;
                let name = self.fresh(op);
                self.emit(
                    Op::GlobalAveragePool,
                    serde_json::json!({}),
                    name,
                    vec![x],
                    &out,
                )?;
            }
            "Flatten" => {
                let (x, xs) = self.act(&node.input[0])?;
                let axis = attrs.int("axis", 1);
                let a = graph::axis_of(axis, xs.len() + 1)?;
                if a == 0 {
                    return Err("flattens the batch (axis 0)".into());
                }
                let target = vec![0i64, xs[a..].iter().product::<usize>() as i64];
                let target = if a == 1 {
                    target
                } else {
                    return Err(format!("axis {axis}: only axis 1 keeps the batch apart"));
                };
                self.view(node, x, &xs, target, &out)?;
            }
            "Reshape" => {
                let (x, xs) = self.act(&node.input[0])?;
                let shape = self.constant(&node.input[1])?.ints()?;
                if attrs.int("allowzero", 0) != 0 && shape.contains(&0) {
                    return Err(
                        "allowzero: 1 with a 0 in the shape (an empty tensor) is not supported"
                            .into(),
                    );
                }
                let resolved = graph::reshape(&xs, &shape)?;
                if resolved.first() != Some(&1) {
                    return Err(format!("reshapes {xs:?} to {resolved:?}, moving the batch"));
                }
                let mut target: Vec<i64> = resolved.iter().map(|&d| d as i64).collect();
                target[0] = 0;
                self.view(node, x, &xs, target, &out)?;
            }
            "Squeeze" | "Unsqueeze" => {
                let (x, xs) = self.act(&node.input[0])?;
                let axes = match (attrs.ints("axes"), Self::optional(node, 1)) {
                    (Some(a), _) => Some(a),
                    (None, Some(i)) => Some(self.constant(i)?.ints()?),
                    (None, None) => None,
                };
                let out_shape: Vec<usize> = if op == "Squeeze" {
                    let axes: Vec<usize> = match axes {
                        Some(a) => a
                            .iter()
                            .map(|&v| graph::axis_of(v, xs.len()))
                            .collect::<Result<_, _>>()?,
                        // No axes: every axis of size 1, except the batch.
                        None => (1..xs.len()).filter(|&i| xs[i] == 1).collect(),
                    };
                    graph::output_shape(
                        &Op::Squeeze {
                            axes: axes.iter().map(|&a| a as i64).collect(),
                        },
                        &[(xs.clone(), false)],
                    )?
                } else {
                    let axes = axes.ok_or("has no axes")?;
                    graph::output_shape(&Op::Unsqueeze { axes }, &[(xs.clone(), false)])?
                };
                let mut target: Vec<i64> = out_shape.iter().map(|&d| d as i64).collect();
                target[0] = 0;
                self.view(node, x, &xs, target, &out)?;
            }
            "Transpose" => {
                let (x, xs) = self.act(&node.input[0])?;
                let perm = match attrs.ints("perm") {
                    Some(p) => usizes(&p, "perm")?,
                    None => (0..xs.len()).rev().collect(),
                };
                if perm.len() != xs.len() {
                    return Err(format!(
                        "perm {perm:?} does not fit a rank-{} input",
                        xs.len()
                    ));
                }
                // Moving only axes of size 1 leaves the memory order as it is: a view.
                let moved: Vec<usize> = perm.iter().copied().filter(|&p| xs[p] != 1).collect();
                let kept: Vec<usize> = (0..xs.len()).filter(|&p| xs[p] != 1).collect();
                if moved == kept {
                    let mut target: Vec<i64> = perm.iter().map(|&p| xs[p] as i64).collect();
                    target[0] = 0;
                    self.removed.push(serde_json::json!({
                        "node": node.name(), "op": "Transpose", "perm": perm,
                        "why": format!("moves only axes of size 1 of {xs:?}: no change in memory"),
                    }));
                    self.view_quiet(x, &xs, target, &out)?;
                } else {
                    let name = self.fresh("transpose");
                    self.emit(
                        Op::Transpose { perm: perm.clone() },
                        serde_json::json!({"perm": perm}),
                        name,
                        vec![x],
                        &out,
                    )?;
                }
            }
            "Softmax" => {
                let (x, xs) = self.act(&node.input[0])?;
                let default = if self.opset < 13 { 1 } else { -1 };
                let axis = graph::axis_of(attrs.int("axis", default), xs.len())?;
                if self.opset >= 13 || axis == xs.len() - 1 {
                    let name = self.fresh("softmax");
                    self.emit(
                        Op::Softmax { axis: axis as i64 },
                        serde_json::json!({"axis": axis}),
                        name,
                        vec![x],
                        &out,
                    )?;
                } else {
                    // Before opset 13: over the input coerced to 2-D at `axis`.
                    if axis != 1 {
                        return Err(format!(
                            "opset {} softmax over axis {axis} of {xs:?} is not supported",
                            self.opset
                        ));
                    }
                    let flat = format!("{out}#flat");
                    let inner: usize = xs[1..].iter().product();
                    self.view_quiet(x, &xs, vec![0, inner as i64], &flat)?;
                    let (f, _) = self.act(&flat)?;
                    let name = self.fresh("softmax");
                    let sm = format!("{out}#softmax");
                    self.emit(
                        Op::Softmax { axis: -1 },
                        serde_json::json!({"axis": -1}),
                        name,
                        vec![f],
                        &sm,
                    )?;
                    let (s, ss) = self.act(&sm)?;
                    let mut target: Vec<i64> = xs.iter().map(|&d| d as i64).collect();
                    target[0] = 0;
                    self.view_quiet(s, &ss, target, &out)?;
                }
            }
            "LayerNormalization" => {
                let (x, _) = self.act(&node.input[0])?;
                let name = self.fresh(op);
                let mut inputs = vec![x];
                for (i, role) in [(1usize, "scale"), (2, "bias")] {
                    if let Some(n) = Self::optional(node, i) {
                        let c = self.constant(n)?.clone();
                        inputs.push(self.weight(
                            format!("{name}.{role}"),
                            c.shape.clone(),
                            c.floats(),
                        ));
                    }
                }
                let a = serde_json::json!({"axis": attrs.int("axis", -1), "epsilon": attrs.float("epsilon", 1e-5)});
                let typed = Op::parse(
                    op,
                    &a.as_object()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                )?;
                self.emit(typed, a, name, inputs, &out)?;
            }
            "Pad" => {
                let (x, xs) = self.act(&node.input[0])?;
                let mode = attrs.string("mode").unwrap_or_else(|| "constant".into());
                if !["constant", "reflect", "edge", "wrap"].contains(&mode.as_str()) {
                    return Err(format!(
                        "mode `{mode}` is not constant, reflect, edge or wrap"
                    ));
                }
                let raw = self
                    .constant(node.input.get(1).ok_or("has no pads input")?)?
                    .ints()?;
                let value = Self::optional(node, 2)
                    .map(|n| self.constant(n).and_then(Const::scalar_f))
                    .transpose()?
                    .unwrap_or(0.0);
                let rank = xs.len();
                let pads = match Self::optional(node, 3) {
                    None => raw,
                    Some(a) => {
                        let axes = self.constant(a)?.ints()?;
                        if raw.len() != 2 * axes.len() {
                            return Err("pads and axes do not match".into());
                        }
                        let mut full = vec![0i64; 2 * rank];
                        for (i, &ax) in axes.iter().enumerate() {
                            let ax = graph::axis_of(ax, rank)?;
                            full[ax] = raw[i];
                            full[ax + rank] = raw[i + axes.len()];
                        }
                        full
                    }
                };
                let name = self.fresh("pad");
                let a = serde_json::json!({"pads": pads, "value": value, "mode": mode});
                let typed = Op::parse(
                    "Pad",
                    &a.as_object()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                )?;
                self.emit(typed, a, name, vec![x], &out)?;
            }
            "Cast" => {
                let (x, xs) = self.act(&node.input[0])?;
                let to = attrs.int("to", 1);
                if to != DataType::Float as i32 as i64 {
                    return Err(format!(
                        "casts an activation to type {to}; only float activations are supported"
                    ));
                }
                self.acts.insert(out, (x, xs));
                self.removed.push(serde_json::json!({"node": node.name(), "op": op, "why": "a cast to float of a float activation"}));
            }
            _ => return Err(unsupported(op, self.opset)),
        }
        if !node.name().is_empty()
            && let Some((ours, _)) = self.acts.get(&node.output[0])
        {
            self.renamed.insert(node.name().to_string(), ours.clone());
        }
        Ok(())
    }

    /// A Reshape, Flatten, Squeeze or Unsqueeze: a view node, unless it changes nothing.
    fn view(
        &mut self,
        node: &proto::NodeProto,
        x: String,
        xs: &[usize],
        target: Vec<i64>,
        out: &str,
    ) -> Result<(), String> {
        let resolved = graph::reshape(xs, &target)?;
        if resolved == xs {
            self.removed.push(serde_json::json!({"node": node.name(), "op": node.op_type(), "why": "keeps the shape as it is"}));
        }
        self.view_quiet(x, xs, target, out)
    }

    fn view_quiet(
        &mut self,
        x: String,
        xs: &[usize],
        target: Vec<i64>,
        out: &str,
    ) -> Result<(), String> {
        let resolved = graph::reshape(xs, &target)?;
        if resolved == xs {
            self.acts.insert(out.to_string(), (x, xs.to_vec()));
            return Ok(());
        }
        let name = self.fresh("reshape");
        self.emit(
            Op::Reshape {
                shape: target.clone(),
            },
            serde_json::json!({"shape": target}),
            name,
            vec![x],
            out,
        )
    }

    /// Add, Sub, Mul, Div with at most one constant operand; Sub and Div become Add and Mul.
    fn arithmetic(&mut self, node: &proto::NodeProto, op: &str, out: &str) -> Result<(), String> {
        let (a, b) = (&node.input[0], &node.input[1]);
        let (a_const, b_const) = (self.consts.get(a).cloned(), self.consts.get(b).cloned());
        let name = self.fresh(match op {
            "Sub" => "add",
            "Div" => "mul",
            other => other,
        });
        let (x, c, first) = match (a_const, b_const) {
            (None, Some(c)) => (self.act(a)?.0, Some(c), true),
            (Some(c), None) => (self.act(b)?.0, Some(c), false),
            (None, None) => {
                let (x, _) = self.act(a)?;
                let (y, _) = self.act(b)?;
                return match op {
                    "Add" | "Mul" => {
                        let typed = Op::parse(op, &BTreeMap::new())?;
                        self.emit(typed, serde_json::json!({}), name, vec![x, y], out)
                    }
                    _ => Err(format!("{op} of two activations is not supported")),
                };
            }
            (Some(_), Some(_)) => unreachable!("two constants are folded"),
        };
        let c = c.expect("one constant");
        let values = c.floats();
        let (typed, values) = match (op, first) {
            ("Add", _) => (Op::Add, values),
            ("Mul", _) => (Op::Mul, values),
            ("Sub", true) => (Op::Add, values.iter().map(|v| -v).collect()),
            ("Div", true) => (Op::Mul, values.iter().map(|v| 1.0 / v).collect()),
            ("Sub", false) => {
                // c - x = (-1 · x) + c
                let neg = self.weight(format!("{name}.minus_one"), vec![1], vec![-1.0]);
                let flipped = format!("{out}#negated");
                let mname = self.fresh("mul");
                self.emit(
                    Op::Mul,
                    serde_json::json!({}),
                    mname,
                    vec![x, neg],
                    &flipped,
                )?;
                let (fx, _) = self.act(&flipped)?;
                let cn = self.weight(format!("{name}.const"), c.shape.clone(), values);
                return self.emit(Op::Add, serde_json::json!({}), name, vec![fx, cn], out);
            }
            _ => return Err("a constant divided by an activation is not supported".into()),
        };
        if values.iter().any(|v| !v.is_finite()) {
            return Err("its constant makes a non-finite value (a division by 0?)".into());
        }
        let cn = self.weight(format!("{name}.const"), c.shape.clone(), values);
        let inputs = if first { vec![x, cn] } else { vec![cn, x] };
        self.emit(typed, serde_json::json!({}), name, inputs, out)
    }

    /// Evaluates a node of constants (and `Shape` of a known activation); `None` when the op is
    /// not one that folds.
    fn fold(&self, node: &proto::NodeProto) -> Result<Option<Const>, String> {
        let attrs = Attrs(&node.attribute);
        // A missing input reads as absent (""), which `constant` refuses: never out of bounds.
        let c = |i: usize| -> Result<&Const, String> {
            self.constant(node.input.get(i).map_or("", String::as_str))
        };
        let ints = |v: Vec<i64>| Const {
            shape: vec![v.len()],
            data: Data::I(v),
        };
        Ok(Some(match node.op_type() {
            "Constant" => {
                if let Some(t) = attrs.get("value").and_then(|a| a.t.as_ref()) {
                    read_tensor(t, &self.dir)?
                } else if let Some(a) = attrs.get("value_float") {
                    Const {
                        shape: vec![],
                        data: Data::F(vec![a.f()]),
                    }
                } else if let Some(a) = attrs.get("value_floats") {
                    Const {
                        shape: vec![a.floats.len()],
                        data: Data::F(a.floats.clone()),
                    }
                } else if let Some(a) = attrs.get("value_int") {
                    Const {
                        shape: vec![],
                        data: Data::I(vec![a.i()]),
                    }
                } else if let Some(a) = attrs.get("value_ints") {
                    ints(a.ints.clone())
                } else {
                    return Err("a Constant without a value edgebuild reads".into());
                }
            }
            "Identity" | "Dropout" => c(0)?.clone(),
            "Shape" => {
                let shape = match self.input(&node.input[0])? {
                    In::Const(k) => k.shape.clone(),
                    In::Act(_, s) => s.to_vec(),
                };
                let r = shape.len() as i64;
                let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let start = clamp(attrs.int("start", 0));
                let end = clamp(attrs.int("end", r));
                ints(
                    shape[start..end.max(start)]
                        .iter()
                        .map(|&d| d as i64)
                        .collect(),
                )
            }
            "Cast" => {
                let k = c(0)?;
                let to = attrs.int("to", 1);
                let float = [1i64, 10, 11, 16].contains(&to);
                Const {
                    shape: k.shape.clone(),
                    data: if float {
                        Data::F(k.floats())
                    } else {
                        Data::I(k.ints().or_else(|_| {
                            Ok::<_, String>(k.floats().iter().map(|v| v.trunc() as i64).collect())
                        })?)
                    },
                }
            }
            "Gather" => {
                let (data, idx) = (c(0)?, c(1)?);
                let rank = data.shape.len();
                let axis = graph::axis_of(attrs.int("axis", 0), rank)?;
                let indices = idx.ints()?;
                let len = data.shape[axis];
                let outer: usize = data.shape[..axis].iter().product();
                let inner: usize = data.shape[axis + 1..].iter().product();
                let mut shape = data.shape[..axis].to_vec();
                shape.extend(&idx.shape);
                shape.extend(&data.shape[axis + 1..]);
                let pick = |i: i64| -> Result<usize, String> {
                    let j = if i < 0 { i + len as i64 } else { i };
                    usize::try_from(j)
                        .ok()
                        .filter(|&j| j < len)
                        .ok_or_else(|| format!("index {i} is out of range {len}"))
                };
                let picked: Vec<usize> =
                    indices.iter().map(|&i| pick(i)).collect::<Result<_, _>>()?;
                match &data.data {
                    Data::F(v) => {
                        let mut o = Vec::new();
                        for a in 0..outer {
                            for &p in &picked {
                                o.extend_from_slice(
                                    &v[(a * len + p) * inner..(a * len + p + 1) * inner],
                                );
                            }
                        }
                        Const {
                            shape,
                            data: Data::F(o),
                        }
                    }
                    Data::I(v) => {
                        let mut o = Vec::new();
                        for a in 0..outer {
                            for &p in &picked {
                                o.extend_from_slice(
                                    &v[(a * len + p) * inner..(a * len + p + 1) * inner],
                                );
                            }
                        }
                        Const {
                            shape,
                            data: Data::I(o),
                        }
                    }
                }
            }
            "Unsqueeze" | "Squeeze" => {
                let k = c(0)?;
                let axes = match (attrs.ints("axes"), Self::optional(node, 1)) {
                    (Some(a), _) => a,
                    (None, Some(i)) => self.constant(i)?.ints()?,
                    (None, None) if node.op_type() == "Squeeze" => (0..k.shape.len() as i64)
                        .filter(|&i| k.shape[i as usize] == 1)
                        .collect(),
                    _ => return Err("has no axes".into()),
                };
                let shape = if node.op_type() == "Unsqueeze" {
                    let rank = k.shape.len() + axes.len();
                    let mut axes: Vec<usize> = axes
                        .iter()
                        .map(|&a| graph::axis_of(a, rank))
                        .collect::<Result<_, _>>()?;
                    axes.sort_unstable();
                    let mut rest = k.shape.iter();
                    (0..rank)
                        .map(|i| {
                            if axes.contains(&i) {
                                1
                            } else {
                                *rest.next().unwrap_or(&1)
                            }
                        })
                        .collect()
                } else {
                    let axes: Vec<usize> = axes
                        .iter()
                        .map(|&a| graph::axis_of(a, k.shape.len()))
                        .collect::<Result<_, _>>()?;
                    k.shape
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| !axes.contains(i))
                        .map(|(_, d)| *d)
                        .collect()
                };
                Const {
                    shape,
                    data: k.data.clone(),
                }
            }
            "Concat" => {
                let parts: Vec<&Const> = (0..node.input.len()).map(c).collect::<Result<_, _>>()?;
                let rank = parts[0].shape.len().max(1);
                let axis = graph::axis_of(attrs.int("axis", 0), rank)?;
                if parts.iter().all(|p| p.shape.len() <= 1) && axis == 0 {
                    if parts.iter().all(|p| matches!(p.data, Data::I(_))) {
                        ints(
                            parts
                                .iter()
                                .flat_map(|p| p.ints().unwrap_or_default())
                                .collect(),
                        )
                    } else {
                        let v: Vec<f32> = parts.iter().flat_map(|p| p.floats()).collect();
                        Const {
                            shape: vec![v.len()],
                            data: Data::F(v),
                        }
                    }
                } else {
                    return Err("concatenation of constants beyond 1-D is not folded".into());
                }
            }
            "Reshape" => {
                let k = c(0)?;
                let target = c(1)?.ints()?;
                let shape = graph::reshape(&k.shape, &target)?;
                Const {
                    shape,
                    data: k.data.clone(),
                }
            }
            "Flatten" => {
                let k = c(0)?;
                let axis = graph::axis_of(attrs.int("axis", 1), k.shape.len() + 1)?;
                Const {
                    shape: vec![
                        k.shape[..axis].iter().product(),
                        k.shape[axis..].iter().product(),
                    ],
                    data: k.data.clone(),
                }
            }
            "Transpose" => {
                let k = c(0)?;
                let perm = match attrs.ints("perm") {
                    Some(p) => usizes(&p, "perm")?,
                    None => (0..k.shape.len()).rev().collect(),
                };
                if perm.len() != k.shape.len() {
                    return Err("perm does not fit".into());
                }
                let moved = transpose_const(&k.shape, &k.floats(), &perm);
                Const {
                    shape: perm.iter().map(|&p| k.shape[p]).collect(),
                    data: Data::F(moved),
                }
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                let (a, b) = (c(0)?, c(1)?);
                let shape = graph::broadcast(&a.shape, &b.shape)?;
                let op = node.op_type();
                if let (Data::I(x), Data::I(y)) = (&a.data, &b.data) {
                    let (x, y) = (bcast(x, &a.shape, &shape), bcast(y, &b.shape, &shape));
                    let v = x
                        .iter()
                        .zip(&y)
                        .map(|(&p, &q)| match op {
                            "Add" => p + q,
                            "Sub" => p - q,
                            "Mul" => p * q,
                            _ => {
                                if q == 0 {
                                    0
                                } else {
                                    p / q
                                }
                            }
                        })
                        .collect();
                    Const {
                        shape,
                        data: Data::I(v),
                    }
                } else {
                    let (x, y) = (
                        bcast(&a.floats(), &a.shape, &shape),
                        bcast(&b.floats(), &b.shape, &shape),
                    );
                    let v = x
                        .iter()
                        .zip(&y)
                        .map(|(&p, &q)| match op {
                            "Add" => p + q,
                            "Sub" => p - q,
                            "Mul" => p * q,
                            _ => p / q,
                        })
                        .collect();
                    Const {
                        shape,
                        data: Data::F(v),
                    }
                }
            }
            "Sqrt" => {
                let k = c(0)?;
                Const {
                    shape: k.shape.clone(),
                    data: Data::F(k.floats().iter().map(|v| v.sqrt()).collect()),
                }
            }
            "ConstantOfShape" => {
                let shape = usizes(&c(0)?.ints()?, "shape")?;
                let n = checked_numel(&shape)?;
                if n > (1 << 24) {
                    return Err(format!("a constant of {n} values is too large to fold"));
                }
                let value = attrs
                    .get("value")
                    .and_then(|a| a.t.as_ref())
                    .map(|t| read_tensor(t, &self.dir))
                    .transpose()?;
                match value.map(|v| v.data) {
                    Some(Data::I(v)) => Const {
                        shape,
                        data: Data::I(vec![v.first().copied().unwrap_or(0); n]),
                    },
                    Some(Data::F(v)) => Const {
                        shape,
                        data: Data::F(vec![v.first().copied().unwrap_or(0.0); n]),
                    },
                    None => Const {
                        shape,
                        data: Data::F(vec![0.0; n]),
                    },
                }
            }
            "Slice" => {
                let k = c(0)?;
                let starts = c(1)?.ints()?;
                let ends = c(2)?.ints()?;
                let axes = match Self::optional(node, 3) {
                    Some(n) => self.constant(n)?.ints()?,
                    None => (0..starts.len() as i64).collect(),
                };
                let steps = match Self::optional(node, 4) {
                    Some(n) => self.constant(n)?.ints()?,
                    None => vec![1; starts.len()],
                };
                if k.shape.len() != 1
                    || steps.iter().any(|&s| s != 1)
                    || axes.iter().any(|&a| a != 0 && a != -1)
                {
                    return Err("only 1-D slices with step 1 of constants are folded".into());
                }
                let len = k.shape[0] as i64;
                let norm = |v: i64| (if v < 0 { v + len } else { v }).clamp(0, len) as usize;
                let (s, e) = (norm(starts[0]), norm(ends[0]));
                let e = e.max(s);
                match &k.data {
                    Data::I(v) => ints(v[s..e].to_vec()),
                    Data::F(v) => Const {
                        shape: vec![e - s],
                        data: Data::F(v[s..e].to_vec()),
                    },
                }
            }
            _ => return Ok(None),
        }))
    }
}

fn bcast<T: Copy>(v: &[T], from: &[usize], to: &[usize]) -> Vec<T> {
    let rank = to.len();
    let pad = rank - from.len();
    let mut strides = vec![0usize; rank];
    let mut acc = 1;
    for i in (0..from.len()).rev() {
        strides[i + pad] = if from[i] == 1 { 0 } else { acc };
        acc *= from[i];
    }
    let total: usize = to.iter().product();
    let mut out = Vec::with_capacity(total);
    let mut idx = vec![0usize; rank];
    for _ in 0..total {
        out.push(v[idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>()]);
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

fn transpose_const(shape: &[usize], data: &[f32], perm: &[usize]) -> Vec<f32> {
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let rank = shape.len();
    let mut strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    let st: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
    let mut idx = vec![0usize; rank];
    let mut out = Vec::with_capacity(data.len());
    for _ in 0..data.len() {
        out.push(data[idx.iter().zip(&st).map(|(i, s)| i * s).sum::<usize>()]);
        for a in (0..rank).rev() {
            idx[a] += 1;
            if idx[a] < out_shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    out
}

fn unsupported(op: &str, opset: i64) -> String {
    format!(
        "op {op} (opset {opset}) is not supported; edgebuild imports {}",
        SUPPORTED.join(", ")
    )
}

/// A shape from a value info: concrete dimensions, `None` where dynamic.
fn value_shape(v: &proto::ValueInfoProto) -> Result<Vec<Option<usize>>, String> {
    let Some(proto::type_proto::Value::TensorType(t)) =
        v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return Err(format!("`{}` is not a tensor", v.name()));
    };
    if t.elem_type() != DataType::Float as i32 {
        let name = DataType::try_from(t.elem_type())
            .map(|d| d.as_str_name())
            .unwrap_or("unknown");
        return Err(format!(
            "`{}` is of type {name}; edgebuild models take float inputs",
            v.name()
        ));
    }
    let shape = t
        .shape
        .as_ref()
        .ok_or_else(|| format!("`{}` has no shape", v.name()))?;
    shape
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(proto::tensor_shape_proto::dimension::Value::DimValue(v)) if *v > 0 => {
                Ok(Some(*v as usize))
            }
            Some(proto::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                Err(format!("dimension {v} is not positive"))
            }
            _ => Ok(None),
        })
        .collect()
}

/// Merges chains of views: a Reshape of a Reshape's output, when nothing else reads the
/// intermediate, reshapes the first one's input directly.
fn collapse_views(c: &mut Converter, output: &str) -> usize {
    let mut merged = 0;
    loop {
        let found = c.nodes.iter().enumerate().find_map(|(j, second)| {
            if second.op != "Reshape" {
                return None;
            }
            let mid = &second.inputs[0];
            let i = c
                .nodes
                .iter()
                .position(|n| &n.outputs[0] == mid && n.op == "Reshape")?;
            let readers = c.nodes.iter().filter(|n| n.inputs.contains(mid)).count();
            (readers == 1 && mid != output).then_some((i, j))
        });
        let Some((i, j)) = found else { break };
        let source = c.nodes[i].inputs[0].clone();
        c.nodes[j].inputs[0] = source;
        c.nodes.remove(i);
        merged += 1;
    }
    merged
}

/// Folds every BatchNormalization whose input is a Conv's or Gemm's output read by nothing else.
fn fold_batchnorms(c: &mut Converter, output: &str) -> Vec<serde_json::Value> {
    let mut folded = Vec::new();
    let mut i = 0;
    while i < c.nodes.len() {
        if c.nodes[i].op != "BatchNormalization" {
            i += 1;
            continue;
        }
        let bn = c.nodes[i].clone();
        let x = bn.inputs[0].clone();
        let producer = c.nodes.iter().position(|n| n.outputs[0] == x);
        let readers = c.nodes.iter().filter(|n| n.inputs.contains(&x)).count();
        let Some(p) = producer.filter(|&p| {
            readers == 1
                && x != output
                && matches!(c.nodes[p].op.as_str(), "Conv" | "Gemm")
                && (c.nodes[p].op == "Conv"
                    || c.nodes[p].attrs.get("alpha").and_then(|a| a.as_f64()) == Some(1.0))
        }) else {
            i += 1;
            continue;
        };
        let eps = bn
            .attrs
            .get("epsilon")
            .and_then(|e| e.as_f64())
            .unwrap_or(1e-5) as f32;
        let get = |n: &str| c.weights[n].1.clone();
        let (scale, beta, mean, var) = (
            get(&bn.inputs[1]),
            get(&bn.inputs[2]),
            get(&bn.inputs[3]),
            get(&bn.inputs[4]),
        );
        let conv = c.nodes[p].clone();
        let wname = conv.inputs[1].clone();
        let (wshape, mut w) = c.weights[&wname].clone();
        let out = wshape[0];
        if scale.len() != out {
            i += 1;
            continue;
        }
        let per = w.len() / out;
        let factor: Vec<f32> = (0..out).map(|o| scale[o] / (var[o] + eps).sqrt()).collect();
        for o in 0..out {
            for v in &mut w[o * per..(o + 1) * per] {
                *v *= factor[o];
            }
        }
        let old_bias: Vec<f32> = conv
            .inputs
            .get(2)
            .map(|b| c.weights[b].1.clone())
            .unwrap_or_else(|| vec![0.0; out]);
        let gemm_beta = conv
            .attrs
            .get("beta")
            .and_then(|b| b.as_f64())
            .unwrap_or(1.0) as f32;
        let bias: Vec<f32> = (0..out)
            .map(|o| (old_bias[o] * gemm_beta - mean[o]) * factor[o] + beta[o])
            .collect();
        c.weights.insert(wname, (wshape, w));
        let bname = format!("{}.bias", conv.name);
        if let Some(old) = conv.inputs.get(2) {
            c.weights.remove(old);
        }
        c.weights.insert(bname.clone(), (vec![out], bias));
        let node = &mut c.nodes[p];
        if node.inputs.len() == 2 {
            node.inputs.push(bname);
        } else {
            node.inputs[2] = bname;
        }
        if node.op == "Gemm" {
            node.attrs.insert("beta".into(), serde_json::json!(1.0));
        }
        // The conv now writes what the batchnorm wrote.
        let bn_out = bn.outputs[0].clone();
        for n in c.nodes.iter_mut() {
            for input in n.inputs.iter_mut() {
                if *input == bn_out {
                    *input = x.clone();
                }
            }
        }
        for v in c.acts.values_mut() {
            if v.0 == bn_out {
                v.0 = x.clone();
            }
        }
        for input in &bn.inputs[1..] {
            c.weights.remove(input);
        }
        folded.push(serde_json::json!({"batchnorm": bn.name, "into": conv.name}));
        c.nodes.remove(i);
    }
    folded
}

/// Imports an ONNX file.
pub fn import(path: &Path, options: &ImportOptions) -> Result<Imported, String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "{size} bytes is above the {MAX_FILE_BYTES}-byte limit of an ONNX file"
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let model = proto::ModelProto::decode(bytes.as_slice())
        .map_err(|e| format!("not an ONNX model (the protobuf does not decode: {e})"))?;
    let graph = model
        .graph
        .as_ref()
        .ok_or("not an ONNX model: it has no graph")?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        .map(|o| o.version())
        .ok_or("the model imports no opset of the default domain")?;
    if !OPSETS.contains(&opset) {
        return Err(format!(
            "opset {opset} is not supported: edgebuild reads opsets {} to {}",
            OPSETS.start(),
            OPSETS.end()
        ));
    }
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut c = Converter {
        dir: dir.clone(),
        opset,
        consts: BTreeMap::new(),
        acts: BTreeMap::new(),
        nodes: Vec::new(),
        weights: BTreeMap::new(),
        counters: BTreeMap::new(),
        folded: Vec::new(),
        removed: Vec::new(),
        renamed: BTreeMap::new(),
    };
    for init in &graph.initializer {
        let value =
            read_tensor(init, &dir).map_err(|e| format!("initializer `{}`: {e}", init.name()))?;
        c.consts.insert(init.name().to_string(), value);
    }
    if !graph.sparse_initializer.is_empty() {
        return Err("sparse initializers are not supported".into());
    }
    // The input: a graph input that is not an initializer.
    let inputs: Vec<&proto::ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !c.consts.contains_key(i.name()))
        .collect();
    let names: Vec<&str> = inputs.iter().map(|i| i.name()).collect();
    let input = match (&options.input, inputs.as_slice()) {
        (Some(want), _) => *inputs.iter().find(|i| i.name() == want).ok_or_else(|| {
            format!(
                "no graph input `{want}`; the inputs are {}",
                names.join(", ")
            )
        })?,
        (None, [one]) => *one,
        (None, []) => return Err("the graph has no input".into()),
        (None, _) => {
            return Err(format!(
                "the graph has {} inputs ({}); say which one is used with `input: NAME` in params",
                inputs.len(),
                names.join(", ")
            ));
        }
    };
    let shape = value_shape(input)?;
    let per_sample: Vec<usize> = match &options.input_shape {
        Some(s) => {
            if s.len() + 1 != shape.len()
                || shape[1..]
                    .iter()
                    .zip(s)
                    .any(|(d, v)| d.is_some_and(|d| d != *v))
            {
                return Err(format!(
                    "input_shape {s:?} does not fit the input `{}` of shape {}",
                    input.name(),
                    show_dims(&shape)
                ));
            }
            s.clone()
        }
        None => {
            if shape.is_empty() {
                return Err(format!(
                    "the input `{}` is a scalar; it needs a batch dimension",
                    input.name()
                ));
            }
            if shape[0].is_some_and(|b| b != 1) {
                return Err(format!(
                    "the input `{}` has a batch of {}; edgebuild runs a batch dimension of 1 (or dynamic)",
                    input.name(),
                    shape[0].unwrap_or(0)
                ));
            }
            shape[1..]
                .iter()
                .enumerate()
                .map(|(i, d)| d.ok_or_else(|| format!("dimension {} of the input `{}` ({}) is dynamic: give one sample's shape in params, `input_shape: [...]`", i + 1, input.name(), show_dims(&shape))))
                .collect::<Result<_, _>>()?
        }
    };
    if per_sample.is_empty() || per_sample.contains(&0) {
        return Err(format!("input shape {per_sample:?} is not positive"));
    }
    let mut full = vec![1];
    full.extend(&per_sample);
    checked_numel(&full)?;
    c.acts
        .insert(input.name().to_string(), ("input".into(), full));
    // The output.
    let outputs: Vec<&str> = graph.output.iter().map(|o| o.name()).collect();
    let output = match (&options.output, outputs.as_slice()) {
        (Some(want), _) => outputs
            .iter()
            .find(|o| *o == want)
            .copied()
            .ok_or_else(|| {
                format!(
                    "no graph output `{want}`; the outputs are {}",
                    outputs.join(", ")
                )
            })?,
        (None, [one]) => *one,
        (None, []) => return Err("the graph has no output".into()),
        (None, _) => {
            return Err(format!(
                "the graph has {} outputs ({}); say which one is used with `output: NAME` in params",
                outputs.len(),
                outputs.join(", ")
            ));
        }
    };
    // Only the nodes the output needs.
    let mut needed: BTreeSet<&str> = BTreeSet::from([output]);
    let mut keep = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o.as_str())) {
            keep[i] = true;
            needed.extend(node.input.iter().map(String::as_str));
        }
    }
    let nodes_in = graph.node.len();
    for (i, node) in graph.node.iter().enumerate() {
        if !keep[i] {
            continue;
        }
        if !(node.domain().is_empty() || node.domain() == "ai.onnx") {
            return Err(format!(
                "node {i} `{}` ({}, domain {}): {}",
                node.name(),
                node.op_type(),
                node.domain(),
                "only ops of the default ONNX domain are supported"
            ));
        }
        c.node(node).map_err(|e| {
            format!(
                "node {i} `{}` ({}, opset {opset}): {e}",
                node.name(),
                node.op_type()
            )
        })?;
    }
    let (out_name, _) = c.acts.get(output).cloned().ok_or_else(|| {
        format!("the output `{output}` is a constant: the model computes nothing from its input")
    })?;
    let batchnorms = fold_batchnorms(&mut c, &out_name);
    let (out_name, _) = c.acts[output].clone();
    collapse_views(&mut c, &out_name);
    let mut kept: BTreeMap<&str, usize> = BTreeMap::new();
    for n in &c.nodes {
        *kept.entry(n.op.as_str()).or_default() += 1;
    }
    let name = options.name.clone().unwrap_or_else(|| {
        let g = graph.name();
        if g.is_empty() {
            "model".into()
        } else {
            g.to_string()
        }
    });
    let arch = Architecture {
        name,
        input_shape: per_sample.clone(),
        labels: options.labels.clone(),
        layers: Vec::new(),
        input: Some("input".into()),
        output: Some(out_name.clone()),
        weights: c
            .weights
            .iter()
            .map(|(k, (s, _))| (k.clone(), s.clone()))
            .collect(),
        nodes: c.nodes.clone(),
    };
    let checked = arch
        .graph()
        .map_err(|e| format!("the imported graph is inconsistent: {e}"))?;
    let report = serde_json::json!({
        "format": "edgebuild-import-v1",
        "onnx": {
            "ir_version": model.ir_version(),
            "opset": opset,
            "producer": format!("{} {}", model.producer_name(), model.producer_version()).trim().to_string(),
            "nodes": nodes_in,
            "input": {"name": input.name(), "shape": show_dims(&shape)},
            "output": output,
        },
        "model": {
            "input_shape": per_sample,
            "output_shape": checked.output_shape(),
            "nodes": c.nodes.len(),
            "weights": c.weights.len(),
            "params": checked.infos.iter().map(|i| i.params).sum::<u64>(),
            "macs": checked.infos.iter().map(|i| i.macs).sum::<u64>(),
        },
        "folded_constants": c.folded,
        "batchnorm_folded": batchnorms,
        "removed": c.removed,
        "kept": kept,
        "names": c.renamed,
    });
    Ok(Imported {
        arch,
        weights: c.weights,
        report,
    })
}

fn show_dims(dims: &[Option<usize>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".into(), |d| d.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

//! Models: an architecture file and safetensors weights with PyTorch `state_dict` names (or the
//! names the ONNX importer gives), run as a graph.
//!
//! An architecture is either a chain of `layers:` (SPEC.md, "Models") or a graph of `nodes:`
//! (SPEC.md, "Graph models"); both become one [`Graph`]. This module owns the architecture file,
//! the check that weights match it (every tensor named, every shape right), and the parameters
//! a forward pass ([`exec`]) reads: float weights ([`FloatWeights`]), the f64 reference
//! ([`RefParams`], bit-identical on every CPU, SPEC.md, "`imatrix`"), or a GGUF run through
//! candle's quantized kernels ([`QuantModel`]). Convolutions run as im2col + matmul, so a
//! quantized conv is a `QMatMul` with rows of `in_channels/groups·kh·kw` (SPEC.md,
//! "`evaluate`").

pub mod exec;
pub mod graph;
pub mod layers;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor, gguf_file};
use candle_core::{DType, Device, Module, Tensor};
use serde::{Deserialize, Serialize};

pub use exec::{Params, Real};
pub use graph::{Graph, LayerInfo, RawNode, TensorSpec};
pub use layers::Layer;

/// The architecture file: a chain of `layers`, or a graph of `nodes`, applied to samples of
/// `input_shape`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Architecture {
    pub name: String,
    /// Shape of one sample: `[features]`, or `[channels, height, width]` for convolutions.
    pub input_shape: Vec<usize>,
    /// Class names, in output order.
    #[serde(default)]
    pub labels: Vec<String>,
    /// A chain: layers in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<Layer>,
    /// A graph: the input tensor's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// A graph: the output tensor's name (default: the last node's output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// A graph: every weight with its shape.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub weights: BTreeMap<String, Vec<usize>>,
    /// A graph: nodes in topological order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<RawNode>,
}

impl Architecture {
    pub fn load(path: &Path) -> Result<Architecture, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let arch: Architecture =
            serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        arch.graph()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(arch)
    }

    /// Whether this is a graph (`nodes:`) rather than a chain (`layers:`).
    pub fn is_graph(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// The model as a checked graph; an inconsistent architecture is an error.
    pub fn graph(&self) -> Result<Graph, String> {
        let graph = match (self.layers.is_empty(), self.nodes.is_empty()) {
            (false, false) => {
                return Err(
                    "an architecture has `layers` (a chain) or `nodes` (a graph), not both".into(),
                );
            }
            (false, true) => {
                if self.input.is_some() || self.output.is_some() || !self.weights.is_empty() {
                    return Err(
                        "`input`, `output` and `weights` belong to a graph of `nodes`".into(),
                    );
                }
                let chain = layers::to_graph(&self.input_shape, &self.layers)?;
                Graph::build(
                    &chain.input,
                    &self.input_shape,
                    None,
                    &chain.nodes,
                    &chain.weights,
                    Some(&chain.kinds),
                )?
            }
            (true, _) => Graph::build(
                self.input.as_deref().unwrap_or("input"),
                &self.input_shape,
                self.output.as_deref(),
                &self.nodes,
                &self.weights,
                None,
            )?,
        };
        let out = graph.output_shape();
        if !self.labels.is_empty() && out != [self.labels.len()] {
            return Err(format!(
                "{} labels but the model outputs shape {out:?}",
                self.labels.len()
            ));
        }
        Ok(graph)
    }

    /// Every node's shapes and costs, in order.
    pub fn layer_infos(&self) -> Result<Vec<LayerInfo>, String> {
        Ok(self.graph()?.infos)
    }

    /// Every weight the architecture needs, in node order.
    pub fn tensor_specs(&self) -> Result<Vec<TensorSpec>, String> {
        Ok(self.graph()?.tensor_specs())
    }

    /// The number of classes of a classifier (a model whose output is one vector per sample).
    pub fn classes(&self) -> Result<usize, String> {
        let graph = self.graph()?;
        match graph.output_shape() {
            [classes] => Ok(*classes),
            shape => Err(format!(
                "the model outputs {shape:?} per sample, not one score per class (add flatten and a linear layer?)"
            )),
        }
    }

    /// Whether the model's last op is a softmax (its outputs are probabilities already).
    pub fn ends_with_softmax(&self) -> bool {
        self.graph()
            .ok()
            .and_then(|g| {
                g.nodes
                    .last()
                    .map(|n| matches!(n.op, graph::Op::Softmax { .. }))
            })
            .unwrap_or(false)
    }
}

/// Float weights by name, checked against an architecture.
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
            // A NaN or infinite weight would be quantized, cached and shipped (SPEC.md,
            // "Models"): refused, naming the tensor and the element.
            let values = tensor
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| e.to_string())?;
            if let Some(at) = values.iter().position(|v| !v.is_finite()) {
                let mut index = Vec::new();
                let mut rest = at;
                for &dim in spec.shape.iter().rev() {
                    index.push(rest % dim.max(1));
                    rest /= dim.max(1);
                }
                index.reverse();
                return Err(format!(
                    "{}: tensor `{}` element {index:?} is {}: weights must be finite numbers",
                    path.display(),
                    spec.name,
                    values[at]
                ));
            }
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

    /// The weights as f32 values, for a forward pass.
    pub fn params(&self) -> Result<FloatParams, String> {
        let mut values = BTreeMap::new();
        for (name, t) in &self.tensors {
            let v = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| format!("tensor `{name}`: {e}"))?;
            values.insert(name.clone(), v);
        }
        Ok(FloatParams { values })
    }

    /// The weights as f64 values, for the reference forward pass.
    pub fn reference(&self) -> Result<RefParams, String> {
        Ok(RefParams {
            values: self
                .params()?
                .values
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().map(f64::from).collect()))
                .collect(),
        })
    }
}

/// f32 weights, multiplied by the `gemm` crate.
pub struct FloatParams {
    pub values: BTreeMap<String, Vec<f32>>,
}

impl Params<f32> for FloatParams {
    fn dense(&self, name: &str) -> Option<&[f32]> {
        self.values.get(name).map(Vec::as_slice)
    }

    fn matmul(
        &self,
        weight: &str,
        rows: Range<usize>,
        x: &[f32],
        m: usize,
        k: usize,
    ) -> Result<Vec<f32>, String> {
        let w = self
            .dense(weight)
            .ok_or_else(|| format!("no weight `{weight}`"))?;
        Ok(exec::matmul_f32(w, rows, x, m, k))
    }
}

/// f64 weights with a fixed summation order: the same results on every CPU.
pub struct RefParams {
    pub values: BTreeMap<String, Vec<f64>>,
}

impl Params<f64> for RefParams {
    fn dense(&self, name: &str) -> Option<&[f64]> {
        self.values.get(name).map(Vec::as_slice)
    }

    fn matmul(
        &self,
        weight: &str,
        rows: Range<usize>,
        x: &[f64],
        m: usize,
        k: usize,
    ) -> Result<Vec<f64>, String> {
        let w = self
            .dense(weight)
            .ok_or_else(|| format!("no weight `{weight}`"))?;
        Ok(exec::matmul_reference(w, rows, x, m, k))
    }
}

/// Writes weights (name → shape, f32 values) as safetensors, atomically: a temporary file
/// beside `path`, then a rename. The file lists tensors in a fixed order: the same bytes every
/// time.
pub fn save_safetensors(
    path: &Path,
    weights: &BTreeMap<String, (Vec<usize>, Vec<f32>)>,
) -> Result<(), String> {
    let mut map = std::collections::HashMap::new();
    for (name, (shape, values)) in weights {
        let t = Tensor::from_slice(values, shape.as_slice(), &Device::Cpu)
            .map_err(|e| format!("tensor `{name}`: {e}"))?;
        map.insert(name.clone(), t);
    }
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&map, &tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs a graph on a candle batch `[n, input_shape...]` in f32.
pub fn forward(
    arch: &Architecture,
    params: &dyn Params<f32>,
    x: &Tensor,
) -> Result<Tensor, String> {
    let graph = arch.graph()?;
    forward_graph(&graph, params, x)
}

/// [`forward`] with the graph already built.
pub fn forward_graph(
    graph: &Graph,
    params: &dyn Params<f32>,
    x: &Tensor,
) -> Result<Tensor, String> {
    let shape = x.dims().to_vec();
    let data = x
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| e.to_string())?;
    let out = exec::forward(graph, params, exec::Tensor::new(shape, data), None)?;
    Tensor::from_vec(out.data, out.shape, &Device::Cpu).map_err(|e| e.to_string())
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

/// A matmul weight of a GGUF: block-quantized, one `QMatMul` per group of output rows, or plain
/// values (f32 or f16 dequantized) multiplied like float weights.
enum QWeight {
    Blocks {
        groups: Vec<QMatMul>,
        rows_per_group: usize,
    },
    Dense(Vec<f32>),
}

/// A GGUF model run through candle's quantized kernels: block-quantized matmul weights as
/// `QMatMul` (which quantizes the activations too, as a device runtime does), the rest
/// dequantized to f32.
pub struct QuantModel {
    pub arch: Architecture,
    pub graph: Graph,
    matmuls: BTreeMap<String, QWeight>,
    tensors: BTreeMap<String, Vec<f32>>,
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
        // candle sizes a tensor from its header's shape: check every one against the file
        // first, with no arithmetic that can overflow (SPEC.md, "Limits").
        let file_len = file
            .seek(std::io::SeekFrom::End(0))
            .map_err(|e| format!("{name}: {e}"))?;
        for (tensor, info) in &content.tensor_infos {
            let elems = info
                .shape
                .dims()
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d));
            let block = info.ggml_dtype.block_size().max(1);
            // An empty tensor is refused too: candle would view its (dangling) buffer as blocks.
            let bytes = elems
                .filter(|&e| e > 0 && e % block == 0)
                .and_then(|e| (e / block).checked_mul(info.ggml_dtype.type_size()))
                .map(|b| b as u64);
            let fits = bytes.is_some_and(|b| {
                content
                    .tensor_data_offset
                    .checked_add(info.offset)
                    .and_then(|start| start.checked_add(b))
                    .is_some_and(|end| end <= file_len)
            });
            if !fits {
                return Err(format!(
                    "{name}: tensor `{tensor}` of shape {:?} ({:?}) is empty or does not fit in the file",
                    info.shape.dims(),
                    info.ggml_dtype
                ));
            }
        }
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
        let graph = arch.graph().map_err(|e| format!("{name}: {e}"))?;
        let mut matmuls = BTreeMap::new();
        let mut tensors = BTreeMap::new();
        let mut types = BTreeMap::new();
        for spec in graph.tensor_specs() {
            let q: QTensor = content
                .tensor(&mut file, &spec.name, &Device::Cpu)
                .map_err(|e| format!("{name}: tensor `{}`: {e}", spec.name))?;
            types.insert(spec.name.clone(), type_name(q.dtype()).to_string());
            let values = |q: &QTensor| -> Result<Vec<f32>, String> {
                q.dequantize(&Device::Cpu)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(err)
            };
            let blocked = !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
            if spec.matmul && blocked {
                let out = spec.shape[0];
                let rows_per_group = out / spec.groups.max(1);
                let groups = if spec.groups <= 1 {
                    vec![QMatMul::from_qtensor(q).map_err(err)?]
                } else {
                    split_rows(&q, spec.groups).map_err(err)?
                };
                matmuls.insert(
                    spec.name.clone(),
                    QWeight::Blocks {
                        groups,
                        rows_per_group,
                    },
                );
            } else if spec.matmul {
                matmuls.insert(spec.name.clone(), QWeight::Dense(values(&q)?));
            } else {
                tensors.insert(spec.name.clone(), values(&q)?);
            }
        }
        Ok(QuantModel {
            arch,
            graph,
            matmuls,
            tensors,
            types,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        forward_graph(&self.graph, self, x).map_err(candle_core::Error::Msg)
    }
}

/// A block-quantized `[out, k]` weight as one `QMatMul` per group of consecutive rows.
fn split_rows(q: &QTensor, groups: usize) -> candle_core::Result<Vec<QMatMul>> {
    let dims = q.shape().dims().to_vec();
    let bytes = q.data()?;
    let per_group = bytes.len() / groups;
    let mut shape = dims.clone();
    shape[0] /= groups;
    (0..groups)
        .map(|g| {
            let t = candle_core::quantized::ggml_file::qtensor_from_ggml(
                q.dtype(),
                &bytes[g * per_group..(g + 1) * per_group],
                shape.clone(),
                &Device::Cpu,
            )?;
            QMatMul::from_qtensor(t)
        })
        .collect()
}

impl Params<f32> for QuantModel {
    fn dense(&self, name: &str) -> Option<&[f32]> {
        match self.matmuls.get(name) {
            Some(QWeight::Dense(v)) => Some(v),
            Some(QWeight::Blocks { .. }) => None,
            None => self.tensors.get(name).map(Vec::as_slice),
        }
    }

    fn matmul(
        &self,
        weight: &str,
        rows: Range<usize>,
        x: &[f32],
        m: usize,
        k: usize,
    ) -> Result<Vec<f32>, String> {
        match self.matmuls.get(weight) {
            Some(QWeight::Dense(w)) => Ok(exec::matmul_f32(w, rows, x, m, k)),
            Some(QWeight::Blocks {
                groups,
                rows_per_group,
            }) => {
                let g = rows.start / (*rows_per_group).max(1);
                let q = groups
                    .get(g)
                    .filter(|_| rows.len() == *rows_per_group || groups.len() == 1)
                    .ok_or_else(|| format!("rows {rows:?} are not a group of `{weight}`"))?;
                let xt = Tensor::from_slice(x, (m, k), &Device::Cpu).map_err(|e| e.to_string())?;
                let y = q.forward(&xt).map_err(|e| e.to_string())?;
                let y = if groups.len() == 1 && rows.len() != *rows_per_group {
                    y.narrow(1, rows.start, rows.len())
                        .map_err(|e| e.to_string())?
                } else {
                    y
                };
                y.flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| e.to_string())
            }
            None => Err(format!("no matmul weight `{weight}`")),
        }
    }
}

/// Softmax over the last dimension unless the model already ends with one.
pub fn probabilities(arch: &Architecture, output: &Tensor) -> candle_core::Result<Tensor> {
    if arch.ends_with_softmax() {
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
        assert_eq!(infos[5].kind, "linear");
        assert_eq!(infos[5].name.as_deref(), Some("fc"));
        assert_eq!(infos[2].name, None);
    }

    #[test]
    fn inconsistent_architectures_are_rejected() {
        let mut arch = mlp();
        arch.layers.remove(4); // no flatten before the linear layer
        let err = arch.layer_infos().unwrap_err();
        assert!(err.contains("add a flatten layer"), "{err}");
    }

    fn weights_for(arch: &Architecture) -> FloatWeights {
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
        FloatWeights { tensors }
    }

    #[test]
    fn the_reference_matches_f32_within_float_error() {
        let arch: Architecture = serde_saphyr::from_str(
            "name: t\ninput_shape: [2, 5, 5]\nlayers:\n  - {type: conv2d, name: c, in_channels: 2, out_channels: 3, kernel: 3, stride: 2, padding: 1}\n  - {type: batchnorm, name: bn, features: 3}\n  - {type: gelu}\n  - {type: avgpool, kernel: 3}\n  - {type: flatten}\n  - {type: layernorm, name: ln, features: 3}\n  - {type: linear, name: fc, in: 3, out: 4}\n  - {type: tanh}\n  - {type: softmax}\n",
        )
        .unwrap();
        let weights = weights_for(&arch);
        let graph = arch.graph().unwrap();
        let sample: Vec<f32> = (0..50).map(|i| (i % 7) as f32 / 7.0 - 0.3).collect();
        let f = exec::forward(
            &graph,
            &weights.params().unwrap(),
            exec::Tensor::new(vec![1, 2, 5, 5], sample.clone()),
            None,
        )
        .unwrap();
        let mut rows = 0;
        let mut observe = |_: &str, _: usize, x: &[f64], k: usize| rows += x.len() / k;
        let r = exec::forward(
            &graph,
            &weights.reference().unwrap(),
            exec::Tensor::new(vec![1, 2, 5, 5], sample.iter().map(|&v| v as f64).collect()),
            Some(&mut observe),
        )
        .unwrap();
        assert_eq!(rows, 9 + 1, "9 conv patches and one linear row");
        for (a, b) in f.data.iter().zip(&r.data) {
            assert!((*a as f64 - b).abs() < 1e-5, "{:?} vs {:?}", f.data, r.data);
        }
        // And against candle's own convolution for the first layer.
        let x = Tensor::from_vec(sample, (1, 2, 5, 5), &Device::Cpu).unwrap();
        let w = &weights.tensors["c.weight"];
        let b = weights.tensors["c.bias"].reshape((1, 3, 1, 1)).unwrap();
        let expected = x.conv2d(w, 1, 2, 1, 1).unwrap().broadcast_add(&b).unwrap();
        let one: Architecture = serde_saphyr::from_str(
            "name: c\ninput_shape: [2, 5, 5]\nlayers:\n  - {type: conv2d, name: c, in_channels: 2, out_channels: 3, kernel: 3, stride: 2, padding: 1}\n",
        )
        .unwrap();
        let got = forward(&one, &weights_for(&one).params().unwrap(), &x).unwrap();
        let diff = (expected - got)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-4, "{diff}");
    }
}

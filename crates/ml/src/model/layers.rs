//! The chain format (SPEC.md, "Models"): `layers:` applied in order, as the first edgebuild
//! models were written. [`to_graph`] turns a chain into graph nodes, each layer one node whose
//! weights keep their PyTorch `state_dict` names, so that a chain and its graph are one model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::graph::RawNode;

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

    pub fn name(&self) -> Option<&str> {
        match self {
            Layer::Linear { name, .. }
            | Layer::Conv2d { name, .. }
            | Layer::Batchnorm { name, .. }
            | Layer::Layernorm { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// The nodes, weights (with shapes) and report labels of a chain: layer `i` reads tensor
/// `t{i}` (the input is `t0`) and writes `t{i+1}`.
pub struct Chain {
    pub input: String,
    pub nodes: Vec<RawNode>,
    pub weights: BTreeMap<String, Vec<usize>>,
    /// Per node: the layer kind and name a report shows.
    pub kinds: Vec<(String, Option<String>)>,
}

/// Turns a chain into graph nodes, checking each layer against the shape it receives so an
/// inconsistent chain gets a message in its own terms.
pub fn to_graph(input_shape: &[usize], layers: &[Layer]) -> Result<Chain, String> {
    let mut shape = input_shape.to_vec();
    let mut nodes = Vec::new();
    let mut weights = BTreeMap::new();
    let mut kinds = Vec::new();
    let tensor = |i: usize| format!("t{i}");
    for (index, layer) in layers.iter().enumerate() {
        let at = |msg: String| format!("layer {index} ({}): {msg}", layer.kind());
        if let Some(field) = layer.zero_size() {
            return Err(at(format!("`{field}` must be at least 1")));
        }
        let mut node = |op: &str, inputs: Vec<String>, attrs: serde_json::Value| {
            let mut all = vec![tensor(index)];
            all.extend(inputs);
            nodes.push(RawNode {
                op: op.to_string(),
                name: format!("{}{index}", layer.kind()),
                inputs: all,
                outputs: vec![tensor(index + 1)],
                attrs: attrs
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
            });
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
                let w = format!("{name}.weight");
                weights.insert(w.clone(), vec![*out_features, *in_features]);
                let mut inputs = vec![w];
                if *bias {
                    let b = format!("{name}.bias");
                    weights.insert(b.clone(), vec![*out_features]);
                    inputs.push(b);
                }
                node("Gemm", inputs, serde_json::json!({"transB": true}));
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
                let out = |size: usize| {
                    super::graph::window_out(size, *padding, *padding, *kernel, *stride, 1, false)
                };
                let (Some(oh), Some(ow)) = (out(h), out(w)) else {
                    return Err(at(format!("kernel {kernel} does not fit input {h}×{w}")));
                };
                let wname = format!("{name}.weight");
                weights.insert(
                    wname.clone(),
                    vec![*out_channels, *in_channels, *kernel, *kernel],
                );
                let mut inputs = vec![wname];
                if *bias {
                    let b = format!("{name}.bias");
                    weights.insert(b.clone(), vec![*out_channels]);
                    inputs.push(b);
                }
                node(
                    "Conv",
                    inputs,
                    serde_json::json!({
                        "kernel_shape": [kernel, kernel],
                        "strides": [stride, stride],
                        "pads": [padding, padding, padding, padding],
                    }),
                );
                shape = vec![*out_channels, oh, ow];
            }
            Layer::Batchnorm {
                name,
                features,
                eps,
            } => {
                if shape.first() != Some(features) {
                    return Err(at(format!(
                        "expects {features} channels but gets shape {shape:?}"
                    )));
                }
                let inputs: Vec<String> = ["weight", "bias", "running_mean", "running_var"]
                    .iter()
                    .map(|s| format!("{name}.{s}"))
                    .collect();
                for t in &inputs {
                    weights.insert(t.clone(), vec![*features]);
                }
                node(
                    "BatchNormalization",
                    inputs,
                    serde_json::json!({"epsilon": eps}),
                );
            }
            Layer::Layernorm {
                name,
                features,
                eps,
            } => {
                if shape.last() != Some(features) {
                    return Err(at(format!(
                        "normalizes {features} features but gets shape {shape:?}"
                    )));
                }
                let inputs: Vec<String> = ["weight", "bias"]
                    .iter()
                    .map(|s| format!("{name}.{s}"))
                    .collect();
                for t in &inputs {
                    weights.insert(t.clone(), vec![*features]);
                }
                node(
                    "LayerNormalization",
                    inputs,
                    serde_json::json!({"axis": -1, "epsilon": eps}),
                );
            }
            Layer::Flatten => {
                node("Flatten", Vec::new(), serde_json::json!({"axis": 1}));
                shape = vec![shape.iter().product()];
            }
            Layer::Maxpool { kernel, stride } | Layer::Avgpool { kernel, stride } => {
                let [c, h, w] = shape[..] else {
                    return Err(at(format!(
                        "expects [channels, height, width] but gets {shape:?}"
                    )));
                };
                let s = stride.unwrap_or(*kernel);
                let out = |size: usize| super::graph::window_out(size, 0, 0, *kernel, s, 1, false);
                let (Some(oh), Some(ow)) = (out(h), out(w)) else {
                    return Err(at(format!("pool {kernel} does not fit input {h}×{w}")));
                };
                let op = if matches!(layer, Layer::Maxpool { .. }) {
                    "MaxPool"
                } else {
                    "AveragePool"
                };
                node(
                    op,
                    Vec::new(),
                    serde_json::json!({"kernel_shape": [kernel, kernel], "strides": [s, s]}),
                );
                shape = vec![c, oh, ow];
            }
            Layer::Relu => node("Relu", Vec::new(), serde_json::json!({})),
            Layer::Gelu => node("Gelu", Vec::new(), serde_json::json!({})),
            Layer::Silu => node("Silu", Vec::new(), serde_json::json!({})),
            Layer::Sigmoid => node("Sigmoid", Vec::new(), serde_json::json!({})),
            Layer::Tanh => node("Tanh", Vec::new(), serde_json::json!({})),
            Layer::Softmax => node("Softmax", Vec::new(), serde_json::json!({"axis": -1})),
        }
        kinds.push((layer.kind().to_string(), layer.name().map(str::to_string)));
    }
    Ok(Chain {
        input: tensor(0),
        nodes,
        weights,
        kinds,
    })
}

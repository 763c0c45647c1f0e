//! `report`: what a reviewer reads at a glance. Size of the binary (per tensor: type, bytes, bits
//! per weight), parameters, MACs and activation memory per layer, a peak RAM estimate, and a
//! predicted latency per device profile from a roofline per layer: max(FLOPs / peak throughput,
//! bytes moved / bandwidth), summed.
//!
//! Everything here is computed from the GGUF and the profiles, never measured, so `report.json`
//! and `report.md` are deterministic (SPEC.md, "Volatile outputs"). Measured latency is the `measure` op's
//! volatile output.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};

use super::evaluate::round6;
use crate::model::Architecture;
use edgebuild_engine::op::{Op, OpContext, OpError, OpOutcome};

pub struct Report;

/// A target device, from a profiles file (SPEC.md, "Device profiles").
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    pub description: String,
    /// Sustained f32 multiply-add throughput, in GFLOP/s (2 FLOPs per MAC).
    pub peak_gflops: f64,
    /// Sustained memory bandwidth, in GB/s.
    pub bandwidth_gbps: f64,
    /// Storage for the model binary (flash), in bytes.
    pub storage_bytes: u64,
    /// RAM for activations, in bytes.
    pub ram_bytes: u64,
    /// The emulated board a `firmware` stage runs on (SPEC.md, "`firmware`").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board: Option<String>,
    /// The core clock, in MHz, that converts instructions to milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_mhz: Option<f64>,
    /// Where each number comes from.
    #[serde(default)]
    pub sources: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilesFile {
    pub profiles: BTreeMap<String, DeviceProfile>,
}

impl ProfilesFile {
    pub fn load(path: &Path) -> Result<ProfilesFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: ProfilesFile =
            serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        for (name, p) in &file.profiles {
            for (field, value) in [
                ("peak_gflops", p.peak_gflops),
                ("bandwidth_gbps", p.bandwidth_gbps),
            ] {
                if !(value.is_finite() && value > 0.0) {
                    return Err(format!(
                        "{}: profile `{name}`: {field} must be a positive number, not {value}",
                        path.display()
                    ));
                }
            }
        }
        Ok(file)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportParams {
    /// Profiles to predict for (default: all in the file).
    #[serde(default)]
    profiles: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TensorRow {
    pub name: String,
    #[serde(rename = "type")]
    pub qtype: String,
    pub shape: Vec<usize>,
    pub params: u64,
    pub bytes: u64,
    pub bits_per_weight: f64,
    pub reason: String,
}

/// The per-tensor table of a GGUF written by `quantize`.
pub fn tensor_rows(path: &Path) -> Result<(Architecture, u64, Vec<TensorRow>), OpError> {
    let bytes = std::fs::metadata(path)
        .map_err(|e| OpError::Failed(format!("{}: {e}", path.display())))?
        .len();
    let model = crate::model::QuantModel::load(path).map_err(OpError::BadInput)?;
    let mut file = std::fs::File::open(path).map_err(|e| OpError::Failed(e.to_string()))?;
    let content = gguf_file::Content::read(&mut file).map_err(super::candle)?;
    let decisions: serde_json::Value =
        match content.metadata.get(crate::model::gguf_keys::QUANTIZATION) {
            Some(gguf_file::Value::String(s)) => serde_json::from_str(s).unwrap_or_default(),
            _ => serde_json::Value::Null,
        };
    let mut rows = Vec::new();
    for spec in model.arch.tensor_specs().map_err(OpError::BadInput)? {
        let info = &content.tensor_infos[&spec.name];
        let q = info
            .read(
                &mut file,
                content.tensor_data_offset,
                &candle_core::Device::Cpu,
            )
            .map_err(super::candle)?;
        let params = spec.shape.iter().product::<usize>() as u64;
        let size = q.storage_size_in_bytes() as u64;
        rows.push(TensorRow {
            name: spec.name.clone(),
            qtype: model.types[&spec.name].clone(),
            shape: info.shape.dims().to_vec(),
            params,
            bytes: size,
            bits_per_weight: round6(size as f64 * 8.0 / params as f64),
            reason: decisions["tensors"][&spec.name]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        });
    }
    Ok((model.arch, bytes, rows))
}

impl Op for Report {
    fn name(&self) -> &'static str {
        "report"
    }

    fn version(&self) -> u32 {
        1
    }

    fn check(&self, stage: &edgebuild_engine::stage::Stage) -> Result<(), String> {
        edgebuild_engine::op::check_ports(
            stage,
            &["model", "profiles"],
            &[],
            &["report", "summary"],
        )
    }

    fn run(&self, ctx: &OpContext) -> Result<OpOutcome, OpError> {
        let params: ReportParams = edgebuild_engine::op::params(ctx)?;
        let (arch, file_bytes, tensors) = tensor_rows(ctx.input("model")?)?;
        let profiles = ProfilesFile::load(ctx.input("profiles")?).map_err(OpError::BadInput)?;
        let selected: Vec<(String, DeviceProfile)> = match &params.profiles {
            None => profiles.profiles.clone().into_iter().collect(),
            Some(names) => names
                .iter()
                .map(|n| {
                    profiles
                        .profiles
                        .get(n)
                        .cloned()
                        .map(|p| (n.clone(), p))
                        .ok_or_else(|| {
                            OpError::BadInput(format!(
                                "{}: no device profile `{n}` in {}",
                                ctx.stage_id,
                                ctx.input("profiles")
                                    .map(|p| p.display().to_string())
                                    .unwrap_or_default()
                            ))
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        let graph = arch.graph().map_err(OpError::BadInput)?;
        let infos = &graph.infos;
        let weight_bytes_of = |layer: &crate::model::LayerInfo| -> u64 {
            layer
                .tensors
                .iter()
                .filter_map(|t| tensors.iter().find(|r| r.name == t.name))
                .map(|r| r.bytes)
                .sum()
        };
        // Activations: the peak of the tensors live at once in node order (SPEC.md, "`report`").
        let peak_activation = graph.peak_activation_bytes();
        let mut layers = Vec::new();
        for layer in infos {
            layers.push(serde_json::json!({
                "index": layer.index,
                "kind": layer.kind,
                "name": layer.name,
                "output_shape": layer.output_shape,
                "params": layer.params,
                "macs": layer.macs,
                "weight_bytes": weight_bytes_of(layer),
                "activation_bytes": layer.activation_bytes,
            }));
        }
        // Parameters as the layers count them: BatchNorm's running statistics are buffers.
        let total_params: u64 = infos.iter().map(|l| l.params).sum();
        let total_weight_bytes: u64 = tensors.iter().map(|t| t.bytes).sum();
        let total_macs: u64 = infos.iter().map(|l| l.macs).sum();

        let mut predictions = BTreeMap::new();
        for (name, profile) in &selected {
            let mut seconds = 0f64;
            for layer in infos {
                let elementwise = layer.activation_bytes / 4;
                let flops = 2.0 * layer.macs as f64 + elementwise as f64;
                let moved =
                    (weight_bytes_of(layer) + layer.input_bytes + layer.activation_bytes) as f64;
                seconds += (flops / (profile.peak_gflops * 1e9))
                    .max(moved / (profile.bandwidth_gbps * 1e9));
            }
            predictions.insert(
                name.clone(),
                serde_json::json!({
                    "description": profile.description,
                    "latency_ms": round6(seconds * 1e3),
                    "fits_storage": file_bytes <= profile.storage_bytes,
                    "fits_ram": peak_activation <= profile.ram_bytes,
                }),
            );
        }
        let report = serde_json::json!({
            "model": arch.name,
            "binary": {
                "bytes": file_bytes,
                "weight_bytes": total_weight_bytes,
                "bits_per_weight": round6(total_weight_bytes as f64 * 8.0 / total_params.max(1) as f64),
            },
            "params": total_params,
            "macs": total_macs,
            "ram": {
                "peak_activation_bytes": peak_activation,
                "with_weights_bytes": peak_activation + total_weight_bytes,
            },
            "tensors": tensors,
            "layers": layers,
            "predicted": predictions,
        });
        edgebuild_engine::op::write_json(ctx.output("report")?, &report)?;
        edgebuild_engine::op::write_output(ctx.output("summary")?, markdown(&report).as_bytes())?;
        Ok(OpOutcome::Success)
    }
}

/// The report as a Markdown page.
fn markdown(report: &serde_json::Value) -> String {
    let mut md = String::new();
    let model = report["model"].as_str().unwrap_or_default();
    md.push_str(&format!("# Model report: {model}\n\n"));
    md.push_str(&format!(
        "| binary | weights | params | bits/weight | MACs | peak activations |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n| {} B | {} B | {} | {} | {} | {} B |\n\n",
        report["binary"]["bytes"], report["binary"]["weight_bytes"], report["params"], report["binary"]["bits_per_weight"], report["macs"], report["ram"]["peak_activation_bytes"]
    ));
    md.push_str("## Predicted latency (roofline)\n\n| profile | latency | fits storage | fits RAM |\n| --- | ---: | :---: | :---: |\n");
    if let Some(predicted) = report["predicted"].as_object() {
        for (name, p) in predicted {
            let yes = |v: &serde_json::Value| {
                if v.as_bool() == Some(true) {
                    "yes"
                } else {
                    "**no**"
                }
            };
            md.push_str(&format!(
                "| {name} | {:.4} ms | {} | {} |\n",
                p["latency_ms"].as_f64().unwrap_or_default(),
                yes(&p["fits_storage"]),
                yes(&p["fits_ram"])
            ));
        }
    }
    md.push_str("\n## Tensors\n\n| tensor | type | shape | bytes | bits/weight | why |\n| --- | --- | --- | ---: | ---: | --- |\n");
    for t in report["tensors"].as_array().into_iter().flatten() {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            t["name"].as_str().unwrap_or_default(),
            t["type"].as_str().unwrap_or_default(),
            t["shape"],
            t["bytes"],
            t["bits_per_weight"],
            t["reason"].as_str().unwrap_or_default()
        ));
    }
    md.push_str("\n## Layers\n\n| # | layer | output | params | MACs | weight bytes | activation bytes |\n| ---: | --- | --- | ---: | ---: | ---: | ---: |\n");
    for l in report["layers"].as_array().into_iter().flatten() {
        let name = l["name"]
            .as_str()
            .map(|n| format!(" `{n}`"))
            .unwrap_or_default();
        md.push_str(&format!(
            "| {} | {}{name} | {} | {} | {} | {} | {} |\n",
            l["index"],
            l["kind"].as_str().unwrap_or_default(),
            l["output_shape"],
            l["params"],
            l["macs"],
            l["weight_bytes"],
            l["activation_bytes"]
        ));
    }
    md
}

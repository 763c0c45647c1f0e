//! `edgebuild init --onnx MODEL.onnx` (SPEC.md, "`edgebuild init`"): a pipeline that starts
//! with the `import` stage.
//!
//! The model is imported once here, exactly as the `import` stage will, so that a file edgebuild
//! cannot read is refused now (exit 2) and the params come from the model: its input shape (the
//! synthetic data's shape), its number of classes (it must be a classifier), its MACs (how many
//! synthetic samples a build can afford) and its matmul weights' rows (the GGUF type whose
//! blocks fit them). Without `--calibration`/`--heldout`, the data are `dataset` stages labelled
//! by the float model, and the gates are agreement with float and KL divergence; with them, the
//! gate is the accuracy drop on the held-out labels.

use std::path::Path;

use edgebuild_ml::model::TensorSpec;
use edgebuild_ml::onnx::{ImportOptions, import};

use super::{InitOptions, PROFILES_PATH, Written, ask, yaml_string};
use crate::error::{Error, Result};

/// The held-out set's MAC budget: the largest of 512, 256, 128 samples whose f64 reference
/// forward passes stay under 2^32 MACs (64 samples otherwise).
const HELDOUT_MACS: u64 = 1 << 32;

/// Agreement and KL thresholds of the generated gates (those of the MLPerf Tiny pipelines).
const MIN_AGREEMENT: f64 = 0.95;
const MAX_KLD_P99: f64 = 0.1;

/// The GGUF type whose blocks fit the model's matmul weights, and why: `q4_k` when the rows
/// of at least 90% of the matmul parameters are a multiple of its 256-value blocks, else `q8_0`
/// (32-value blocks). Rows that fit neither fall back in `quantize` (SPEC.md, "`quantize`").
pub fn choose_type(specs: &[TensorSpec]) -> (&'static str, String) {
    let matmul: Vec<(usize, u64)> = specs
        .iter()
        .filter(|s| s.matmul)
        .map(|s| {
            (
                s.shape[1..].iter().product::<usize>(),
                s.shape.iter().product::<usize>() as u64,
            )
        })
        .collect();
    let total: u64 = matmul.iter().map(|(_, p)| p).sum();
    if total == 0 {
        return ("q8_0", "q8_0: the model has no matmul weight".into());
    }
    let fit = |block: usize| -> (usize, f64) {
        let fitting: Vec<&(usize, u64)> = matmul.iter().filter(|(k, _)| k % block == 0).collect();
        let params: u64 = fitting.iter().map(|(_, p)| p).sum();
        (fitting.len(), params as f64 / total as f64)
    };
    // Floored, so that "100%" is never said of a share below it.
    let pct = |share: f64| format!("{}%", (100.0 * share).floor());
    let ((k_count, k_share), (q_count, q_share)) = (fit(256), fit(32));
    let n = matmul.len();
    if k_share >= 0.9 {
        let rest = if k_count < n {
            "; the others fall back to q8_0 or f16"
        } else {
            ""
        };
        (
            "q4_k",
            format!(
                "q4_k: the rows of {k_count} of {n} matmul weights ({} of their parameters) fit its 256-value blocks{rest}",
                pct(k_share)
            ),
        )
    } else {
        let rest = if q_count < n {
            "; the others fall back to f16"
        } else {
            ""
        };
        (
            "q8_0",
            format!(
                "q8_0: the rows of {q_count} of {n} matmul weights ({} of their parameters) fit its 32-value blocks, {} the 256 of K-quants{rest}",
                pct(q_share),
                pct(k_share)
            ),
        )
    }
}

/// Calibration and held-out sample counts for a model of `macs` per sample.
pub fn sample_counts(macs: u64) -> (usize, usize) {
    let heldout = [512u64, 256, 128]
        .into_iter()
        .find(|n| n.saturating_mul(macs.max(1)) <= HELDOUT_MACS)
        .unwrap_or(64) as usize;
    (heldout / 4, heldout)
}

/// A file stem from the ONNX file's name: other characters become `-`.
fn default_name(path: &Path) -> String {
    let stem: String = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if stem.is_empty() {
        "model".into()
    } else {
        stem
    }
}

/// Where the pipeline's data come from.
enum Data {
    /// `dataset` stages: synthetic inputs in `range`, labelled by the float model.
    Synthetic {
        range: [f32; 2],
        calibration: usize,
        heldout: usize,
    },
    /// The user's data sets (workspace paths).
    Files {
        calibration: String,
        heldout: String,
    },
}

pub(super) fn init(
    root: &Path,
    start: &Path,
    o: InitOptions,
    interactive: bool,
) -> Result<Written> {
    let given = o.onnx.clone().expect("--onnx");
    let onnx = super::workspace_path(root, start, &given, "ONNX model")?;
    let name = match &o.name {
        Some(n) => n.clone(),
        None if interactive => ask("Pipeline name", Some(&default_name(&given)))?,
        None => default_name(&given),
    };
    super::check_name(&name)?;
    let range = match o.input_range.as_deref() {
        None => [0.0, 1.0],
        Some(&[lo, hi]) if lo.is_finite() && hi.is_finite() && lo < hi => [lo, hi],
        Some(other) => {
            return Err(Error::usage(
                format!("--input-range {other:?} is not two finite, increasing numbers"),
                Some("for example --input-range 0,255".into()),
            ));
        }
    };
    let data = match (&o.calibration, &o.heldout) {
        (None, None) => None,
        (Some(c), Some(h)) => Some(Data::Files {
            calibration: super::workspace_path(root, start, c, "calibration set")?,
            heldout: super::workspace_path(root, start, h, "held-out set")?,
        }),
        _ => {
            return Err(Error::usage(
                "--calibration and --heldout go together",
                Some(
                    "give both (your data sets), or neither (synthetic inputs labelled by the float model)"
                        .into(),
                ),
            ));
        }
    };

    // The model, imported as the stage will import it.
    let options = ImportOptions {
        name: Some(name.clone()),
        input_shape: o.input_shape.clone(),
        ..Default::default()
    };
    let imported = import(&root.join(&onnx), &options).map_err(|e| {
        let help = if e.contains("is dynamic") {
            "pass one sample's shape to init: --input-shape D1,D2,..."
        } else {
            "edgebuild init reads the model now, as the pipeline's import stage will (SPEC.md, \"`import`\")"
        };
        Error::usage(format!("ONNX model {onnx}: {e}"), Some(help.into()))
    })?;
    let not_a_classifier = |e: String| {
        Error::usage(
            format!("ONNX model {onnx}: {e}"),
            Some("the generated pipeline evaluates a classifier: one score per class".into()),
        )
    };
    let classes = imported.arch.classes().map_err(not_a_classifier)?;
    let graph = imported.arch.graph().map_err(not_a_classifier)?;
    let macs: u64 = graph.infos.iter().map(|i| i.macs).sum();
    let data = data.unwrap_or_else(|| {
        let (calibration, heldout) = sample_counts(macs);
        Data::Synthetic {
            range,
            calibration,
            heldout,
        }
    });

    let (chosen, why) = choose_type(&graph.tensor_specs());
    let (quant_type, why) = match &o.quant_type {
        Some(t) => (t.clone(), format!("{t}, as asked at init")),
        None if interactive => {
            let t = ask("Quantization type", Some(chosen))?;
            let why = if t == chosen {
                why
            } else {
                format!("{t}, as asked at init")
            };
            (t, why)
        }
        None => (chosen.to_string(), why),
    };
    if edgebuild_ml::model::parse_type(&quant_type).is_none() {
        return Err(Error::usage(
            format!("unknown quantization type `{quant_type}`"),
            Some(format!("one of: {}", edgebuild_ml::model::TYPES.join(", "))),
        ));
    }
    let device = match &o.device {
        Some(d) => d.clone(),
        None if interactive => ask("Target device profile", Some("cortex-m7"))?,
        None => "cortex-m7".into(),
    };
    let profile = super::device_profile(root, &device)?;

    let yaml = pipeline_yaml(&Answers {
        name: &name,
        onnx: &onnx,
        input_shape: o.input_shape.as_deref(),
        input_dims: &imported.arch.input_shape,
        classes,
        macs,
        data: &data,
        quant_type: &quant_type,
        why: &why,
        device: &device,
        max_size: o.max_size.unwrap_or(profile.storage_bytes),
        max_latency_ms: o.max_latency_ms,
        max_accuracy_drop: o.max_accuracy_drop.unwrap_or(2.0),
        ram: profile.ram_bytes,
    });
    super::write_scaffold(root, &name, yaml, o.force)
}

/// Everything the generated pipeline says.
struct Answers<'a> {
    name: &'a str,
    onnx: &'a str,
    /// `--input-shape`, passed on to the import stage.
    input_shape: Option<&'a [usize]>,
    input_dims: &'a [usize],
    classes: usize,
    macs: u64,
    data: &'a Data,
    quant_type: &'a str,
    why: &'a str,
    device: &'a str,
    max_size: u64,
    max_latency_ms: Option<f64>,
    max_accuracy_drop: f64,
    ram: u64,
}

fn pipeline_yaml(a: &Answers) -> String {
    let q = yaml_string;
    let out = format!("out/{}", a.name);
    let mut y = String::new();
    let dims = |d: &[usize]| {
        d.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    y.push_str(&format!(
        "version: 1\ndescription: {}\nstages:\n",
        q(&format!(
            "Ship {} ({} classes, input [{}], {} MACs) to {}: import the ONNX model, make data, quantize to GGUF, evaluate against float, report, gate, package.",
            a.name,
            a.classes,
            dims(a.input_dims),
            a.macs,
            a.device
        ))
    ));
    let import_params = match a.input_shape {
        Some(s) => format!("{{name: {}, input_shape: [{}]}}", q(a.name), dims(s)),
        None => format!("{{name: {}}}", q(a.name)),
    };
    y.push_str(&format!(
        r#"  import:
    description: "The ONNX model as an edgebuild graph with safetensors weights (constants and batchnorms folded)."
    op: import
    inputs: {{model: {onnx}}}
    outputs:
      architecture: {out}/model.json
      weights: {out}/weights.safetensors
      report: {out}/import.json
    params: {import_params}

"#,
        onnx = q(a.onnx),
    ));
    let (calibration, heldout) = match a.data {
        Data::Synthetic {
            range,
            calibration,
            heldout,
        } => {
            let [lo, hi] = range;
            for (stage, samples, seed, what) in [
                (
                    "calibration",
                    calibration,
                    1,
                    "Synthetic smooth inputs over the input range, labelled by the float model's own top-1.",
                ),
                (
                    "heldout",
                    heldout,
                    2,
                    "Held-out inputs drawn like the calibration set from another seed.",
                ),
            ] {
                y.push_str(&format!(
                    r#"  {stage}:
    description: "{what}"
    op: dataset
    inputs: {{weights: {out}/weights.safetensors, architecture: {out}/model.json}}
    outputs: {{data: {out}/{stage}.npz}}
    params: {{samples: {samples}, seed: {seed}, distribution: smooth, range: [{lo:?}, {hi:?}]}}

"#
                ));
            }
            (
                format!("{out}/calibration.npz"),
                format!("{out}/heldout.npz"),
            )
        }
        Data::Files {
            calibration,
            heldout,
        } => (q(calibration), q(heldout)),
    };
    y.push_str(&format!(
        r#"  imatrix:
    description: "Importance matrix of the float model over the calibration set."
    op: imatrix
    inputs:
      weights: {out}/weights.safetensors
      architecture: {out}/model.json
      calibration: {calibration}
    outputs: {{imatrix: {out}/imatrix.json}}

  quantize:
    description: {why}
    op: quantize
    inputs:
      weights: {out}/weights.safetensors
      architecture: {out}/model.json
      imatrix: {out}/imatrix.json
    outputs: {{model: {out}/model.gguf}}
    params: {{type: {quant_type}}}

  evaluate:
    description: {evaluate}
    op: evaluate
    inputs:
      weights: {out}/weights.safetensors
      architecture: {out}/model.json
      model: {out}/model.gguf
      data: {heldout}
    outputs: {{metrics: {out}/metrics.json}}

  report:
    description: "Size, parameters, MACs, RAM and predicted latency per device profile."
    op: report
    inputs:
      model: {out}/model.gguf
      profiles: {PROFILES_PATH}
    outputs: {{report: {out}/report.json, summary: {out}/report.md}}

  gates:
    description: {gates}
    op: gate
    inputs:
      metrics: {out}/metrics.json
      report: {out}/report.json
    outputs: {{verdict: {out}/gates.json}}
    params:
      checks:
"#,
        why = q(a.why),
        quant_type = q(a.quant_type),
        evaluate = q(match a.data {
            Data::Synthetic { .. } =>
                "Float vs quantized on the held-out set; the labels are the float model's own top-1, so top-1 is agreement with float, not accuracy.",
            Data::Files { .. } => "Float vs quantized on the held-out set and its labels.",
        }),
        gates = q(&format!(
            "{} the binary size, {}and the RAM of {}: a failure blocks packaging.",
            match a.data {
                Data::Synthetic { .. } => "Agreement with float, KL divergence,",
                Data::Files { .. } => "Accuracy drop against float,",
            },
            if a.max_latency_ms.is_some() {
                "the predicted latency "
            } else {
                ""
            },
            a.device
        )),
    ));
    let mut checks = Vec::new();
    match a.data {
        Data::Synthetic { .. } => {
            checks.push(format!(r#"{{name: "top-1 agreement with float", input: metrics, path: top1_agreement, min: {MIN_AGREEMENT}}}"#));
            checks.push(format!(r#"{{name: "p99 KL divergence", input: metrics, path: kld.p99, max: {MAX_KLD_P99}}}"#));
        }
        Data::Files { .. } => checks.push(format!(
            r#"{{name: "accuracy drop vs float (points)", input: metrics, path: accuracy_drop_points, max: {}}}"#,
            a.max_accuracy_drop
        )),
    }
    checks.push(format!(
        r#"{{name: "binary size (bytes)", input: report, path: binary.bytes, max: {}}}"#,
        a.max_size
    ));
    if let Some(ms) = a.max_latency_ms {
        checks.push(format!(
            "{{name: {}, input: report, path: {}, max: {ms}}}",
            q(&format!("predicted latency on {} (ms)", a.device)),
            q(&format!("predicted.{}.latency_ms", a.device)),
        ));
    }
    checks.push(format!(
        r#"{{name: "peak RAM (bytes)", input: report, path: ram.peak_activation_bytes, max: {}}}"#,
        a.ram
    ));
    for c in checks {
        y.push_str(&format!("        - {c}\n"));
    }
    let symbol = format!("{}_model", a.name.replace(['-', '.'], "_"));
    y.push_str(&format!(
        r#"
  package:
    description: "The GGUF, a C header embedding it, and the manifest."
    op: package
    inputs:
      model: {out}/model.gguf
      gates: {out}/gates.json
      report: {out}/report.json
    outputs:
      gguf: {out}/package/{name}.gguf
      header: {out}/package/{symbol}.h
      manifest: {out}/package/manifest.json
    params: {{symbol: {symbol}, alignment: 32}}
"#,
        name = a.name,
    ));
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
            matmul: true,
            groups: 1,
        }
    }

    #[test]
    fn the_type_is_the_one_whose_blocks_fit() {
        // Rows of 256 for 99% of the parameters: q4_k.
        let (t, why) = choose_type(&[spec("a", &[512, 256]), spec("b", &[10, 27])]);
        assert_eq!(t, "q4_k");
        assert!(why.contains("1 of 2 matmul weights (99% of"), "{why}");
        assert!(why.contains("fall back"), "{why}");
        // Rows of 64 and 9 (a depthwise conv): q8_0, the 9s fall back to f16.
        let (t, why) = choose_type(&[spec("pw", &[64, 64, 1, 1]), spec("dw", &[64, 1, 3, 3])]);
        assert_eq!(t, "q8_0");
        assert!(why.contains("1 of 2 matmul weights (87% of"), "{why}");
        assert!(why.contains("0% the 256 of K-quants"), "{why}");
        // Everything fits 256: q4_k and no fallback.
        let (t, why) = choose_type(&[spec("a", &[8, 512])]);
        assert_eq!(t, "q4_k");
        assert!(!why.contains("fall back"), "{why}");
        assert_eq!(choose_type(&[]).0, "q8_0");
    }

    #[test]
    fn sample_counts_follow_the_macs() {
        assert_eq!(sample_counts(0), (128, 512));
        assert_eq!(sample_counts(2_656_768), (128, 512)); // DS-CNN
        assert_eq!(sample_counts(12_501_632), (64, 256)); // ResNet-8
        assert_eq!(sample_counts(1 << 30), (16, 64));
    }

    #[test]
    fn names_come_from_the_file() {
        assert_eq!(
            default_name(Path::new("models/kws_dscnn.onnx")),
            "kws_dscnn"
        );
        assert_eq!(default_name(Path::new("a b.v2.onnx")), "a-b-v2");
    }
}

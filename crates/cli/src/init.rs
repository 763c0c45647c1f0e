//! `edgebuild init`: a workspace for a user's own model, from a few answers (SPEC.md,
//! "`edgebuild init`").
//!
//! It writes a pipeline with the usual stages (imatrix → quantize → evaluate → report → gates →
//! package), the device profiles if the workspace has none, a `.gitignore` for the cache and the
//! outputs, and a CI workflow. Non-interactive with flags (scripts, tests); it asks for what is
//! missing when run in a terminal. It never overwrites a file unless told to. With `--onnx`, the
//! pipeline starts with the `import` stage and its params are chosen from the model ([`onnx`]).

mod onnx;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The default device profiles, written when the workspace has none.
const DEFAULT_PROFILES: &str = include_str!("../../../devices/profiles.yaml");
/// The CI example, written as the workspace's GitHub Actions workflow.
const CI_WORKFLOW: &str = include_str!("../../../examples/ci/github-actions.yml");
pub const WORKFLOW_PATH: &str = ".github/workflows/edgebuild.yml";
const PROFILES_PATH: &str = "devices/profiles.yaml";
const GITIGNORE_LINES: &[&str] = &["/cache/*", "!/cache/README.md", "/out/", "/.edgebuild/"];

/// Everything `init` needs; `None` is asked for in a terminal, an error otherwise.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InitOptions {
    /// Name of the pipeline (the file `pipelines/NAME.yaml`, outputs under `out/NAME/`).
    #[arg(long)]
    pub name: Option<String>,
    /// An ONNX model: the pipeline imports it (instead of --weights and --architecture).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["weights", "architecture"])]
    pub onnx: Option<PathBuf>,
    /// With --onnx: one sample's shape (without the batch), for an input with dynamic dimensions.
    #[arg(
        long,
        value_name = "D1,D2,...",
        value_delimiter = ',',
        requires = "onnx"
    )]
    pub input_shape: Option<Vec<usize>>,
    /// With --onnx and no data sets: the range of the synthetic inputs (default 0,1).
    #[arg(
        long,
        value_name = "LO,HI",
        value_delimiter = ',',
        allow_hyphen_values = true,
        requires = "onnx"
    )]
    pub input_range: Option<Vec<f32>>,
    /// The float weights (safetensors).
    #[arg(long, value_name = "PATH")]
    pub weights: Option<PathBuf>,
    /// The architecture file (YAML, see SPEC.md "Models").
    #[arg(long, value_name = "PATH")]
    pub architecture: Option<PathBuf>,
    /// Calibration samples for the importance matrix (.npz with `x`, or CSV).
    #[arg(long, value_name = "PATH")]
    pub calibration: Option<PathBuf>,
    /// Held-out samples with labels for the accuracy gates (.npz with `x` and `y`, or CSV).
    #[arg(long, value_name = "PATH")]
    pub heldout: Option<PathBuf>,
    /// The target device profile (a name in devices/profiles.yaml).
    #[arg(long)]
    pub device: Option<String>,
    /// Quantization type of the weights.
    #[arg(long = "type", value_name = "TYPE")]
    pub quant_type: Option<String>,
    /// Size budget of the model binary, in bytes.
    #[arg(long, value_name = "BYTES")]
    pub max_size: Option<u64>,
    /// Predicted latency budget on the device, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub max_latency_ms: Option<f64>,
    /// Largest accepted top-1 accuracy drop against the float model, in percentage points.
    #[arg(long, value_name = "POINTS")]
    pub max_accuracy_drop: Option<f64>,
    /// Overwrite files that exist.
    #[arg(long)]
    pub force: bool,
}

/// What `init` wrote.
#[derive(Debug)]
pub struct Written {
    pub files: Vec<String>,
    pub kept: Vec<String>,
}

fn ask(label: &str, default: Option<&str>) -> Result<String> {
    let mut input = dialoguer::Input::<String>::new().with_prompt(label);
    if let Some(default) = default {
        input = input.default(default.to_string());
    }
    input
        .interact_text()
        .map_err(|e| Error::usage(format!("cannot read the answer: {e}"), None))
}

/// Fills the missing answers: by asking in a terminal, with defaults otherwise; a missing path
/// without a terminal is an error naming every flag still needed.
fn complete(mut o: InitOptions, interactive: bool) -> Result<InitOptions> {
    let mut missing = Vec::new();
    for (field, flag, label) in [
        (&mut o.weights, "--weights", "Float weights (safetensors)"),
        (&mut o.architecture, "--architecture", "Architecture (YAML)"),
        (
            &mut o.calibration,
            "--calibration",
            "Calibration samples (.npz or CSV)",
        ),
        (
            &mut o.heldout,
            "--heldout",
            "Held-out samples with labels (.npz or CSV)",
        ),
    ] {
        if field.is_none() {
            if interactive {
                *field = Some(PathBuf::from(ask(label, None)?));
            } else {
                missing.push(flag);
            }
        }
    }
    if !missing.is_empty() {
        return Err(Error::usage(
            format!("init needs {}", missing.join(", ")),
            Some("pass them as flags, or run `edgebuild init` in a terminal to be asked".into()),
        ));
    }
    let defaults = InitOptions {
        name: Some("model".into()),
        device: Some("cortex-m7".into()),
        quant_type: Some("q4_k".into()),
        max_size: Some(262_144),
        max_latency_ms: Some(5.0),
        max_accuracy_drop: Some(2.0),
        ..Default::default()
    };
    macro_rules! answer {
        ($field:ident, $label:expr) => {
            if o.$field.is_none() {
                let default = defaults.$field.clone().expect("a default");
                o.$field = Some(if interactive {
                    ask($label, Some(&default.to_string()))?
                        .parse()
                        .map_err(|_| Error::usage(format!("not a valid {}", $label), None))?
                } else {
                    default
                });
            }
        };
    }
    answer!(name, "Pipeline name");
    answer!(device, "Target device profile");
    answer!(quant_type, "Quantization type");
    answer!(max_size, "Size budget (bytes)");
    answer!(max_latency_ms, "Latency budget on the device (ms)");
    answer!(max_accuracy_drop, "Accepted accuracy drop (points)");
    Ok(o)
}

/// A workspace-relative path for a file given on the command line, checked to exist.
fn workspace_path(root: &Path, start: &Path, given: &Path, what: &str) -> Result<String> {
    let full = start.join(given);
    let canonical = std::fs::canonicalize(&full).map_err(|_| {
        Error::usage(
            format!("{what} {} does not exist", given.display()),
            Some("give the path of an existing file".into()),
        )
    })?;
    let root = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
    let rel = canonical.strip_prefix(&root).map_err(|_| {
        Error::usage(
            format!("{what} {} is outside the workspace {}", given.display(), root.display()),
            Some("copy it into the workspace (or `edgebuild add` it): a pipeline's inputs live in its repository".into()),
        )
    })?;
    Ok(rel.to_string_lossy().into_owned())
}

fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// The pipeline file for the answers.
pub fn pipeline_yaml(
    name: &str,
    weights: &str,
    architecture: &str,
    calibration: &str,
    heldout: &str,
    ram_budget: u64,
    o: &InitOptions,
) -> String {
    let device = o.device.as_deref().unwrap_or_default();
    let out = format!("out/{name}");
    let q = yaml_string;
    format!(
        r#"version: 1
description: {description}
stages:
  imatrix:
    description: "Importance matrix of the float model over the calibration set."
    op: imatrix
    inputs:
      weights: {weights}
      architecture: {architecture}
      calibration: {calibration}
    outputs: {{imatrix: {out}/imatrix.json}}

  quantize:
    description: "Weights to GGUF; rows too short for the type fall back to q8_0 (the report says which)."
    op: quantize
    inputs:
      weights: {weights}
      architecture: {architecture}
      imatrix: {out}/imatrix.json
    outputs: {{model: {out}/model.gguf}}
    params: {{type: {quant_type}}}

  evaluate:
    description: "Float vs quantized on the held-out set."
    op: evaluate
    inputs:
      weights: {weights}
      architecture: {architecture}
      model: {out}/model.gguf
      data: {heldout}
    outputs: {{metrics: {out}/metrics.json}}

  report:
    description: "Size, parameters, MACs, RAM and predicted latency per device profile."
    op: report
    inputs:
      model: {out}/model.gguf
      profiles: {profiles}
    outputs: {{report: {out}/report.json, summary: {out}/report.md}}

  gates:
    description: "Accuracy against float, size and latency budgets: a failure blocks packaging."
    op: gate
    inputs:
      metrics: {out}/metrics.json
      report: {out}/report.json
    outputs: {{verdict: {out}/gates.json}}
    params:
      checks:
        - {{name: "accuracy drop vs float (points)", input: metrics, path: accuracy_drop_points, max: {drop}}}
        - {{name: "binary size (bytes)", input: report, path: binary.bytes, max: {size}}}
        - {{name: {latency_name}, input: report, path: {latency_path}, max: {latency}}}
        - {{name: "peak RAM (bytes)", input: report, path: ram.peak_activation_bytes, max: {ram}}}

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
        description = q(&format!(
            "Ship {name} to {device}: calibrate, quantize, evaluate, report, gate, package."
        )),
        weights = q(weights),
        architecture = q(architecture),
        calibration = q(calibration),
        heldout = q(heldout),
        out = out,
        quant_type = q(o.quant_type.as_deref().unwrap_or_default()),
        profiles = PROFILES_PATH,
        drop = o.max_accuracy_drop.unwrap_or_default(),
        size = o.max_size.unwrap_or_default(),
        latency = o.max_latency_ms.unwrap_or_default(),
        latency_name = q(&format!("predicted latency on {device} (ms)")),
        latency_path = q(&format!("predicted.{device}.latency_ms")),
        ram = ram_budget,
        symbol = format!("{}_model", name.replace(['-', '.'], "_")),
    )
}

/// Runs `init` in the workspace at `root` (created if needed); paths on the command line are
/// relative to `start`.
pub fn init(root: &Path, start: &Path, options: InitOptions) -> Result<Written> {
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if options.onnx.is_some() {
        return onnx::init(root, start, options, interactive);
    }
    let o = complete(options, interactive)?;
    let name = o.name.clone().expect("completed");
    check_name(&name)?;
    let rel = |given: &Option<PathBuf>, what: &str| {
        workspace_path(root, start, given.as_deref().expect("completed"), what)
    };
    let weights = rel(&o.weights, "weights")?;
    let architecture = rel(&o.architecture, "architecture")?;
    let calibration = rel(&o.calibration, "calibration set")?;
    let heldout = rel(&o.heldout, "held-out set")?;
    // Check the answers now rather than at the first build.
    edgebuild_ml::model::Architecture::load(&root.join(&architecture))
        .map_err(|e| Error::usage(format!("architecture {architecture}: {e}"), None))?;
    if edgebuild_ml::model::parse_type(o.quant_type.as_deref().unwrap_or_default()).is_none() {
        return Err(Error::usage(
            format!(
                "unknown quantization type `{}`",
                o.quant_type.as_deref().unwrap_or_default()
            ),
            Some(format!("one of: {}", edgebuild_ml::model::TYPES.join(", "))),
        ));
    }
    let device = o.device.clone().expect("completed");
    let profile = device_profile(root, &device)?;
    let yaml = pipeline_yaml(
        &name,
        &weights,
        &architecture,
        &calibration,
        &heldout,
        profile.ram_bytes,
        &o,
    );
    write_scaffold(root, &name, yaml, o.force)
}

/// A pipeline name must be a file stem.
fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::usage(
            format!("pipeline name `{name}` is not a file stem"),
            Some("use letters, digits, `-` and `_`".into()),
        ));
    }
    Ok(())
}

/// The device profile `device` from the workspace's profiles (the defaults when it has none).
fn device_profile(root: &Path, device: &str) -> Result<edgebuild_ml::ops::report::DeviceProfile> {
    let profiles_path = root.join(PROFILES_PATH);
    let profiles = if profiles_path.is_file() {
        edgebuild_ml::ops::report::ProfilesFile::load(&profiles_path)
    } else {
        serde_saphyr::from_str(DEFAULT_PROFILES).map_err(|e| e.to_string())
    }
    .map_err(|e| Error::usage(format!("device profiles: {e}"), None))?;
    profiles.profiles.get(device).cloned().ok_or_else(|| {
        Error::usage(
            format!("no device profile `{device}`"),
            Some(format!(
                "one of: {} (or add yours to {PROFILES_PATH})",
                profiles
                    .profiles
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        )
    })
}

/// Writes the pipeline `pipelines/NAME.yaml` (refused when it exists, unless `force`), the
/// default profiles and the CI workflow (kept when they exist), and the `.gitignore` lines;
/// every file atomically.
fn write_scaffold(root: &Path, name: &str, yaml: String, force: bool) -> Result<Written> {
    let pipeline_file = format!("{}/{name}.yaml", edgebuild_engine::spec::PIPELINES_DIR);
    let planned = [
        (pipeline_file, yaml, true),
        (
            PROFILES_PATH.to_string(),
            DEFAULT_PROFILES.to_string(),
            false,
        ),
        // One workflow serves every pipeline: kept when there is one.
        (WORKFLOW_PATH.to_string(), CI_WORKFLOW.to_string(), false),
    ];
    let existing: Vec<&str> = planned
        .iter()
        .filter(|(path, _, replace)| *replace && root.join(path).exists())
        .map(|(path, _, _)| path.as_str())
        .collect();
    if !existing.is_empty() && !force {
        return Err(Error::usage(
            format!("{} already exist(s)", existing.join(", ")),
            Some("pass --force to overwrite, or --name for another pipeline".into()),
        ));
    }
    let mut written = Written {
        files: Vec::new(),
        kept: Vec::new(),
    };
    for (path, content, replace) in planned {
        let full = root.join(&path);
        if !replace && full.exists() {
            written.kept.push(path);
            continue;
        }
        edgebuild_engine::files::write_atomic(&full, content.as_bytes())
            .map_err(|e| Error::io(&full, e))?;
        written.files.push(path);
    }
    let gitignore = root.join(".gitignore");
    let old = std::fs::read_to_string(&gitignore).unwrap_or_default();
    let mut new = old.clone();
    for line in GITIGNORE_LINES {
        if !old.lines().any(|l| l.trim() == *line) {
            if !new.is_empty() && !new.ends_with('\n') {
                new.push('\n');
            }
            new.push_str(line);
            new.push('\n');
        }
    }
    if new != old {
        edgebuild_engine::files::write_atomic(&gitignore, new.as_bytes())
            .map_err(|e| Error::io(&gitignore, e))?;
        written.files.push(".gitignore".into());
    }
    Ok(written)
}

//! `runtime`: an int8 model → the C99 device runtime for it (SPEC.md, "`runtime`"): the
//! runtime's kernels, the generated model source and header, all in one output directory. The
//! op compiles them for this host with `-std=c99 -Wall -Wextra -Werror`, runs every held-out
//! sample through them and compares each output with edgebuild's own int8 evaluation, bit for
//! bit. A mismatch is counted, not fatal (a gate judges it), and the first one is traced node by
//! node so the report names the first node whose output differs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::data::Dataset;
use crate::int8::Int8Model;
use crate::int8::codegen::{self, Generated};
use crate::toolchain;
use edgebuild_engine::op::{Op, OpContext, OpError, OpOutcome};

pub struct Runtime;

/// The host compiler the check builds with.
const HOST_CC: &str = "cc";
/// The most held-out samples the check reads (SPEC.md, "Limits").
pub const MAX_SAMPLES: usize = 100_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeParams {
    /// Check only the first N held-out samples (default: all).
    #[serde(default)]
    samples: Option<usize>,
    /// What the arena planner optimizes: `fast` (default) or `small`.
    #[serde(default)]
    arena: codegen::ArenaGoal,
}

/// A data set's samples, quantized to the int8 model's input (memory layout).
pub(crate) fn quantized_inputs(
    model: &Int8Model,
    path: &Path,
    limit: Option<usize>,
) -> Result<Vec<Vec<i8>>, String> {
    let data = Dataset::load(path, &model.input_shape)?;
    let n = limit.map_or(data.len(), |l| l.min(data.len()));
    if n == 0 {
        return Err(format!("{}: no samples", path.display()));
    }
    if n > MAX_SAMPLES {
        return Err(format!(
            "{}: {n} samples; the device check takes at most {MAX_SAMPLES} (params: samples)",
            path.display()
        ));
    }
    let flat = data
        .x
        .narrow(0, 0, n)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| e.to_string())?;
    let per = flat.len() / n;
    Ok(flat.chunks(per).map(|s| model.quantize_input(s)).collect())
}

/// The SHA-256 of a list of outputs, concatenated.
pub(crate) fn outputs_hash(outputs: &[Vec<i8>]) -> String {
    let mut h = Sha256::new();
    for o in outputs {
        h.update(o.iter().map(|&v| v as u8).collect::<Vec<u8>>());
    }
    hex::encode(h.finalize())
}

fn as_bytes(v: &[i8]) -> Vec<u8> {
    v.iter().map(|&x| x as u8).collect()
}

/// Writes the runtime sources and the generated model into `dir`.
pub fn write_sources(dir: &Path, generated: &Generated) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<(&str, &str)> = codegen::RUNTIME_FILES.to_vec();
    files.push(("eb_model.h", &generated.header));
    files.push(("eb_model.c", &generated.source));
    for (name, text) in files {
        let path = dir.join(name);
        edgebuild_engine::files::write_atomic(&path, text.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// The C files of a sources directory, sorted.
pub(crate) fn c_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .collect();
    v.sort();
    if !v.iter().any(|p| p.ends_with("eb_model.c")) {
        return Err(format!(
            "{}: no eb_model.c (the output of a `runtime` stage)",
            dir.display()
        ));
    }
    Ok(v)
}

/// The host harness that runs the generated runtime on held-out samples.
const HOST_HARNESS: &str = include_str!("../../runtime/harness/host_main.c");

/// Compiles `sources` with the host harness into `work/host`, warnings as errors.
fn build_host(sources: &Path, work: &Path, trace: bool) -> Result<PathBuf, OpError> {
    let harness = work.join("host_main.c");
    std::fs::write(&harness, HOST_HARNESS).map_err(|e| OpError::Failed(e.to_string()))?;
    let exe = work.join(if trace { "host_trace" } else { "host" });
    let mut args: Vec<String> = toolchain::STRICT_FLAGS
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["-O2".into(), "-I".into(), sources.display().to_string()]);
    if trace {
        args.push("-DEB_MODEL_TRACE".into());
    }
    args.extend(["-o".into(), exe.display().to_string()]);
    for f in c_files(sources).map_err(OpError::BadInput)? {
        args.push(f.display().to_string());
    }
    args.push(harness.display().to_string());
    toolchain::run(HOST_CC, &args, work, Duration::from_secs(600)).map_err(|e| match e {
        toolchain::RunError::Missing(m) => OpError::BadInput(m),
        e => OpError::Failed(format!("the runtime does not compile on this host: {e}")),
    })?;
    Ok(exe)
}

/// The records of a trace file: (node, output).
fn parse_trace(bytes: &[u8]) -> Vec<(u32, Vec<i8>)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let node = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let n = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        at += 8;
        let Some(data) = bytes.get(at..at.saturating_add(n)) else {
            break;
        };
        out.push((node, data.iter().map(|&b| b as i8).collect()));
        at += n;
    }
    out
}

/// The first node whose host output differs from the reference, on one sample.
fn first_divergence(
    model: &Int8Model,
    sources: &Path,
    work: &Path,
    sample: usize,
    inputs: &[Vec<i8>],
) -> Result<serde_json::Value, OpError> {
    let exe = build_host(sources, work, true)?;
    let trace = work.join("trace.bin");
    toolchain::run(
        &exe.display().to_string(),
        &[
            work.join("inputs.bin").display().to_string(),
            work.join("outputs_trace.bin").display().to_string(),
            sample.to_string(),
            trace.display().to_string(),
        ],
        work,
        Duration::from_secs(600),
    )
    .map_err(|e| OpError::Failed(format!("the traced host run: {e}")))?;
    let host = parse_trace(&std::fs::read(&trace).map_err(|e| OpError::Failed(e.to_string()))?);
    let mut reference: Vec<Vec<i8>> = Vec::new();
    model
        .run_with(&inputs[sample], |_, out| reference.push(out.to_vec()))
        .map_err(OpError::Failed)?;
    for (i, want) in reference.iter().enumerate() {
        let got = host.iter().find(|(n, _)| *n as usize == i).map(|(_, d)| d);
        if got != Some(want) {
            let node = &model.nodes[i];
            let values = got.map_or(0, |g| g.iter().zip(want).filter(|(a, b)| a != b).count());
            return Ok(serde_json::json!({
                "sample": sample,
                "node": i,
                "name": node.name,
                "kernel": node.kernel.name(),
                "values_differing": values,
            }));
        }
    }
    Ok(serde_json::json!({"sample": sample, "node": null}))
}

impl Op for Runtime {
    fn name(&self) -> &'static str {
        "runtime"
    }

    fn version(&self) -> u32 {
        3
    }

    fn check(&self, stage: &edgebuild_engine::stage::Stage) -> Result<(), String> {
        edgebuild_engine::op::check_ports(stage, &["model", "data"], &[], &["sources", "report"])?;
        let p: RuntimeParams = if stage.params.is_null() {
            RuntimeParams {
                samples: None,
                arena: codegen::ArenaGoal::Fast,
            }
        } else {
            serde_json::from_value(stage.params.clone()).map_err(|e| format!("params: {e}"))?
        };
        match p.samples {
            Some(0) => Err("params: samples must be at least 1".into()),
            Some(n) if n > MAX_SAMPLES => {
                Err(format!("params: samples is at most {MAX_SAMPLES}, not {n}"))
            }
            _ => Ok(()),
        }
    }

    fn fingerprint(&self) -> std::collections::BTreeMap<String, String> {
        let sources: Vec<(&str, &str)> = codegen::RUNTIME_FILES
            .iter()
            .copied()
            .chain([("host_main.c", HOST_HARNESS)])
            .collect();
        [
            ("cc".to_string(), toolchain::fingerprint(HOST_CC)),
            (
                "runtime_sources".to_string(),
                toolchain::sources_digest(&sources),
            ),
        ]
        .into()
    }

    fn run(&self, ctx: &OpContext) -> Result<OpOutcome, OpError> {
        let params: RuntimeParams = edgebuild_engine::op::params(ctx)?;
        let model = Int8Model::load(ctx.input("model")?).map_err(OpError::BadInput)?;
        let generated = codegen::generate(&model, params.arena)
            .map_err(|e| OpError::BadInput(format!("{}: {e}", ctx.stage_id)))?;
        let inputs = quantized_inputs(&model, ctx.input("data")?, params.samples)
            .map_err(OpError::BadInput)?;

        // the sources go to a directory beside the output, renamed into place when complete
        let out_dir = ctx.output("sources")?;
        let parent = out_dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| OpError::Failed(e.to_string()))?;
        let staging = tempfile::Builder::new()
            .prefix(".eb-runtime-")
            .tempdir_in(parent)
            .map_err(|e| OpError::Failed(e.to_string()))?;
        write_sources(staging.path(), &generated).map_err(OpError::Failed)?;

        // the host check
        let work = tempfile::tempdir().map_err(|e| OpError::Failed(e.to_string()))?;
        let exe = build_host(staging.path(), work.path(), false)?;
        let input_bytes: Vec<u8> = inputs.iter().flat_map(|s| as_bytes(s)).collect();
        std::fs::write(work.path().join("inputs.bin"), &input_bytes)
            .map_err(|e| OpError::Failed(e.to_string()))?;
        toolchain::run(
            &exe.display().to_string(),
            &[
                work.path().join("inputs.bin").display().to_string(),
                work.path().join("outputs.bin").display().to_string(),
            ],
            work.path(),
            Duration::from_secs(600),
        )
        .map_err(|e| OpError::Failed(format!("{}: the host run: {e}", ctx.stage_id)))?;
        let host_bytes = std::fs::read(work.path().join("outputs.bin"))
            .map_err(|e| OpError::Failed(e.to_string()))?;
        let out_len = model.tensors[model.output].len();
        if host_bytes.len() != out_len * inputs.len() {
            return Err(OpError::Failed(format!(
                "{}: the host run wrote {} bytes, {} expected",
                ctx.stage_id,
                host_bytes.len(),
                out_len * inputs.len()
            )));
        }
        let host: Vec<Vec<i8>> = host_bytes
            .chunks(out_len)
            .map(|c| c.iter().map(|&b| b as i8).collect())
            .collect();
        let reference = crate::int8::run_all(&model, &inputs).map_err(OpError::Failed)?;
        let mismatched: Vec<usize> = (0..inputs.len())
            .filter(|&i| host[i] != reference[i])
            .collect();
        let divergence = match mismatched.first() {
            Some(&s) => Some(first_divergence(
                &model,
                staging.path(),
                work.path(),
                s,
                &inputs,
            )?),
            None => None,
        };
        let macs: u64 = model.nodes.iter().map(|n| n.kernel.macs()).sum();
        let report = serde_json::json!({
            "model": model.name,
            "nodes": model.nodes.len(),
            "macs": macs,
            "constants_bytes": model.constant_bytes(),
            "arena": {
                "goal": params.arena,
                "bytes": generated.arena.bytes,
                "tflm_greedy_bytes": generated.arena.greedy_bytes,
                "nodes_without_scratch": generated.arena.without_scratch.len(),
                "nodes_in_place": generated.arena.in_place.iter().flatten().count(),
            },
            "host": {
                "samples": inputs.len(),
                "mismatches": mismatched.len(),
                "output_sha256": outputs_hash(&host),
                "reference_sha256": outputs_hash(&reference),
                "first_divergence": divergence,
            },
        });
        edgebuild_engine::op::write_json(ctx.output("report")?, &report)?;
        if out_dir.exists() {
            edgebuild_engine::files::remove_path(out_dir)
                .map_err(|e| OpError::Failed(format!("{}: {e}", out_dir.display())))?;
        }
        let staged = staging.keep();
        std::fs::rename(&staged, out_dir).map_err(|e| {
            let _ = std::fs::remove_dir_all(&staged);
            OpError::Failed(format!("{}: {e}", out_dir.display()))
        })?;
        ctx.log(format!(
            "arena {} bytes (TFLM's greedy planner: {}); host run bit-exact on {} of {} samples",
            generated.arena.bytes,
            generated.arena.greedy_bytes,
            inputs.len() - mismatched.len(),
            inputs.len()
        ));
        if let Some(d) = &divergence {
            ctx.log(format!("first divergence: {d}"));
        }
        Ok(OpOutcome::Success)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_records_parse_and_stop_at_a_cut_record() {
        let mut b = Vec::new();
        b.extend(0u32.to_le_bytes());
        b.extend(2u32.to_le_bytes());
        b.extend([1u8, 255]);
        b.extend(1u32.to_le_bytes());
        b.extend(9u32.to_le_bytes());
        b.extend([0u8; 3]);
        assert_eq!(parse_trace(&b), vec![(0, vec![1i8, -1])]);
    }
}

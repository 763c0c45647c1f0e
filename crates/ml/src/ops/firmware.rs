//! `firmware`: the runtime sources of a `runtime` stage → a firmware ELF for an emulated
//! Cortex-M board, run in QEMU on held-out samples (SPEC.md, "`firmware`"). The op
//! cross-compiles with arm-none-eabi-gcc, links for the board the device profile names, runs
//! the ELF under `qemu-system-arm -icount shift=0` with semihosting, and writes `device.json`:
//! the outputs' hash and agreement with edgebuild's own int8 evaluation, instructions per
//! inference (from the board's timer; deterministic under icount), and flash and RAM read off
//! the linked ELF with the measured peak stack.

use std::time::Duration;

use serde::Deserialize;

use crate::board::{self, Board};
use crate::int8::Int8Model;
use crate::ops::evaluate::round6;
use crate::ops::report::{DeviceProfile, ProfilesFile};
use crate::ops::runtime::{c_files, outputs_hash, quantized_inputs};
use crate::toolchain::{self, RunError};
use edgebuild_engine::op::{Op, OpContext, OpError, OpOutcome};

pub struct Firmware;

const CROSS_CC: &str = "arm-none-eabi-gcc";
const QEMU: &str = "qemu-system-arm";
/// The default limit of one QEMU run.
const DEFAULT_TIMEOUT_S: u64 = 900;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FirmwareParams {
    /// The device profile (its `board` and `clock_mhz`).
    profile: String,
    /// Run only the first N held-out samples (default: all).
    #[serde(default)]
    samples: Option<usize>,
    /// Seconds one QEMU run may take before it is stopped and the stage fails.
    #[serde(default)]
    timeout_s: Option<u64>,
}

fn parse_params(value: &serde_json::Value) -> Result<FirmwareParams, String> {
    let p: FirmwareParams =
        serde_json::from_value(value.clone()).map_err(|e| format!("params: {e}"))?;
    if p.samples == Some(0) {
        return Err("params: samples must be at least 1".into());
    }
    if let Some(t) = p.timeout_s
        && !(1..=86_400).contains(&t)
    {
        return Err(format!(
            "params: timeout_s must be 1 to 86400 seconds, not {t}"
        ));
    }
    Ok(p)
}

/// The board a profile names (the default when it names none).
pub fn board_of(name: &str, profile: &DeviceProfile) -> Result<&'static Board, String> {
    let machine = profile.board.as_deref().unwrap_or(board::DEFAULT_BOARD);
    board::find(machine).ok_or_else(|| {
        format!(
            "profile `{name}`: board `{machine}` is not one edgebuild emulates; boards: {}",
            board::names().join(", ")
        )
    })
}

fn tool_error(what: &str, e: RunError) -> OpError {
    match e {
        RunError::Missing(m) => OpError::BadInput(m),
        RunError::Timeout(_) => OpError::BadInput(format!("{what}: {e}")),
        e => OpError::Failed(format!("{what}: {e}")),
    }
}

fn fail(e: impl std::fmt::Display) -> OpError {
    OpError::Failed(e.to_string())
}

impl Op for Firmware {
    fn name(&self) -> &'static str {
        "firmware"
    }

    fn version(&self) -> u32 {
        // 3: device.json gains the per-node profile
        3
    }

    fn check(&self, stage: &edgebuild_engine::stage::Stage) -> Result<(), String> {
        edgebuild_engine::op::check_ports(
            stage,
            &["sources", "model", "data", "profiles"],
            &[],
            &["elf", "device"],
        )?;
        parse_params(&stage.params).map(|_| ())
    }

    fn fingerprint(&self) -> std::collections::BTreeMap<String, String> {
        [
            (
                "arm-none-eabi-gcc".to_string(),
                toolchain::fingerprint(CROSS_CC),
            ),
            ("qemu-system-arm".to_string(), toolchain::fingerprint(QEMU)),
            (
                "board_sources".to_string(),
                toolchain::sources_digest(board::SUPPORT_FILES),
            ),
        ]
        .into()
    }

    fn run(&self, ctx: &OpContext) -> Result<OpOutcome, OpError> {
        let params = parse_params(ctx.params)
            .map_err(|e| OpError::BadInput(format!("{}: {e}", ctx.stage_id)))?;
        let profiles = ProfilesFile::load(ctx.input("profiles")?).map_err(OpError::BadInput)?;
        let profile = profiles.profiles.get(&params.profile).ok_or_else(|| {
            OpError::BadInput(format!(
                "{}: no profile `{}` in {}; it has {}",
                ctx.stage_id,
                params.profile,
                ctx.input("profiles")
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                profiles
                    .profiles
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let board = board_of(&params.profile, profile).map_err(OpError::BadInput)?;
        let clock_mhz = profile.clock_mhz.ok_or_else(|| {
            OpError::BadInput(format!(
                "{}: profile `{}` has no clock_mhz, which converts instructions to milliseconds",
                ctx.stage_id, params.profile
            ))
        })?;
        let model = Int8Model::load(ctx.input("model")?).map_err(OpError::BadInput)?;
        let inputs = quantized_inputs(&model, ctx.input("data")?, params.samples)
            .map_err(OpError::BadInput)?;
        let n = inputs.len();
        let in_len = model.tensors[model.input].len();
        let out_len = model.tensors[model.output].len();
        check_io(n, in_len, out_len, board.io_bytes)
            .map_err(|e| OpError::BadInput(format!("{}: {e} (params: samples)", ctx.stage_id)))?;

        // the build, in a scratch directory with relative paths only (no path enters the ELF)
        let work = tempfile::tempdir().map_err(fail)?;
        let w = work.path();
        let sources = ctx.input("sources")?;
        let mut units = Vec::new();
        for f in c_files(sources).map_err(OpError::BadInput)? {
            let name = f.file_name().expect("a file").to_owned();
            std::fs::copy(&f, w.join(&name)).map_err(fail)?;
            units.push(name.to_string_lossy().into_owned());
        }
        for entry in std::fs::read_dir(sources).map_err(fail)? {
            let p = entry.map_err(fail)?.path();
            if p.extension().is_some_and(|e| e == "h") {
                std::fs::copy(&p, w.join(p.file_name().expect("a file"))).map_err(fail)?;
            }
        }
        for (name, text) in board::SUPPORT_FILES {
            std::fs::write(w.join(name), text).map_err(fail)?;
        }
        let timeout = Duration::from_secs(params.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S));
        let input_bytes: Vec<u8> = inputs.iter().flatten().map(|&v| v as u8).collect();

        // the per-node profile first: the same sources built with EB_MODEL_TRACE, run on the
        // first sample (the shipped build below overwrites its objects and ELF)
        build_elf(w, board, &units, 1, true)?;
        std::fs::write(w.join("input.bin"), &input_bytes[..in_len]).map_err(fail)?;
        run_elf(
            w,
            board,
            timeout,
            &format!("{}: the profile run", ctx.stage_id),
        )?;
        let node_insns = board::parse_node_profile(
            &std::fs::read(w.join("nodes.bin")).map_err(fail)?,
            model.nodes.len(),
        )
        .map_err(fail)?;

        // the firmware that ships, on every sample
        let elf = build_elf(w, board, &units, n, false)?;
        let sizes = board::elf_sizes(&elf).map_err(fail)?;
        std::fs::write(w.join("input.bin"), &input_bytes).map_err(fail)?;
        run_elf(
            w,
            board,
            timeout,
            &format!("{}: the run on {}", ctx.stage_id, board.machine),
        )?;
        let outputs = std::fs::read(w.join("output.bin")).map_err(fail)?;
        if outputs.len() != n * out_len {
            return Err(fail(format!(
                "the firmware wrote {} output bytes, {} expected",
                outputs.len(),
                n * out_len
            )));
        }
        let device: Vec<Vec<i8>> = outputs
            .chunks(out_len)
            .map(|c| c.iter().map(|&b| b as i8).collect())
            .collect();
        let stats = board::parse_stats(&std::fs::read(w.join("stats.bin")).map_err(fail)?, n)
            .map_err(fail)?;
        let reference = crate::int8::run_all(&model, &inputs).map_err(fail)?;
        let mismatches = (0..n).filter(|&i| device[i] != reference[i]).count();

        let per = stats.instructions.iter().copied().max().unwrap_or(0);
        let min = stats.instructions.iter().copied().min().unwrap_or(0);
        let total: u64 = stats.instructions.iter().sum();
        let macs: u64 = model.nodes.iter().map(|n| n.kernel.macs()).sum();
        let roofline_s: f64 = (0..model.nodes.len())
            .map(|i| {
                let flops = 2.0 * model.nodes[i].kernel.macs() as f64;
                let bytes = model.node_bytes(i) as f64;
                (flops / (profile.peak_gflops * 1e9)).max(bytes / (profile.bandwidth_gbps * 1e9))
            })
            .sum();
        let ram = sizes.data + sizes.bss + stats.stack_peak;
        let nodes: Vec<serde_json::Value> = model
            .nodes
            .iter()
            .zip(&node_insns)
            .enumerate()
            .map(|(i, (node, &insns))| {
                let macs = node.kernel.macs();
                serde_json::json!({
                    "node": i,
                    "name": node.name,
                    "op": node.kernel.name(),
                    "macs": macs,
                    "instructions": insns,
                    "instructions_per_mac": if macs > 0 { serde_json::json!(round6(insns as f64 / macs as f64)) } else { serde_json::Value::Null },
                })
            })
            .collect();
        let report = serde_json::json!({
            "board": board.machine,
            "cpu": board.cpu,
            "profile": params.profile,
            "clock_mhz": clock_mhz,
            "samples": n,
            "output_sha256": outputs_hash(&device),
            "host_sha256": outputs_hash(&reference),
            "identical_to_host": mismatches == 0,
            "mismatches": mismatches,
            "agreement": round6((n - mismatches) as f64 / n as f64),
            "instructions": {
                "per_inference": per,
                "min": min,
                "mean": round6(total as f64 / n as f64),
                "timer_overhead": stats.timer_overhead,
            },
            "macs": macs,
            "instructions_per_mac": if macs > 0 { round6(per as f64 / macs as f64) } else { 0.0 },
            "latency_ms": round6(per as f64 / (clock_mhz * 1e3)),
            "latency_basis": "instructions at one per cycle of the profile's clock: an instruction is not a cycle",
            "roofline_ms": round6(roofline_s * 1e3),
            "flash": {
                "text": sizes.text,
                "rodata": sizes.rodata,
                "data": sizes.data,
                "bytes": sizes.flash(),
                "storage_bytes": profile.storage_bytes,
            },
            "nodes": nodes,
            "ram": {
                "data": sizes.data,
                "bss": sizes.bss,
                "arena": sizes.arena,
                "stack_peak": stats.stack_peak,
                "bytes": ram,
                "ram_bytes": profile.ram_bytes,
            },
        });
        edgebuild_engine::op::write_output(ctx.output("elf")?, &elf)?;
        edgebuild_engine::op::write_json(ctx.output("device")?, &report)?;
        ctx.log(format!(
            "{}: {per} instructions per inference ({:.3} per MAC, {:.3} ms at {clock_mhz} MHz), \
             flash {} B, RAM {} B (arena {} B, peak stack {} B); {} of {n} outputs identical to the host",
            board.machine,
            if macs > 0 { per as f64 / macs as f64 } else { 0.0 },
            per as f64 / (clock_mhz * 1e3),
            sizes.flash(),
            ram,
            sizes.arena,
            stats.stack_peak,
            n - mismatches
        ));
        if let Some((i, &insns)) = node_insns
            .iter()
            .enumerate()
            .max_by_key(|&(i, &x)| (x, std::cmp::Reverse(i)))
        {
            let node = &model.nodes[i];
            let macs = node.kernel.macs();
            ctx.log(format!(
                "the heaviest node: {i} {} ({}), {insns} instructions ({:.1}% of the first sample's{})",
                node.name,
                node.kernel.name(),
                100.0 * insns as f64 / node_insns.iter().sum::<u64>().max(1) as f64,
                if macs > 0 { format!(", {:.3} per MAC", insns as f64 / macs as f64) } else { String::new() }
            ));
        }
        Ok(OpOutcome::Success)
    }
}

/// Cross-compiles the harness, the board support and `units` in `w` (which holds them all),
/// each to its own object (a one-step build names objects after temporary files, and those
/// names would enter the ELF), links `firmware.elf` there and returns its bytes. `trace`
/// builds the profile firmware (SPEC.md, `firmware`).
fn build_elf(
    w: &std::path::Path,
    board: &Board,
    units: &[String],
    samples: usize,
    trace: bool,
) -> Result<Vec<u8>, OpError> {
    let mut common: Vec<String> = [
        format!("-mcpu={}", board.cpu),
        "-mthumb".into(),
        "-mfloat-abi=soft".into(),
    ]
    .into_iter()
    .chain(toolchain::STRICT_FLAGS.iter().map(|s| s.to_string()))
    .chain(
        [
            "-O2",
            "-ffunction-sections",
            "-fdata-sections",
            "-fno-common",
            "-I.",
        ]
        .map(String::from),
    )
    .chain([
        format!("-D{}", board.define),
        format!("-DEB_SAMPLES={samples}"),
    ])
    .collect();
    if trace {
        common.push("-DEB_MODEL_TRACE".into());
    }
    let mut objects = Vec::new();
    for unit in ["startup.S", "board.c", "fw_main.c"]
        .map(String::from)
        .iter()
        .chain(units)
    {
        let obj = format!(
            "{}.o",
            unit.rsplit_once('.').map_or(unit.as_str(), |(s, _)| s)
        );
        let mut args = common.clone();
        args.extend(["-c".into(), unit.clone(), "-o".into(), obj.clone()]);
        toolchain::run(CROSS_CC, &args, w, Duration::from_secs(900))
            .map_err(|e| tool_error(&format!("the cross-compile of {unit}"), e))?;
        objects.push(obj);
    }
    let mut args = common;
    args.extend(
        [
            "-nostartfiles",
            "-Wl,--gc-sections",
            "-Wl,--strip-debug",
            "-T",
        ]
        .map(String::from),
    );
    args.push(board.linker_script.into());
    args.extend(["-o".into(), "firmware.elf".into()]);
    args.extend(objects);
    toolchain::run(CROSS_CC, &args, w, Duration::from_secs(900))
        .map_err(|e| tool_error("the link", e))?;
    std::fs::read(w.join("firmware.elf")).map_err(fail)
}

/// Runs `w/firmware.elf` on the board under `-icount shift=0` with semihosting rooted at `w`.
fn run_elf(
    w: &std::path::Path,
    board: &Board,
    timeout: Duration,
    what: &str,
) -> Result<(), OpError> {
    let qemu_args: Vec<String> = [
        "-machine",
        board.machine,
        "-cpu",
        board.cpu,
        "-display",
        "none",
        "-serial",
        "none",
        "-monitor",
        "none",
        "-semihosting-config",
        "enable=on,target=native",
        "-icount",
        "shift=0",
        "-kernel",
        "firmware.elf",
    ]
    .map(String::from)
    .to_vec();
    toolchain::run(QEMU, &qemu_args, w, timeout)
        .map(|_| ())
        .map_err(|e| tool_error(what, e))
}

/// Whether `n` samples of `in_len` input and `out_len` output bytes fit the board's I/O memory,
/// as the harness lays it out: all inputs, all outputs, padding to a word, then 3 words of
/// header and 2 words of instruction count per sample (SPEC.md, `firmware`).
fn check_io(n: usize, in_len: usize, out_len: usize, io_bytes: u64) -> Result<(), String> {
    let io_of = |n: u64| {
        let bytes = n.saturating_mul((in_len as u64).saturating_add(out_len as u64));
        bytes
            .div_ceil(4)
            .saturating_mul(4)
            .saturating_add(12)
            .saturating_add(n.saturating_mul(8))
    };
    let io = io_of(n as u64);
    if io <= io_bytes {
        return Ok(());
    }
    // the largest count that fits, by bisection over a monotone size
    let (mut fits, mut too_many) = (0u64, n as u64);
    while too_many - fits > 1 {
        let mid = fits + (too_many - fits) / 2;
        if io_of(mid) <= io_bytes {
            fits = mid;
        } else {
            too_many = mid;
        }
    }
    Err(format!(
        "{n} samples take {io} bytes of the board's I/O memory, which holds {io_bytes}; \
         run at most {fits}"
    ))
}

/// Whether the tools of the firmware op are installed (for `doctor`).
pub fn tools() -> Vec<(&'static str, Option<String>, &'static str)> {
    [CROSS_CC, QEMU, "cc"]
        .into_iter()
        .map(|t| (t, toolchain::version_line(t), toolchain::install_hint(t)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::check_io;

    #[test]
    fn a_sample_count_the_board_cannot_hold_is_refused_with_the_count_it_can() {
        let io = 16u64 << 20;
        // a VWW input (96 x 96 x 3) and its 2 scores: 27,658 bytes a sample
        let most = ((io - 12) / 27_658) as usize;
        assert_eq!(most, 606);
        assert!(check_io(most, 27_648, 2, io).is_ok());
        let e = check_io(most + 1, 27_648, 2, io).unwrap_err();
        assert!(e.contains("607 samples take 16788420 bytes"), "{e}");
        assert!(e.contains("which holds 16777216; run at most 606"), "{e}");
        // no overflow on absurd sizes
        let e = check_io(usize::MAX, usize::MAX, usize::MAX, io).unwrap_err();
        assert!(e.contains("run at most 0"), "{e}");
        // 5 bytes a sample end the outputs off a word: the counts start after the padding
        let most = ((io - 12) / 12) as usize;
        assert!(check_io(most, 3, 1, io).is_ok());
        let e = check_io(most, 3, 2, io).unwrap_err();
        assert!(e.contains("run at most 1290554"), "{e}");
    }
}

//! The int8 pipeline of the digits model on an emulated board (SPEC.md, "`runtime`",
//! "`firmware`"): the C runtime is bit-exact on this host and on QEMU's Cortex-M boards, the
//! device figures are real and repeatable, the gates judge them, and bad input (tools missing,
//! a hang, too small or non-finite calibration data, an arena over budget) is refused.

mod common;

use std::path::Path;

use common::{REPO, Workspace, digits, stderr};

fn json(ws: &Workspace, rel: &str) -> serde_json::Value {
    serde_json::from_str(&ws.read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The digits workspace with its int8 pipeline.
fn digits_int8() -> Workspace {
    let ws = digits();
    ws.write(
        "pipelines/digits-int8.yaml",
        &std::fs::read_to_string(Path::new(REPO).join("pipelines/digits-int8.yaml")).unwrap(),
    );
    ws
}

fn edit(ws: &Workspace, from: &str, to: &str) {
    let yaml = ws.read("pipelines/digits-int8.yaml");
    assert!(yaml.contains(from), "pipeline has `{from}`");
    ws.pipeline("digits-int8", &yaml.replace(from, to));
}

fn assert_bad_input(ws: &Workspace, target: &str, needle: &str) {
    let out = ws.run(&["build", target]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(needle), "{}", stderr(&out));
}

#[test]
fn the_int8_firmware_is_bit_exact_on_the_board_and_its_figures_are_real() {
    let ws = digits_int8();
    let first = ws.build(&["digits-int8"], 0);
    assert_eq!(first.with("ran").len(), 6, "{}", first.0);

    let metrics = json(&ws, "out/digits-int8/metrics.json");
    assert!(
        metrics["top1_agreement"].as_f64().unwrap() >= 0.97,
        "{metrics}"
    );
    let runtime = json(&ws, "out/digits-int8/runtime.json");
    let host = &runtime["host"];
    assert_eq!(host["samples"], 360, "every held-out sample: {runtime}");
    assert_eq!(host["mismatches"], 0, "{runtime}");
    assert_eq!(host["output_sha256"], host["reference_sha256"]);
    let arena = runtime["arena"]["bytes"].as_u64().unwrap();
    assert!(arena <= runtime["arena"]["tflm_greedy_bytes"].as_u64().unwrap());

    let device = json(&ws, "out/digits-int8/device.json");
    assert_eq!(device["board"], "mps2-an500");
    assert_eq!(device["samples"], 360);
    assert_eq!(device["mismatches"], 0, "{device}");
    assert_eq!(
        device["output_sha256"], host["output_sha256"],
        "device = host"
    );
    assert_eq!(device["ram"]["arena"].as_u64().unwrap(), arena);
    // The MLP's 19,008 MACs take real instructions: more than one per MAC on a Cortex-M7
    // without SIMD over 8-bit lanes, and not a hundred.
    let macs = device["macs"].as_u64().unwrap();
    assert_eq!(macs, runtime["macs"].as_u64().unwrap());
    let per = device["instructions"]["per_inference"].as_u64().unwrap();
    assert!(
        per > macs / 2 && per < 20 * macs,
        "{per} instructions for {macs} MACs"
    );
    // The per-node profile (a traced build, on the first sample) accounts for the inference:
    // its nodes are the model's, their MACs add up, and their instructions come within the
    // timer's resolution (40 instructions a node) of the untraced count.
    let nodes = device["nodes"].as_array().unwrap();
    assert_eq!(
        nodes.len(),
        runtime["nodes"].as_u64().unwrap() as usize,
        "{device}"
    );
    let field = |n: &serde_json::Value, k: &str| n[k].as_u64().unwrap();
    assert_eq!(nodes.iter().map(|n| field(n, "macs")).sum::<u64>(), macs);
    let profiled: u64 = nodes.iter().map(|n| field(n, "instructions")).sum();
    let first = device["instructions"]["min"].as_u64().unwrap();
    assert!(
        profiled.abs_diff(first) <= 40 * nodes.len() as u64 + 200
            && profiled.abs_diff(per) < per / 20,
        "{profiled} instructions over the nodes, {first}..{per} per inference"
    );
    for n in nodes {
        assert!(
            field(n, "macs") == 0 || field(n, "instructions") > field(n, "macs") / 2,
            "{n}"
        );
    }
    let constants = runtime["constants_bytes"].as_u64().unwrap();
    let flash = device["flash"]["bytes"].as_u64().unwrap();
    assert!(
        flash > constants && flash < constants + 64 * 1024,
        "flash {flash} holds {constants} bytes of constants and a small runtime"
    );
    let stack = device["ram"]["stack_peak"].as_u64().unwrap();
    assert!(stack > 0 && stack < 8192, "stack {stack}");
    let latency = device["latency_ms"].as_f64().unwrap();
    assert!((latency - per as f64 / 480e3).abs() < 1e-5, "{latency}");

    // The firmware is a real ELF for the board and the sources are what the runtime op wrote.
    let elf = std::fs::read(ws.file("out/digits-int8/firmware.elf")).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    for f in ["eb_model.c", "eb_model.h", "eb_kernels.c", "eb_kernels.h"] {
        assert!(ws.exists(&format!("out/digits-int8/runtime/{f}")), "{f}");
    }

    // Repeated in another workspace: the same bytes (QEMU's icount makes the counts exact).
    let again = digits_int8();
    again.build(&["digits-int8"], 0);
    for f in [
        "out/digits-int8/device.json",
        "out/digits-int8/firmware.elf",
        "out/digits-int8/runtime.json",
        "out/digits-int8/runtime/eb_model.c",
        "out/digits-int8/model.qdq.onnx",
    ] {
        assert!(
            std::fs::read(ws.file(f)).unwrap() == std::fs::read(again.file(f)).unwrap(),
            "{f} differs between two builds"
        );
    }
    let second = ws.build(&["digits-int8"], 0);
    assert_eq!(second.with("up-to-date").len(), 6, "{}", second.0);
}

/// Adds the profiles `m4-test` (QEMU's `mps2-an386`) and `m55-test` (`mps3-an547`): the
/// Cortex-M7 profile on the other boards.
fn add_test_boards(ws: &Workspace) {
    let profiles = ws.read("devices/profiles.yaml");
    let m7 = profiles
        .split("\n  cortex-a72:")
        .next()
        .unwrap()
        .split("\n  cortex-m7:")
        .nth(1)
        .unwrap()
        .to_string();
    let extra = format!(
        "\n  m4-test:{}\n  m55-test:{}",
        m7.replace("board: mps2-an500", "board: mps2-an386"),
        m7.replace("board: mps2-an500", "board: mps3-an547")
    );
    ws.write(
        "devices/profiles.yaml",
        &profiles.replacen("\nprofiles:", &format!("\nprofiles:{extra}"), 1),
    );
}

#[test]
fn the_other_boards_give_the_same_outputs() {
    let ws = digits_int8();
    add_test_boards(&ws);
    ws.build(&["digits-int8:firmware"], 0);
    let m7_out = json(&ws, "out/digits-int8/device.json");
    for (profile, board, cpu) in [
        ("m4-test", "mps2-an386", "cortex-m4"),
        ("m55-test", "mps3-an547", "cortex-m55"),
    ] {
        edit(
            &ws,
            "params: {profile: cortex-m7}",
            &format!("params: {{profile: {profile}}}"),
        );
        ws.build(&["digits-int8:firmware"], 0);
        let d = json(&ws, "out/digits-int8/device.json");
        assert_eq!(d["board"], board);
        assert_eq!(d["cpu"], cpu);
        assert_eq!(d["mismatches"], 0, "{d}");
        assert_eq!(d["output_sha256"], m7_out["output_sha256"]);
        assert!(d["instructions"]["per_inference"].as_u64().unwrap() > 0);
        edit(
            &ws,
            &format!("params: {{profile: {profile}}}"),
            "params: {profile: cortex-m7}",
        );
    }
}

#[test]
fn a_gate_blocks_a_firmware_over_budget_and_states_the_number() {
    let ws = digits_int8();
    edit(
        &ws,
        "path: ram.bytes, max: 524288",
        "path: ram.bytes, max: 1024",
    );
    let out = ws.run(&["build", "digits-int8"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let ram = json(&ws, "out/digits-int8/device.json")["ram"]["bytes"]
        .as_u64()
        .unwrap();
    let text = format!("{}{}", common::stdout(&out), stderr(&out));
    assert!(text.contains("RAM (bytes)"), "{text}");
    assert!(text.contains(&ram.to_string()), "{ram} in {text}");
}

#[test]
fn bad_int8_and_device_inputs_get_clear_errors() {
    // Too few calibration samples; NaN in them.
    let ws = digits_int8();
    let x = candle_core::Tensor::zeros((2, 64), candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    candle_core::Tensor::write_npz(&[("x", &x)], ws.file("examples/digits/calibration.npz"))
        .unwrap();
    assert_bad_input(&ws, "digits-int8:calibrate", "needs at least 4");
    let mut v = vec![1f32; 8 * 64];
    v[3 * 64 + 5] = f32::NAN;
    let x = candle_core::Tensor::from_vec(v, (8, 64), &candle_core::Device::Cpu).unwrap();
    candle_core::Tensor::write_npz(&[("x", &x)], ws.file("examples/digits/calibration.npz"))
        .unwrap();
    let out = ws.run(&["build", "digits-int8:calibrate"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("sample 3") && stderr(&out).contains("column 5"),
        "{}",
        stderr(&out)
    );
    // A constant calibration set leaves a range degenerate.
    let x = candle_core::Tensor::zeros((8, 64), candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    candle_core::Tensor::write_npz(&[("x", &x)], ws.file("examples/digits/calibration.npz"))
        .unwrap();
    assert_bad_input(&ws, "digits-int8:calibrate", "degenerate");

    // Params checked when the pipeline loads.
    let ws = digits_int8();
    edit(
        &ws,
        "params: {profile: cortex-m7}",
        "params: {profile: cortex-m7, samples: 0}",
    );
    let out = ws.run(&["plan", "digits-int8"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("samples must be at least 1"),
        "{}",
        stderr(&out)
    );

    // A board edgebuild does not emulate; a profile without a clock.
    let ws = digits_int8();
    let profiles = ws.read("devices/profiles.yaml");
    ws.write(
        "devices/profiles.yaml",
        &profiles.replace("board: mps2-an500", "board: stm32-nucleo"),
    );
    assert_bad_input(
        &ws,
        "digits-int8:firmware",
        "board `stm32-nucleo` is not one",
    );
    ws.write(
        "devices/profiles.yaml",
        &profiles.replace("    clock_mhz: 480\n", ""),
    );
    assert_bad_input(&ws, "digits-int8:firmware", "has no clock_mhz");

    // The cross-compiler and QEMU missing: exit 2 with what to install. The runtime stage is
    // built first with the tools; then PATH holds only `cc`.
    let ws = digits_int8();
    ws.build(&["digits-int8:runtime"], 0);
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(which("cc").expect("a C compiler"), bin.path().join("cc")).unwrap();
    let out = ws
        .command()
        .env("PATH", bin.path())
        .args(["build", "digits-int8:firmware"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("apt-get install gcc-arm-none-eabi"),
        "{}",
        stderr(&out)
    );
    assert!(!ws.exists("out/digits-int8/device.json"));

    // A firmware that hangs: stopped at the timeout, the stage failed, nothing written.
    let ws = digits_int8();
    ws.build(&["digits-int8:runtime"], 0);
    let model_c = ws.read("out/digits-int8/runtime/eb_model.c");
    let hang = model_c.replace(
        "int eb_model_invoke(void)\n{\n",
        "int eb_model_invoke(void)\n{\n    for (;;) {\n    }\n",
    );
    assert_ne!(hang, model_c);
    let yaml = ws.read("pipelines/digits-int8.yaml");
    let yaml = yaml
        .replace(
            "sources: out/digits-int8/runtime\n      model",
            "sources: hang\n      model",
        )
        .replace(
            "params: {profile: cortex-m7}",
            "params: {profile: cortex-m7, samples: 1, timeout_s: 3}",
        );
    ws.pipeline("digits-int8", &yaml);
    std::fs::create_dir_all(ws.file("hang")).unwrap();
    for e in std::fs::read_dir(ws.file("out/digits-int8/runtime")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, ws.file("hang").join(p.file_name().unwrap())).unwrap();
    }
    ws.write("hang/eb_model.c", &hang);
    let out = ws.run(&["build", "digits-int8:firmware"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no result after 3 s"),
        "{}",
        stderr(&out)
    );
    assert!(!ws.exists("out/digits-int8/device.json"));
    assert!(!ws.exists("out/digits-int8/firmware.elf"));
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

#[test]
fn a_small_arena_gives_the_same_outputs_for_more_instructions() {
    let ws = digits_int8();
    ws.build(&["digits-int8:firmware"], 0);
    let fast = json(&ws, "out/digits-int8/device.json");
    edit(
        &ws,
        "      report: out/digits-int8/runtime.json\n",
        "      report: out/digits-int8/runtime.json\n    params: {arena: small}\n",
    );
    ws.build(&["digits-int8:firmware"], 0);
    let small = json(&ws, "out/digits-int8/device.json");
    let runtime = json(&ws, "out/digits-int8/runtime.json");
    assert_eq!(runtime["arena"]["goal"], "small");
    assert!(runtime["arena"]["nodes_without_scratch"].as_u64().unwrap() > 0);
    let arena = |d: &serde_json::Value| d["ram"]["arena"].as_u64().unwrap();
    let instructions = |d: &serde_json::Value| d["instructions"]["per_inference"].as_u64().unwrap();
    assert!(arena(&small) < arena(&fast), "{small} vs {fast}");
    assert!(instructions(&small) > instructions(&fast));
    assert_eq!(small["mismatches"], 0, "{small}");
    assert_eq!(small["output_sha256"], fast["output_sha256"]);
}

/// A graph whose every layer takes another branch of the C kernels' assembly (SPEC.md, "int8
/// arithmetic", the DSP paths), built and run on the three boards; the device must equal the
/// host and the reference kernels on every sample. Input 3 × 21 × 6:
///
/// - `stem`, 3 → 8, 3×3, padding 1: the RGB window path inside, the gathered one at the borders,
///   K = 27 (the last row from its padded copy); 126 pixels, so 31 groups of 4 and a pair;
/// - `dw1`, 3×3 stride 1 on 21 × 6: the transposed planes (6 rows of 21: quads and a single);
/// - `pw1`, 8 → 12: K = 8, every channel folded;
/// - `dw2`, 3×3 stride 2 to 11 × 3: transposed, stride 2 along the plane rows, a pair and a
///   single per row; one channel's weights are tiny (a requantization exponent above 24), so it
///   takes the C loop;
/// - `pw2`, 12 → 10: K = 12 (an odd number of quads), a tiny channel (the mixed assembly), 33
///   pixels (a last single pixel);
/// - `c3`, 10 → 6, 3×3: a gathered im2col of 90 values;
/// - a transpose to 3 × 11, then `dw3`, stride 1, planes as the input: 2 quads, a pair and a
///   single per row.
#[test]
fn every_assembly_path_of_the_kernels_is_bit_exact_on_the_boards() {
    use candle_core::{Device, Tensor};
    let ws = Workspace::new();
    ws.write(
        "devices/profiles.yaml",
        &std::fs::read_to_string(Path::new(REPO).join("devices/profiles.yaml")).unwrap(),
    );
    ws.write(
        "model.yaml",
        r#"name: paths
input_shape: [3, 21, 6]
weights:
  stem.weight: [8, 3, 3, 3]
  stem.bias: [8]
  dw1.weight: [8, 1, 3, 3]
  dw1.bias: [8]
  pw1.weight: [12, 8, 1, 1]
  pw1.bias: [12]
  dw2.weight: [12, 1, 3, 3]
  dw2.bias: [12]
  pw2.weight: [10, 12, 1, 1]
  pw2.bias: [10]
  c3.weight: [6, 10, 3, 3]
  c3.bias: [6]
  dw3.weight: [6, 1, 3, 3]
  dw3.bias: [6]
nodes:
  - {op: Conv, name: stem, inputs: [input, stem.weight, stem.bias], outputs: [a], kernel_shape: [3, 3], pads: [1, 1, 1, 1]}
  - {op: Relu, name: r0, inputs: [a], outputs: [b]}
  - {op: Conv, name: dw1, inputs: [b, dw1.weight, dw1.bias], outputs: [c], kernel_shape: [3, 3], pads: [1, 1, 1, 1], group: 8}
  - {op: Relu, name: r1, inputs: [c], outputs: [d]}
  - {op: Conv, name: pw1, inputs: [d, pw1.weight, pw1.bias], outputs: [e], kernel_shape: [1, 1]}
  - {op: Relu, name: r2, inputs: [e], outputs: [f]}
  - {op: Conv, name: dw2, inputs: [f, dw2.weight, dw2.bias], outputs: [g], kernel_shape: [3, 3], pads: [1, 1, 1, 1], strides: [2, 2], group: 12}
  - {op: Relu, name: r3, inputs: [g], outputs: [h]}
  - {op: Conv, name: pw2, inputs: [h, pw2.weight, pw2.bias], outputs: [i], kernel_shape: [1, 1]}
  - {op: Relu, name: r4, inputs: [i], outputs: [j]}
  - {op: Conv, name: c3, inputs: [j, c3.weight, c3.bias], outputs: [k], kernel_shape: [3, 3], pads: [1, 1, 1, 1]}
  - {op: Relu, name: r5, inputs: [k], outputs: [l]}
  - {op: Transpose, name: t, inputs: [l], outputs: [m], perm: [0, 1, 3, 2]}
  - {op: Conv, name: dw3, inputs: [m, dw3.weight, dw3.bias], outputs: [n], kernel_shape: [3, 3], pads: [1, 1, 1, 1], group: 6}
  - {op: Flatten, name: flat, inputs: [n], outputs: [out]}
"#,
    );
    // deterministic weights of about unit gain; dw2's channel 5 and pw2's channel 3 tiny
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let mut tensors = std::collections::HashMap::new();
    for (name, shape, tiny) in [
        ("stem", vec![8, 3, 3, 3], None),
        ("dw1", vec![8, 1, 3, 3], None),
        ("pw1", vec![12, 8, 1, 1], None),
        ("dw2", vec![12, 1, 3, 3], Some(5)),
        ("pw2", vec![10, 12, 1, 1], Some(3)),
        ("c3", vec![6, 10, 3, 3], None),
        ("dw3", vec![6, 1, 3, 3], None),
    ] {
        let per: usize = shape[1..].iter().product();
        let gain = 3.0 / (per as f32).sqrt();
        let w: Vec<f32> = (0..shape[0] * per)
            .map(|i| next() * gain * if Some(i / per) == tiny { 1e-6 } else { 1.0 })
            .collect();
        let b: Vec<f32> = (0..shape[0])
            .map(|o| {
                if Some(o) == tiny {
                    0.0
                } else {
                    0.1 + 0.2 * next()
                }
            })
            .collect();
        let out = shape[0];
        tensors.insert(
            format!("{name}.weight"),
            Tensor::from_vec(w, shape, &Device::Cpu).unwrap(),
        );
        tensors.insert(
            format!("{name}.bias"),
            Tensor::from_vec(b, out, &Device::Cpu).unwrap(),
        );
    }
    candle_core::safetensors::save(&tensors, ws.file("model.safetensors")).unwrap();
    let pipeline = |profile: &str| {
        format!(
            r#"version: 1
stages:
  calibration:
    op: dataset
    inputs: {{weights: model.safetensors, architecture: model.yaml}}
    outputs: {{data: out/calibration.npz}}
    params: {{samples: 64, seed: 1, distribution: smooth, range: [0.0, 1.0]}}
  heldout:
    op: dataset
    inputs: {{weights: model.safetensors, architecture: model.yaml}}
    outputs: {{data: out/heldout.npz}}
    params: {{samples: 24, seed: 2, distribution: smooth, range: [0.0, 1.0]}}
  calibrate:
    op: calibrate
    inputs: {{weights: model.safetensors, architecture: model.yaml, calibration: out/calibration.npz}}
    outputs: {{ranges: out/ranges.json}}
    params: {{method: min_max}}
  int8:
    op: int8
    inputs: {{weights: model.safetensors, architecture: model.yaml, ranges: out/ranges.json}}
    outputs: {{model: out/model.int8.safetensors, onnx: out/model.qdq.onnx, tflite: out/model.tflite}}
  runtime:
    op: runtime
    inputs: {{model: out/model.int8.safetensors, data: out/heldout.npz}}
    outputs: {{sources: out/runtime, report: out/runtime.json}}
  firmware:
    op: firmware
    inputs: {{sources: out/runtime, model: out/model.int8.safetensors, data: out/heldout.npz, profiles: devices/profiles.yaml}}
    outputs: {{elf: out/firmware.elf, device: out/device.json}}
    params: {{profile: {profile}}}
"#
        )
    };
    add_test_boards(&ws);
    let mut hashes = Vec::new();
    for (profile, board) in [
        ("cortex-m7", "mps2-an500"),
        ("m4-test", "mps2-an386"),
        ("m55-test", "mps3-an547"),
    ] {
        ws.pipeline("paths", &pipeline(profile));
        ws.build(&["paths"], 0);
        let runtime = json(&ws, "out/runtime.json");
        assert_eq!(runtime["host"]["mismatches"], 0, "{runtime}");
        let device = json(&ws, "out/device.json");
        assert_eq!(device["board"], board);
        assert_eq!(device["samples"], 24, "{device}");
        assert_eq!(device["mismatches"], 0, "{board}: {device}");
        assert_eq!(device["output_sha256"], device["host_sha256"]);
        hashes.push(device["output_sha256"].clone());
        // the profile names the model's nodes, the depthwise and conv kernels among them
        let ops: Vec<&str> = device["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["op"].as_str().unwrap())
            .collect();
        assert_eq!(
            ops.iter().filter(|&&o| o == "depthwise").count(),
            3,
            "{ops:?}"
        );
        assert_eq!(ops.iter().filter(|&&o| o == "conv").count(), 4, "{ops:?}");
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
}

//! The ML ops on the digits example: accuracy targets, an independent GGUF reader, determinism
//! across thread counts, the calibration set as a real input, gates, packaging and bad input.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Workspace, digits, stderr, stdout};

fn json(ws: &Workspace, rel: &str) -> serde_json::Value {
    serde_json::from_str(&ws.read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn edit(ws: &Workspace, from: &str, to: &str) {
    let yaml = ws.read("pipelines/digits.yaml");
    assert!(yaml.contains(from), "pipeline has `{from}`");
    ws.pipeline("digits", &yaml.replace(from, to));
}

/// Builds `target` and checks that it fails as bad input (exit 2) saying `needle`.
fn assert_bad_input(ws: &Workspace, target: &str, needle: &str) {
    let out = ws.run(&["build", target]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains(needle), "{}", stderr(&out));
}

/// The data bytes of one tensor of a GGUF file.
fn tensor_bytes(path: &Path, name: &str) -> Vec<u8> {
    let mut file = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let tensor = content
        .tensor(&mut file, name, &candle_core::Device::Cpu)
        .unwrap();
    tensor.data().unwrap().into_owned()
}

#[test]
fn the_digits_pipeline_meets_its_targets_and_rebuilds_nothing() {
    let ws = digits();
    let first = ws.build(&[], 0);
    assert_eq!(first.with("ran").len(), 8, "every stage runs: {}", first.0);
    let metrics = json(&ws, "out/digits/metrics.json");
    let float = metrics["float"]["top1"].as_f64().unwrap();
    let drop = metrics["accuracy_drop_points"].as_f64().unwrap();
    assert!(float >= 0.95, "float top-1 {float}");
    assert!(drop <= 2.0, "q4_k with imatrix loses {drop} points");
    assert!(
        metrics["kld"]["mean"].as_f64().unwrap() > 0.0,
        "quantization changes the outputs"
    );
    let second = ws.build(&[], 0);
    assert_eq!(second.with("up-to-date").len(), 8);

    // q8_0 everywhere loses at most half a point.
    edit(&ws, "type: q4_k", "type: q8_0");
    let q8 = ws.build(&[], 0);
    assert_eq!(q8.of("digits:imatrix"), "up-to-date");
    assert_eq!(q8.of("digits:quantize"), "ran");
    let metrics = json(&ws, "out/digits/metrics.json");
    assert!(
        metrics["accuracy_drop_points"].as_f64().unwrap() <= 0.5,
        "{metrics}"
    );
    assert_eq!(metrics["quantized_kernels"]["fc2.weight"], "q8_0");
}

#[test]
fn the_gguf_is_read_by_an_independent_reader() {
    let ws = digits();
    ws.build(&["digits:quantize"], 0);
    let expected = serde_json::json!({
        "fc1.weight": {"type": "Q8_0", "shape": [256, 64]},
        "fc1.bias": {"type": "F32", "shape": [256]},
        "fc2.weight": {"type": "Q4_K", "shape": [256, 256]},
        "fc2.bias": {"type": "F32", "shape": [256]},
        "fc3.weight": {"type": "Q4_K", "shape": [10, 256]},
        "fc3.bias": {"type": "F32", "shape": [10]},
    });
    ws.write("expected.json", &expected.to_string());
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/check_gguf.py"
        ))
        .args([
            "out/digits/model.gguf",
            "examples/digits/mlp.safetensors",
            "expected.json",
        ])
        .current_dir(ws.path())
        .output()
        .expect("python3 runs (CI installs the gguf package)");
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(
        stdout(&out).lines().filter(|l| l.ends_with(" ok")).count(),
        6
    );
}

#[test]
fn a_different_calibration_set_gives_a_different_binary() {
    let ws = digits();
    ws.build(&["digits:quantize"], 0);
    let model = ws.file("out/digits/model.gguf");
    let (k_quant, q8) = (
        tensor_bytes(&model, "fc2.weight"),
        tensor_bytes(&model, "fc1.weight"),
    );
    std::fs::copy(
        ws.file("examples/digits/heldout.npz"),
        ws.file("examples/digits/calibration.npz"),
    )
    .unwrap();
    let plan = ws.plan_json(&["digits:quantize"]);
    assert_eq!(plan.of("digits:imatrix"), "run");
    assert_eq!(plan.reasons("digits:imatrix")[0]["kind"], "input_changed");
    ws.build(&["digits:quantize"], 0);
    assert_ne!(
        tensor_bytes(&model, "fc2.weight"),
        k_quant,
        "K-quant data follows the calibration set"
    );
    assert_eq!(
        tensor_bytes(&model, "fc1.weight"),
        q8,
        "q8_0 ignores the importance matrix"
    );
}

#[test]
fn one_and_two_threads_give_identical_bytes() {
    let build = |threads: &str| {
        let ws = digits();
        let out = ws
            .command()
            .args(["build", "digits:evaluate", "-j", threads])
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        ws
    };
    let (one, two) = (build("1"), build("2"));
    for file in [
        "out/digits/imatrix.json",
        "out/digits/model.gguf",
        "out/digits/metrics.json",
        "pipelines/digits.lock",
    ] {
        assert!(
            std::fs::read(one.file(file)).unwrap() == std::fs::read(two.file(file)).unwrap(),
            "{file} differs between 1 and 2 threads"
        );
    }
}

#[test]
fn a_failed_gate_exits_3_blocks_packaging_and_is_remembered() {
    let ws = digits();
    edit(
        &ws,
        "path: accuracy_drop_points, max: 2.0",
        "path: accuracy_drop_points, max: -1.0",
    );
    let out = ws.run(&["build"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("FAIL accuracy drop vs float (points)"),
        "{err}"
    );
    assert!(
        err.contains("PASS binary size (bytes)"),
        "every check is listed: {err}"
    );
    assert!(!ws.exists("out/digits/package"), "nothing is packaged");
    assert_eq!(json(&ws, "out/digits/gates.json")["passed"], false);
    let lock = json(&ws, "pipelines/digits.lock");
    assert_eq!(lock["stages"]["gates"]["gate"], "failed");
    assert!(lock["stages"].get("package").is_none());

    // The same inputs give the same verdict without re-running anything.
    let again = ws.build(&[], 3);
    assert_eq!(again.of("digits:gates"), "gate-failed");
    assert_eq!(again.of("digits:quantize"), "up-to-date");
    assert_eq!(again.of("digits:package"), "blocked");
    assert_eq!(again.of("digits:firmware"), "blocked");
}

#[test]
fn the_c_header_compiles_and_embeds_the_gguf_aligned() {
    let ws = digits();
    ws.build(&["digits:firmware"], 0);
    ws.write(
        "dump.c",
        "#include <stdint.h>\n#include <stdio.h>\n#include \"digits_model.h\"\nint main(void) {\n  if ((uintptr_t)digits_model % 32 != 0) return 2;\n  if (sizeof digits_model != DIGITS_MODEL_SIZE) return 3;\n  fwrite(digits_model, 1, sizeof digits_model, stdout);\n  return 0;\n}\n",
    );
    let status = Command::new("cc")
        .args(["-I", "out/digits/package", "dump.c", "-o", "dump"])
        .current_dir(ws.path())
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new(ws.file("dump")).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "aligned and of the declared size"
    );
    assert!(out.stdout == std::fs::read(ws.file("out/digits/package/digits.gguf")).unwrap());
    let manifest = json(&ws, "out/digits/package/manifest.json");
    assert_eq!(manifest["gates"]["passed"], true);
    assert_eq!(
        manifest["artifacts"]["digits.gguf"]["bytes"]
            .as_u64()
            .unwrap() as usize,
        out.stdout.len()
    );
}

#[test]
fn infer_prints_the_top_classes() {
    let ws = digits();
    ws.build(&["digits:quantize"], 0);
    let out = ws.run(&[
        "infer",
        "out/digits/model.gguf",
        "--input",
        "examples/digits/heldout.npz",
        "--limit",
        "3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 3);
    // Each line is `sample i: LABEL P, ...  (label L)`; the top class matches the label.
    for line in text.lines() {
        let top = line.split(": ").nth(1).unwrap().split(' ').next().unwrap();
        let label = line.rsplit("(label ").next().unwrap().trim_end_matches(')');
        assert_eq!(top, label, "{line}");
    }
}

#[test]
fn prune_reaches_the_target_sparsity() {
    let ws = digits();
    ws.pipeline(
        "prune",
        "version: 1\nstages:\n  prune:\n    op: prune\n    inputs: {weights: examples/digits/mlp.safetensors, architecture: examples/digits/mlp.yaml}\n    outputs: {weights: out/pruned.safetensors}\n    params: {sparsity: 0.5, scope: global}\n",
    );
    ws.build(&["prune"], 0);
    let tensors = candle_core::safetensors::load(
        ws.file("out/pruned.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let (mut zeros, mut total) = (0usize, 0usize);
    for name in ["fc1.weight", "fc2.weight", "fc3.weight"] {
        let v = tensors[name]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        zeros += v.iter().filter(|x| **x == 0.0).count();
        total += v.len();
    }
    assert_eq!(zeros, total / 2);
    assert_eq!(tensors["fc1.bias"].dims(), &[256], "biases are kept");
}

#[test]
fn bad_ml_inputs_get_clear_errors() {
    // An unknown quantization type is caught before anything runs.
    let ws = digits();
    edit(&ws, "type: q4_k", "type: q9_k");
    let out = ws.run(&["build"]);
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!("unknown_quantization_type", stderr(&out));

    // An override whose block does not fit the rows.
    let ws = digits();
    edit(
        &ws,
        "{tensors: \"fc1.weight\", type: q8_0}",
        "{tensors: \"fc1.weight\", type: q4_k}",
    );
    assert_bad_input(
        &ws,
        "digits:quantize",
        "rows of 64 values are not a multiple of its block of 256",
    );

    // Weights that do not match the architecture: a missing tensor, a wrong shape.
    let ws = digits();
    let arch = ws.read("examples/digits/mlp.yaml");
    ws.write(
        "examples/digits/mlp.yaml",
        &arch.replace("name: fc3", "name: head"),
    );
    assert_bad_input(
        &ws,
        "digits:quantize",
        "tensor `head.weight` (shape [10, 256]) is missing",
    );
    ws.write(
        "examples/digits/mlp.yaml",
        &arch
            .replace("out: 10}", "out: 12}")
            .replace("\"9\"]", "\"9\", a, b]"),
    );
    assert_bad_input(
        &ws,
        "digits:quantize",
        "tensor `fc3.weight` has shape [10, 256] but the architecture needs [12, 256]",
    );

    // A compressed .npz is refused with the way out (SPEC.md, "Models").
    let ws = digits();
    let status = Command::new("python3")
        .args(["-c", "import numpy as np; np.savez_compressed('examples/digits/heldout.npz', x=np.zeros((4, 64), np.float32), y=np.zeros(4, np.int64))"])
        .current_dir(ws.path())
        .status()
        .unwrap();
    assert!(status.success(), "numpy comes with the gguf package");
    assert_bad_input(
        &ws,
        "digits:evaluate",
        "save it with np.savez, not np.savez_compressed",
    );

    // A kernel of zero, labels outside the classes, a profile without a speed.
    let ws = digits();
    let arch = ws.read("examples/digits/mlp.yaml");
    ws.write(
        "examples/digits/mlp.yaml",
        &arch.replace(
            "out: 256}\n  - {type: relu}\n  - {type: linear, name: fc2",
            "out: 0}\n  - {type: relu}\n  - {type: linear, name: fc2",
        ),
    );
    assert_bad_input(&ws, "digits:quantize", "`out` must be at least 1");
    let ws = digits();
    let x = candle_core::Tensor::zeros((2, 64), candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    let y = candle_core::Tensor::new(&[3i64, 12], &candle_core::Device::Cpu).unwrap();
    candle_core::Tensor::write_npz(
        &[("x", &x), ("y", &y)],
        ws.file("examples/digits/heldout.npz"),
    )
    .unwrap();
    assert_bad_input(
        &ws,
        "digits:evaluate",
        "label 12 is out of range for a model with 10 classes",
    );
    let ws = digits();
    ws.write(
        "devices/profiles.yaml",
        &ws.read("devices/profiles.yaml")
            .replace("peak_gflops: 0.96", "peak_gflops: 0"),
    );
    assert_bad_input(
        &ws,
        "digits:report",
        "peak_gflops must be a positive number",
    );

    // Evaluation needs labels.
    let ws = digits();
    let x = candle_core::Tensor::zeros((4, 64), candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    candle_core::Tensor::write_npz(&[("x", &x)], ws.file("examples/digits/heldout.npz")).unwrap();
    let out = ws.run(&["build", "digits:evaluate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("has no labels"), "{}", stderr(&out));
}

#[test]
fn quantized_evaluation_really_runs_quantized_kernels() {
    // SPEC.md, "`evaluate`": the quantized model's logits differ from a float model that uses the very
    // same (dequantized) weights, because QMatMul also quantizes activations.
    assert!(std::env::var_os("CANDLE_DEQUANTIZE_ALL").is_none());
    let ws = digits();
    ws.build(&["digits:quantize"], 0);
    let path = ws.file("out/digits/model.gguf");
    let quant = edgebuild_ml::model::QuantModel::load(&path).unwrap();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let mut tensors = std::collections::BTreeMap::new();
    for spec in quant.arch.tensor_specs().unwrap() {
        let q = content
            .tensor(&mut file, &spec.name, &candle_core::Device::Cpu)
            .unwrap();
        tensors.insert(
            spec.name.clone(),
            q.dequantize(&candle_core::Device::Cpu)
                .unwrap()
                .reshape(spec.shape)
                .unwrap(),
        );
    }
    let dequantized = edgebuild_ml::model::FloatWeights { tensors };
    let data = edgebuild_ml::data::Dataset::load(
        &ws.file("examples/digits/heldout.npz"),
        &quant.arch.input_shape,
    )
    .unwrap();
    let x = data.x.narrow(0, 0, 64).unwrap();
    let q = quant.forward(&x).unwrap();
    let f = edgebuild_ml::model::forward(&quant.arch, &dequantized.params().unwrap(), &x).unwrap();
    let diff = (&q - &f)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 1e-4, "quantized kernels change the logits ({diff})");
    assert!(diff < 1.0, "but only a little ({diff})");
}

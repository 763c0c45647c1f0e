//! `edgebuild init --onnx` (SPEC.md, "`edgebuild init`"): a pipeline that starts with the
//! import stage, with params chosen from the model, that builds and passes its gates as written;
//! bad input is refused with exit 2 and nothing written.

mod common;

use std::process::Command;

use common::{REPO, Workspace, stderr};

/// A workspace with a small ONNX classifier at `model/tiny.onnx` (see `python/make_onnx.py`).
fn with_model(kind: &str) -> Workspace {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.file("model")).unwrap();
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/make_onnx.py"
        ))
        .arg(ws.file("model/tiny.onnx"))
        .arg(kind)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "make_onnx.py (CI installs numpy and onnx): {}",
        stderr(&out)
    );
    ws
}

fn json(ws: &Workspace, rel: &str) -> serde_json::Value {
    serde_json::from_str(&ws.read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn init_onnx_writes_a_pipeline_that_imports_builds_and_passes_its_gates() {
    let ws = with_model("static");
    let init = ["init", "--onnx", "model/tiny.onnx"];
    let out = ws.run(&init);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wrote pipelines/tiny.yaml"),
        "{}",
        stderr(&out)
    );
    let yaml = ws.read("pipelines/tiny.yaml");
    insta::assert_snapshot!("init_onnx_pipeline", yaml);

    let report = ws.build(&[], 0);
    for stage in [
        "import",
        "calibration",
        "heldout",
        "imatrix",
        "quantize",
        "evaluate",
        "report",
        "gates",
        "package",
    ] {
        assert_eq!(report.of(&format!("tiny:{stage}")), "ran", "{stage}");
    }
    let gates = json(&ws, "out/tiny/gates.json");
    assert_eq!(gates["passed"], true, "{gates}");
    // The chosen type and its fallbacks are what the GGUF holds.
    let metrics = json(&ws, "out/tiny/metrics.json");
    assert_eq!(metrics["samples"], 512);
    let kernels = &metrics["quantized_kernels"];
    assert_eq!(kernels["gemm0.weight"], "q8_0", "{kernels}");
    assert_eq!(
        kernels["conv1.weight"], "f16",
        "depthwise rows of 9: {kernels}"
    );
    let import = json(&ws, "out/tiny/import.json");
    assert_eq!(import["batchnorm_folded"][0]["into"], "conv0", "{import}");
    let data = json(&ws, "out/tiny/report.json");
    assert_eq!(data["model"], "tiny");

    // It does not overwrite the pipeline; --force does.
    ws.write("pipelines/tiny.yaml", "edited by hand\n");
    let out = ws.run(&init);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("already exist"), "{}", stderr(&out));
    assert_eq!(ws.read("pipelines/tiny.yaml"), "edited by hand\n");
    assert_eq!(
        ws.run(&["init", "--onnx", "model/tiny.onnx", "--force"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(ws.read("pipelines/tiny.yaml"), yaml);
}

#[test]
fn init_onnx_takes_the_shape_range_type_and_data_sets_it_is_given() {
    let ws = with_model("dynamic");
    let out = ws.run(&["init", "--onnx", "model/tiny.onnx"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is dynamic") && stderr(&out).contains("--input-shape"),
        "{}",
        stderr(&out)
    );
    assert!(!ws.exists("pipelines/tiny.yaml"));

    let out = ws.run(&[
        "init",
        "--onnx",
        "model/tiny.onnx",
        "--name",
        "cam",
        "--input-shape",
        "3,12,20",
        "--input-range",
        "-1,1",
        "--type",
        "q4_0",
        "--max-latency-ms",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let yaml = ws.read("pipelines/cam.yaml");
    for needle in [
        "params: {name: \"cam\", input_shape: [3, 12, 20]}",
        "range: [-1.0, 1.0]",
        "params: {type: \"q4_0\"}",
        "input [3, 12, 20]",
        "path: \"predicted.cortex-m7.latency_ms\", max: 3}",
    ] {
        assert!(yaml.contains(needle), "{needle}:\n{yaml}");
    }
    let plan = ws.run(&["plan"]);
    assert_eq!(plan.status.code(), Some(0), "{}", stderr(&plan));

    // The user's data sets instead of synthetic ones: an accuracy gate, no dataset stage.
    let ws = with_model("static");
    ws.write("data/cal.csv", "a\n1\n")
        .write("data/held.csv", "a\n1\n");
    let out = ws.run(&[
        "init",
        "--onnx",
        "model/tiny.onnx",
        "--calibration",
        "data/cal.csv",
        "--heldout",
        "data/held.csv",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let yaml = ws.read("pipelines/tiny.yaml");
    assert!(!yaml.contains("op: dataset"), "{yaml}");
    assert!(yaml.contains("calibration: \"data/cal.csv\""), "{yaml}");
    assert!(
        yaml.contains("path: accuracy_drop_points, max: 2}"),
        "{yaml}"
    );
}

#[test]
fn init_onnx_refuses_bad_input() {
    let ws = with_model("static");
    ws.write("model/notes.onnx", "not a protobuf at all\n");
    std::fs::copy(ws.file("model/tiny.onnx"), ws.file("model/truncated.onnx")).unwrap();
    let bytes = std::fs::read(ws.file("model/tiny.onnx")).unwrap();
    std::fs::write(ws.file("model/truncated.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    let detector = with_model("detector");
    std::fs::copy(
        detector.file("model/tiny.onnx"),
        ws.file("model/detector.onnx"),
    )
    .unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["init", "--onnx", "model/missing.onnx"],
            "ONNX model model/missing.onnx does not exist",
        ),
        (
            &["init", "--onnx", "model/notes.onnx"],
            "ONNX model model/notes.onnx: not an ONNX model",
        ),
        (
            &["init", "--onnx", "model/truncated.onnx"],
            "not an ONNX model (the protobuf does not decode",
        ),
        (
            &["init", "--onnx", "model/detector.onnx"],
            "per sample, not one score",
        ),
        (
            &["init", "--onnx", "/etc/hostname"],
            "is outside the workspace",
        ),
        (
            &["init", "--onnx", "model/tiny.onnx", "--type", "q9_z"],
            "unknown quantization type `q9_z`",
        ),
        (
            &["init", "--onnx", "model/tiny.onnx", "--device", "esp32"],
            "no device profile `esp32`",
        ),
        (
            &["init", "--onnx", "model/tiny.onnx", "--input-range", "1,0"],
            "is not two finite, increasing numbers",
        ),
        (
            &[
                "init",
                "--onnx",
                "model/tiny.onnx",
                "--calibration",
                "model/tiny.onnx",
            ],
            "--calibration and --heldout go together",
        ),
        (
            &[
                "init",
                "--onnx",
                "model/tiny.onnx",
                "--weights",
                "model/tiny.onnx",
            ],
            "cannot be used with",
        ),
        (&["init", "--input-shape", "3,16,16"], "--onnx"),
    ];
    for (args, needle) in cases {
        let out = ws.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert!(
            std::fs::read_dir(ws.file("pipelines"))
                .unwrap()
                .next()
                .is_none(),
            "{args:?} wrote a pipeline"
        );
    }
}

#[test]
fn init_onnx_chooses_q8_0_for_the_mlperf_keyword_spotter() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.file("model")).unwrap();
    std::fs::copy(
        std::path::Path::new(REPO).join("examples/mlperf-tiny/kws_dscnn.onnx"),
        ws.file("model/kws_dscnn.onnx"),
    )
    .unwrap();
    let out = ws.run(&[
        "init",
        "--onnx",
        "model/kws_dscnn.onnx",
        "--input-range=-123.4,25.7",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let yaml = ws.read("pipelines/kws_dscnn.yaml");
    for needle in [
        "12 classes, input [1, 49, 10], 2656768 MACs",
        "params: {samples: 128, seed: 1, distribution: smooth, range: [-123.4, 25.7]}",
        "params: {samples: 512, seed: 2, distribution: smooth, range: [-123.4, 25.7]}",
        "params: {type: \"q8_0\"}",
        "the others fall back to f16",
    ] {
        assert!(yaml.contains(needle), "{needle}:\n{yaml}");
    }
}

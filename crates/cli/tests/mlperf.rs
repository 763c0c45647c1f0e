//! The MLPerf Tiny pipelines (`pipelines/{kws,resnet8,vww}.yaml`) build end to end as
//! committed, pass their gates, and their GGUFs read back through an independent reader (the
//! `gguf` Python package), tensor by tensor, with the types `quantize` documents (SPEC.md,
//! "`quantize`": q8_0, and f16 for rows that do not fit its 32-value blocks).

mod common;

use std::path::Path;
use std::process::Command;

use common::{REPO, Workspace, stderr, stdout};

const PIPELINES: &[&str] = &["kws", "resnet8", "vww"];

fn mlperf() -> Workspace {
    let ws = Workspace::new();
    let mut files: Vec<String> = vec!["devices/profiles.yaml".into()];
    for model in ["kws_dscnn", "ic_resnet8", "vww_mobilenet_v1"] {
        files.push(format!("examples/mlperf-tiny/{model}.onnx"));
    }
    for p in PIPELINES {
        files.push(format!("pipelines/{p}.yaml"));
    }
    for file in files {
        let dest = ws.file(&file);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(Path::new(REPO).join(&file), dest).unwrap();
    }
    ws
}

fn json(ws: &Workspace, rel: &str) -> serde_json::Value {
    serde_json::from_str(&ws.read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// What the GGUF must hold for an imported architecture, worked out from the architecture
/// alone: every Conv and Gemm weight as a matrix `[out, rows]`, q8_0 when its rows are a
/// multiple of 32 and f16 otherwise; every other tensor f32 with its own shape.
fn expected(arch: &serde_json::Value) -> serde_json::Value {
    let mut matmul = std::collections::BTreeSet::new();
    for node in arch["nodes"].as_array().unwrap() {
        if node["op"] == "Conv" || node["op"] == "Gemm" {
            matmul.insert(node["inputs"][1].as_str().unwrap().to_string());
        }
    }
    let mut out = serde_json::Map::new();
    for (name, shape) in arch["weights"].as_object().unwrap() {
        let shape: Vec<u64> = shape
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        let entry = if matmul.contains(name) {
            let rows: u64 = shape[1..].iter().product();
            serde_json::json!({
                "type": if rows % 32 == 0 { "Q8_0" } else { "F16" },
                "shape": [shape[0], rows],
            })
        } else {
            serde_json::json!({"type": "F32", "shape": shape})
        };
        out.insert(name.clone(), entry);
    }
    serde_json::Value::Object(out)
}

#[test]
fn the_mlperf_tiny_pipelines_build_pass_their_gates_and_their_ggufs_read_back() {
    let ws = mlperf();
    let report = ws.build(&[], 0);
    for p in PIPELINES {
        assert_eq!(report.of(&format!("{p}:gates")), "ran", "{p}");
        let gates = json(&ws, &format!("out/{p}/gates.json"));
        assert_eq!(gates["passed"], true, "{p}: {gates}");
        let metrics = json(&ws, &format!("out/{p}/metrics.json"));
        // Labels are the f64 float model's top-1: the f32 float path agrees with nearly all.
        assert!(
            metrics["float"]["top1"].as_f64().unwrap() >= 0.99,
            "{p}: {metrics}"
        );

        let arch = json(&ws, &format!("out/{p}/model.json"));
        let expected = expected(&arch);
        let n = expected.as_object().unwrap().len();
        ws.write(&format!("expected-{p}.json"), &expected.to_string());
        let out = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/python/check_gguf.py"
            ))
            .args([
                format!("out/{p}/model.gguf"),
                format!("out/{p}/weights.safetensors"),
                format!("expected-{p}.json"),
            ])
            .current_dir(ws.path())
            .output()
            .expect("python3 runs (CI installs the gguf package)");
        assert!(
            out.status.success(),
            "{p}: {}\n{}",
            stdout(&out),
            stderr(&out)
        );
        assert_eq!(
            stdout(&out).lines().filter(|l| l.ends_with(" ok")).count(),
            n,
            "{p}: every tensor is checked"
        );
    }
}

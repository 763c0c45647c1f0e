//! The ONNX importer and the float forward pass against an independent runtime: ONNX Runtime
//! (the `onnxruntime` Python package) on the same inputs, for small models built with
//! `onnx.helper` (one per op and edge case, `python/onnx_cases.py`) and for the three MLPerf
//! Tiny models. The max abs difference must be at most 1e-4 × the output's range. Bad files are
//! refused with an error that says what is wrong, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use edgebuild_ml::model::{FloatWeights, forward};
use edgebuild_ml::onnx::{ImportOptions, import};

const TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");
const MLPERF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/mlperf-tiny");

fn python(args: &[&str]) {
    let out = Command::new("python3")
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 {args:?} failed (run .ci/run to install numpy, onnx and onnxruntime):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cases() -> (tempfile::TempDir, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    python(&[
        &format!("{TESTS}/python/onnx_cases.py"),
        dir.path().to_str().unwrap(),
    ]);
    let list = std::fs::read(dir.path().join("cases.json")).unwrap();
    let list = serde_json::from_slice(&list).unwrap();
    (dir, list)
}

/// Imports `model`, writes the weights, loads them back as a user's pipeline would, and runs
/// the input through the float forward pass.
fn run(model: &Path, input: &Tensor, options: &ImportOptions) -> Result<Tensor, String> {
    let imported = import(model, options)?;
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("w.safetensors");
    edgebuild_ml::model::save_safetensors(&weights, &imported.weights)?;
    let arch_path = dir.path().join("arch.json");
    std::fs::write(
        &arch_path,
        serde_json::to_vec_pretty(&imported.arch).unwrap(),
    )
    .unwrap();
    let arch = edgebuild_ml::model::Architecture::load(&arch_path)?;
    let weights = FloatWeights::load(&weights, &arch)?;
    forward(&arch, &weights.params()?, input)
}

fn compare(name: &str, got: &Tensor, expected: &Tensor) -> f32 {
    check(name, got, expected).unwrap_or_else(|e| panic!("{e}"))
}

/// The max abs difference relative to the output range, or why it is too large.
fn check(name: &str, got: &Tensor, expected: &Tensor) -> Result<f32, String> {
    // ONNX may squeeze the batch of 1 away (Squeeze without axes); edgebuild keeps it.
    let same = got.dims() == expected.dims()
        || (got.dims().first() == Some(&1) && &got.dims()[1..] == expected.dims());
    if !same {
        return Err(format!(
            "{name}: shape {:?}, expected {:?}",
            got.dims(),
            expected.dims()
        ));
    }
    let e: Vec<f32> = expected.flatten_all().unwrap().to_vec1().unwrap();
    let g: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    let range = e.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
        - e.iter().cloned().fold(f32::INFINITY, f32::min);
    let diff = e
        .iter()
        .zip(&g)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let bound = 1e-4 * range.max(1e-6);
    if diff > bound {
        return Err(format!(
            "{name}: max abs difference {diff} is above 1e-4 × the output range {range}"
        ));
    }
    Ok(diff / range.max(1e-6))
}

#[test]
fn every_op_and_edge_case_matches_onnx_runtime() {
    let (dir, list) = cases();
    let mut checked = Vec::new();
    let mut failed = Vec::new();
    for case in list["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let input = Tensor::read_npy(dir.path().join(case["input"].as_str().unwrap())).unwrap();
        let expected =
            Tensor::read_npy(dir.path().join(case["expected"].as_str().unwrap())).unwrap();
        let model = dir.path().join(case["model"].as_str().unwrap());
        let opset = case["opset"].as_i64().unwrap();
        let refused = match (opset, name) {
            (22.., _) => Some("is not supported: edgebuild reads opsets 11 to 21"),
            // A batch of 1 merged into the features: edgebuild keeps the batch apart.
            (_, "flatten_axis2") => Some("keeps the batch apart"),
            _ => None,
        };
        if let Some(needle) = refused {
            match import(&model, &ImportOptions::default()) {
                Ok(_) => failed.push(format!("{name}: imported, but should be refused")),
                Err(e) if e.contains(needle) => checked.push((name.to_string(), 0.0)),
                Err(e) => failed.push(format!("{name}: refused with `{e}`")),
            }
            continue;
        }
        match run(&model, &input, &ImportOptions::default())
            .map_err(|e| format!("{name}: {e}"))
            .and_then(|got| check(name, &got, &expected))
        {
            Ok(error) => checked.push((name.to_string(), error)),
            Err(e) => failed.push(e),
        }
    }
    assert!(
        failed.is_empty(),
        "{} case(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert!(checked.len() >= 70, "{} cases", checked.len());
    let required = [
        "conv_dilation2",
        "conv_groups2",
        "conv_rect_asym_pads",
        "conv_depthwise_mult2",
        "avgpool_ceil_cip1",
        "softmax_axis1_4d_opset11",
        "shape_gather_reshape",
        "conv_external_data",
        "maxpool_ceil",
        "avgpool_pads_cip1",
        "add_bcast_channel",
        "concat_channels",
        "transpose_reshape",
    ];
    for r in required {
        assert!(
            checked.iter().any(|(n, _)| n.starts_with(r)),
            "no case {r}: {:?}",
            checked.iter().map(|c| &c.0).collect::<Vec<_>>()
        );
    }
}

#[test]
fn the_mlperf_tiny_models_match_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    for (model, shape) in [
        ("kws_dscnn", vec![1, 1, 49, 10]),
        ("ic_resnet8", vec![1, 3, 32, 32]),
        ("vww_mobilenet_v1", vec![1, 3, 96, 96]),
    ] {
        let path = PathBuf::from(MLPERF).join(format!("{model}.onnx"));
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| (i as f32 * 0.618).sin() * 0.5 + 0.5)
            .collect();
        let x = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
        let input = dir.path().join(format!("{model}.in.npy"));
        let output = dir.path().join(format!("{model}.out.npy"));
        x.write_npy(&input).unwrap();
        python(&[
            &format!("{TESTS}/python/ort_run.py"),
            path.to_str().unwrap(),
            input.to_str().unwrap(),
            output.to_str().unwrap(),
        ]);
        let expected = Tensor::read_npy(&output).unwrap();
        let got =
            run(&path, &x, &ImportOptions::default()).unwrap_or_else(|e| panic!("{model}: {e}"));
        compare(model, &got, &expected);
    }
}

#[test]
fn bad_files_are_refused_with_what_is_wrong() {
    let (dir, list) = cases();
    for bad in list["bad"].as_array().unwrap() {
        let name = bad["name"].as_str().unwrap();
        let path = dir.path().join(bad["file"].as_str().unwrap());
        if name == "bad_dynamic_batch" {
            // A dynamic batch is what edgebuild runs anyway: only other dynamic dims need a size.
            let imported = import(&path, &ImportOptions::default()).unwrap();
            assert_eq!(imported.arch.input_shape, vec![3, 8, 8]);
            continue;
        }
        let err = match import(&path, &ImportOptions::default()) {
            Ok(_) => panic!("{name}: imported, but {}", bad["description"]),
            Err(e) => e,
        };
        let expect = bad["expect"].as_str().unwrap();
        let needle = match expect {
            "decode_error" => "does not decode",
            "missing_graph" => "has no graph",
            "unsupported_op" => "supported",
            "io_count" => "say which one is used",
            "external_data_missing" => "is missing",
            "external_data_path" => "not a file beside the model",
            "dims_overflow" => "overflow",
            "negative_dim" => "negative",
            "data_size_mismatch" => "holds",
            "unsupported_dtype" => "is not read by edgebuild",
            other => panic!("{name}: no expectation for `{other}`"),
        };
        assert!(err.contains(needle), "{name} ({expect}): {err}");
    }
}

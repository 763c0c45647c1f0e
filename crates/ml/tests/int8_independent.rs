//! edgebuild's int8 arithmetic against independent runtimes (SPEC.md, "`int8`"), on the digits
//! model and the three MLPerf Tiny models:
//!
//! - node by node: each int8 node, cut out of the QDQ ONNX export and run in ONNX Runtime on
//!   edgebuild's own int8 input to it, is at most 1 LSB from edgebuild's output. (ONNX
//!   Runtime computes in float and rounds half to even; the int8 contract requantizes with
//!   fixed-point multipliers, as TFLite does. Off-by-one values are a fraction of a percent.)
//! - end to end: the whole QDQ model in ONNX Runtime picks edgebuild's top-1 class on ≥ 95%
//!   of held-out inputs. (The per-node ±1 differences compound through a network, so whole
//!   outputs differ by more than 1 LSB, most on the residual ResNet-8.)
//! - the `.tflite` export in LiteRT's reference kernels, on edgebuild's own int8 inputs: top-1
//!   agreement and values within 1 LSB ≥ 99% (TFLite's arithmetic is the int8 contract's).
//! - against float: edgebuild's int8 models pick the float model's class at least as often
//!   as the MLPerf Tiny reference int8 `.tflite` files (ai-edge-litert) do on the same
//!   inputs. (Those were calibrated on the real data sets, edgebuild's on the synthetic
//!   distribution the held-out inputs come from; the comparison is of quantization as each
//!   was built, not of arithmetic.)

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use edgebuild_ml::int8::calibrate::{Method, calibrate};
use edgebuild_ml::int8::lower::lower;
use edgebuild_ml::model::{Architecture, FloatWeights, forward};
use edgebuild_ml::onnx::{ImportOptions, import};
use edgebuild_ml::ops::dataset::{Distribution, synthesize};

const TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn python(args: &[&str]) {
    let out = Command::new("python3")
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 {args:?} failed (run .ci/run to install onnxruntime and ai-edge-litert):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node-by-node helper's report (`SCRIPT MODEL VALUES.npz NODES.json REPORT.json`): one
/// JSON object per node, in the nodes' order.
fn layers_report(
    script: &str,
    model: &Path,
    values: &Path,
    nodes: &Path,
) -> Vec<serde_json::Value> {
    let report = values.with_extension(format!("{script}.json"));
    python(&[
        &format!("{TESTS}/python/{script}"),
        model.to_str().unwrap(),
        values.to_str().unwrap(),
        nodes.to_str().unwrap(),
        report.to_str().unwrap(),
    ]);
    serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap()
}

/// The values of an .npy file a python helper wrote, flattened.
fn read_f32(path: &Path) -> Vec<f32> {
    Tensor::read_npy(path)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}

struct Case {
    arch: Architecture,
    weights: FloatWeights,
    range: [f32; 2],
    tflite: Option<PathBuf>,
}

fn mlperf(name: &str, range: [f32; 2], dir: &Path) -> Case {
    let imported = import(
        &PathBuf::from(REPO).join(format!("examples/mlperf-tiny/{name}.onnx")),
        &ImportOptions::default(),
    )
    .unwrap();
    let w = dir.join(format!("{name}.safetensors"));
    edgebuild_ml::model::save_safetensors(&w, &imported.weights).unwrap();
    let weights = FloatWeights::load(&w, &imported.arch).unwrap();
    Case {
        arch: imported.arch,
        weights,
        range,
        tflite: Some(PathBuf::from(REPO).join(format!("examples/mlperf-tiny/{name}_int8.tflite"))),
    }
}

fn digits() -> Case {
    let arch = Architecture::load(&PathBuf::from(REPO).join("examples/digits/mlp.yaml")).unwrap();
    let weights = FloatWeights::load(
        &PathBuf::from(REPO).join("examples/digits/mlp.safetensors"),
        &arch,
    )
    .unwrap();
    Case {
        arch,
        weights,
        range: [0.0, 16.0],
        tflite: None,
    }
}

#[test]
fn int8_models_agree_with_onnx_runtime_and_the_reference_tflite() {
    let dir = tempfile::tempdir().unwrap();
    let cases = vec![
        ("digits", digits()),
        ("kws_dscnn", mlperf("kws_dscnn", [-123.4, 25.7], dir.path())),
        ("ic_resnet8", mlperf("ic_resnet8", [0.0, 255.0], dir.path())),
        (
            "vww_mobilenet_v1",
            mlperf("vww_mobilenet_v1", [0.0, 1.0], dir.path()),
        ),
    ];
    for (name, case) in cases {
        let graph = case.arch.graph().unwrap();
        let shape = case.arch.input_shape.clone();
        let per: usize = shape.iter().product();
        let cal = synthesize(&shape, 32, 1, Distribution::Smooth, case.range);
        let n = 100;
        let held = synthesize(&shape, n, 2, Distribution::Smooth, case.range);
        let reference = case.weights.reference().unwrap();
        let ranges = calibrate(&graph, &reference, &cal, &shape, Method::MinMax).unwrap();
        let params = case.weights.params().unwrap();
        let model = lower(&graph, &params, &ranges, name, &[]).unwrap();
        // Ours, in int8 units of the output tensor.
        let out_t = &model.tensors[model.output];
        let ours: Vec<Vec<i8>> = held
            .chunks(per)
            .map(|s| {
                edgebuild_ml::int8::from_memory(
                    &model.run(&model.quantize_input(s)).unwrap(),
                    &model.output_shape,
                    out_t.layout,
                )
            })
            .collect();
        // ONNX Runtime on the QDQ export.
        let onnx = dir.path().join(format!("{name}.qdq.onnx"));
        std::fs::write(
            &onnx,
            edgebuild_ml::int8::qdq::export(&graph, &params, &model).unwrap(),
        )
        .unwrap();
        let mut full = vec![n];
        full.extend(&shape);
        let x = Tensor::from_vec(held.clone(), full.clone(), &Device::Cpu).unwrap();
        let inp = dir.path().join(format!("{name}.in.npy"));
        x.write_npy(&inp).unwrap();
        let out = dir.path().join(format!("{name}.ort.npy"));
        python(&[
            &format!("{TESTS}/python/ort_batch.py"),
            onnx.to_str().unwrap(),
            inp.to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        let ort: Vec<f32> = read_f32(&out);
        let classes = ours[0].len();
        let (mut within, mut total, mut agree) = (0usize, 0usize, 0usize);
        for (k, row) in ours.iter().enumerate() {
            let theirs: Vec<i32> = ort[k * classes..(k + 1) * classes]
                .iter()
                .map(|&v| (v as f64 / out_t.scale).round() as i32 + out_t.zero_point)
                .collect();
            for (a, b) in row.iter().zip(&theirs) {
                total += 1;
                within += usize::from((*a as i32 - b).abs() <= 1);
            }
            let r: Vec<f32> = row.iter().map(|&v| v as f32).collect();
            let t: Vec<f32> = theirs.iter().map(|&v| v as f32).collect();
            agree += usize::from(argmax(&r) == argmax(&t));
        }
        let within = within as f64 / total as f64;
        let agree = agree as f64 / n as f64;
        eprintln!("{name}: ORT QDQ: top-1 agreement {agree:.4}, values within 1 LSB {within:.4}");
        // LiteRT's reference kernels on the .tflite export, fed edgebuild's own int8 inputs:
        // TFLite's integer arithmetic, so the outputs agree to the LSB (softmax aside, whose
        // table TFLite builds its own way).
        let tfl = dir.path().join(format!("{name}.tflite"));
        std::fs::write(&tfl, edgebuild_ml::int8::tflite::export(&model).unwrap()).unwrap();
        let q_in: Vec<f32> = held
            .chunks(per)
            .flat_map(|s| model.quantize_input(s))
            .map(|q| q as f32)
            .collect();
        let q_inp = dir.path().join(format!("{name}.q.npy"));
        Tensor::from_vec(q_in, (n, per), &Device::Cpu)
            .unwrap()
            .write_npy(&q_inp)
            .unwrap();
        let tfl_out = dir.path().join(format!("{name}.litert.npy"));
        python(&[
            &format!("{TESTS}/python/tflite_int8.py"),
            tfl.to_str().unwrap(),
            q_inp.to_str().unwrap(),
            tfl_out.to_str().unwrap(),
        ]);
        let lite: Vec<f32> = read_f32(&tfl_out);
        let raw: Vec<Vec<i8>> = held
            .chunks(per)
            .map(|s| model.run(&model.quantize_input(s)).unwrap())
            .collect();
        let (mut same, mut near, mut top) = (0usize, 0usize, 0usize);
        for (k, row) in raw.iter().enumerate() {
            let theirs = &lite[k * row.len()..(k + 1) * row.len()];
            for (a, b) in row.iter().zip(theirs) {
                same += usize::from(*a as f32 == *b);
                near += usize::from((*a as f32 - b).abs() <= 1.0);
            }
            let r: Vec<f32> = row.iter().map(|&v| v as f32).collect();
            top += usize::from(argmax(&r) == argmax(theirs));
        }
        let values = (n * raw[0].len()) as f64;
        let (same, near, top) = (
            same as f64 / values,
            near as f64 / values,
            top as f64 / n as f64,
        );
        eprintln!(
            "{name}: LiteRT on the .tflite export: top-1 agreement {top:.4}, values equal {same:.4}, within 1 LSB {near:.4}"
        );
        assert!(top >= 0.99, "{name}: top-1 agreement with LiteRT {top}");
        assert!(near >= 0.99, "{name}: values within 1 LSB of LiteRT {near}");
        // Node by node, on edgebuild's own inputs to each node: ONNX Runtime's float
        // arithmetic and QuantizeLinear (round half to even) against edgebuild's integer
        // requantization (fixed-point multiplier, round half away): at most 1 LSB apart.
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        let plain_shape = |t: &str| -> Vec<usize> { graph.shapes[t].clone() };
        for sample in held.chunks(per).take(4).collect::<Vec<_>>() {
            tensors.clear();
            let input = model.quantize_input(sample);
            let mut record = |t: &edgebuild_ml::int8::QTensor, mem: &[i8]| {
                let shape = plain_shape(&t.name);
                let plain = edgebuild_ml::int8::from_memory(mem, &shape[1..], t.layout);
                let v: Vec<f32> = plain.iter().map(|&q| q as f32).collect();
                tensors.push((
                    t.name.clone(),
                    Tensor::from_vec(v, shape, &Device::Cpu).unwrap(),
                ));
            };
            record(&model.tensors[model.input], &input);
            model
                .run_with(&input, |i, out| {
                    record(&model.tensors[model.nodes[i].output], out)
                })
                .unwrap();
            let values = dir.path().join(format!("{name}.values.npz"));
            Tensor::write_npz(
                &tensors
                    .iter()
                    .map(|(n, t)| (n.as_str(), t))
                    .collect::<Vec<_>>(),
                &values,
            )
            .unwrap();
            let nodes: Vec<serde_json::Value> = model
                .nodes
                .iter()
                .map(|n| {
                    serde_json::json!({
                        "name": n.name,
                        "inputs": n.inputs.iter().map(|&t| &model.tensors[t].name).collect::<Vec<_>>(),
                        "output": model.tensors[n.output].name,
                    })
                })
                .collect();
            let nodes_path = dir.path().join(format!("{name}.nodes.json"));
            std::fs::write(&nodes_path, serde_json::to_vec(&nodes).unwrap()).unwrap();
            // The same input through the whole .tflite export in LiteRT: every node's output
            // is bit-identical up to the first fully connected layer. There LiteRT's
            // per-channel kernel rounds once ((acc M + 2^(30-s)) >> (31-s)) where its
            // convolutions, TFLite Micro and CMSIS-NN round twice, as edgebuild does
            // (SPEC.md, "`int8`"): at most 1 LSB, and what follows may differ more.
            let lite = layers_report("tflite_layers.py", &tfl, &values, &nodes_path);
            assert_eq!(lite.len(), model.nodes.len());
            let mut exact_so_far = true;
            for r in &lite {
                if r["op"].is_null() {
                    continue;
                }
                let diff = r["max_diff"].as_i64().unwrap();
                eprintln!(
                    "{name}: LiteRT {} ({}) max {diff} differ {}",
                    r["name"], r["op"], r["differ"]
                );
                if r["op"] == "FULLY_CONNECTED" && exact_so_far {
                    assert!(
                        diff <= 1,
                        "{name}: LiteRT's {} is {diff} LSB from edgebuild's",
                        r["name"]
                    );
                    exact_so_far = false;
                } else if exact_so_far {
                    assert_eq!(
                        diff, 0,
                        "{name}: LiteRT's {} ({}) differs from edgebuild's: {r}",
                        r["name"], r["op"]
                    );
                }
            }
            let report = layers_report("ort_layers.py", &onnx, &values, &nodes_path);
            assert_eq!(report.len(), model.nodes.len());
            for r in &report {
                eprintln!(
                    "{name}: {} max {} differ {}",
                    r["name"], r["max_diff"], r["differ"]
                );
                assert!(
                    r["max_diff"].as_i64().unwrap() <= 1,
                    "{name}: node {} is {} LSB from ONNX Runtime on the same input",
                    r["name"],
                    r["max_diff"]
                );
            }
        }
        assert!(
            agree >= 0.95,
            "{name}: top-1 agreement with ONNX Runtime {agree}"
        );
        // Agreement with float: ours against the reference .tflite's.
        let float = forward(&case.arch, &params, &x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let float_top: Vec<usize> = float.chunks(classes).map(argmax).collect();
        let our_agree = ours
            .iter()
            .zip(&float_top)
            .filter(|(row, f)| argmax(&row.iter().map(|&v| v as f32).collect::<Vec<_>>()) == **f)
            .count() as f64
            / n as f64;
        if let Some(tflite) = &case.tflite {
            let out = dir.path().join(format!("{name}.tflite.npy"));
            python(&[
                &format!("{TESTS}/python/tflite_batch.py"),
                tflite.to_str().unwrap(),
                inp.to_str().unwrap(),
                out.to_str().unwrap(),
            ]);
            let t: Vec<f32> = read_f32(&out);
            let their_agree = t
                .chunks(classes)
                .zip(&float_top)
                .filter(|(row, f)| argmax(row) == **f)
                .count() as f64
                / n as f64;
            eprintln!(
                "{name}: agreement with float: edgebuild int8 {our_agree:.4}, reference .tflite {their_agree:.4}"
            );
            assert!(
                our_agree >= their_agree,
                "{name}: edgebuild's int8 agrees with float {our_agree}, the reference .tflite {their_agree}"
            );
        }
    }
}

//! The generated C runtime (SPEC.md, "`runtime`") on the digits model and the three MLPerf Tiny
//! models:
//!
//! - it compiles with `-std=c99 -Wall -Wextra -Werror` under gcc, clang and arm-none-eabi-gcc
//!   (Cortex-M0+ portable C; M4, M7 and M55 with the DSP intrinsics);
//! - the objects for the device call nothing from libc but `memcpy` and `memset` (the compiler's
//!   own helpers, `__aeabi_*`, are not libc);
//! - compiled for this host, its outputs equal the reference int8 kernels' bit for bit on every
//!   sample, and a traced run dumps every node's output equal to the reference's;
//! - the arena is never larger than TFLM's greedy plan of the same tensors;
//! - the same model gives the same bytes.

use std::path::{Path, PathBuf};
use std::process::Command;

use edgebuild_ml::int8::Int8Model;
use edgebuild_ml::int8::calibrate::{Method, calibrate};
use edgebuild_ml::int8::codegen::{ArenaGoal, generate};
use edgebuild_ml::int8::lower::lower;
use edgebuild_ml::model::{Architecture, FloatWeights};
use edgebuild_ml::onnx::{ImportOptions, import};
use edgebuild_ml::ops::dataset::{Distribution, synthesize};
use edgebuild_ml::ops::runtime::write_sources;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const RUNTIME: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/runtime");

fn model_of(arch: &Architecture, weights: &FloatWeights, range: [f32; 2], name: &str) -> Int8Model {
    let graph = arch.graph().unwrap();
    let cal = synthesize(&arch.input_shape, 32, 1, Distribution::Smooth, range);
    let ranges = calibrate(
        &graph,
        &weights.reference().unwrap(),
        &cal,
        &arch.input_shape,
        Method::MinMax,
    )
    .unwrap();
    lower(&graph, &weights.params().unwrap(), &ranges, name, &[]).unwrap()
}

struct Case {
    name: &'static str,
    model: Int8Model,
    range: [f32; 2],
}

fn cases(dir: &Path) -> Vec<Case> {
    let arch = Architecture::load(&PathBuf::from(REPO).join("examples/digits/mlp.yaml")).unwrap();
    let weights = FloatWeights::load(
        &PathBuf::from(REPO).join("examples/digits/mlp.safetensors"),
        &arch,
    )
    .unwrap();
    let mut v = vec![Case {
        name: "digits",
        model: model_of(&arch, &weights, [0.0, 16.0], "digits"),
        range: [0.0, 16.0],
    }];
    for (name, range) in [
        ("kws_dscnn", [-123.4f32, 25.7]),
        ("ic_resnet8", [0.0, 255.0]),
        ("vww_mobilenet_v1", [0.0, 1.0]),
    ] {
        let imported = import(
            &PathBuf::from(REPO).join(format!("examples/mlperf-tiny/{name}.onnx")),
            &ImportOptions::default(),
        )
        .unwrap();
        let w = dir.join(format!("{name}.safetensors"));
        edgebuild_ml::model::save_safetensors(&w, &imported.weights).unwrap();
        let weights = FloatWeights::load(&w, &imported.arch).unwrap();
        v.push(Case {
            name,
            model: model_of(&imported.arch, &weights, range, name),
            range,
        });
    }
    v
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed (run .ci/run to install gcc, clang and gcc-arm-none-eabi):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn c_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .map(|p| p.display().to_string())
        .collect();
    v.sort();
    v
}

const STRICT: &[&str] = &["-std=c99", "-Wall", "-Wextra", "-Werror", "-O2"];

#[test]
fn the_generated_runtime_compiles_everywhere_and_is_bit_exact_on_this_host() {
    let tmp = tempfile::tempdir().unwrap();
    for case in cases(tmp.path()) {
        let model = &case.model;
        let generated = generate(model, ArenaGoal::Fast).unwrap();
        assert_eq!(
            generated,
            generate(model, ArenaGoal::Fast).unwrap(),
            "{}: deterministic",
            case.name
        );
        let small = generate(model, ArenaGoal::Small).unwrap();
        assert!(
            small.arena.bytes <= generated.arena.bytes,
            "{}: the small arena {} is not above the fast one {}",
            case.name,
            small.arena.bytes,
            generated.arena.bytes
        );
        assert!(
            generated.arena.bytes <= generated.arena.greedy_bytes,
            "{}: arena {} > TFLM greedy {}",
            case.name,
            generated.arena.bytes,
            generated.arena.greedy_bytes
        );
        let src = tmp.path().join(case.name);
        write_sources(&src, &generated).unwrap();

        // warning-free under every compiler, objects for the devices only need memcpy/memset
        for (cc, extra) in [
            ("gcc", vec![]),
            ("clang", vec![]),
            ("arm-none-eabi-gcc", vec!["-mcpu=cortex-m0plus", "-mthumb"]),
            ("arm-none-eabi-gcc", vec!["-mcpu=cortex-m4", "-mthumb"]),
            ("arm-none-eabi-gcc", vec!["-mcpu=cortex-m7", "-mthumb"]),
            ("arm-none-eabi-gcc", vec!["-mcpu=cortex-m55", "-mthumb"]),
        ] {
            let obj_dir = tmp
                .path()
                .join(format!("{}-{cc}-{}", case.name, extra.len()));
            std::fs::create_dir_all(&obj_dir).unwrap();
            for c in c_files(&src) {
                let obj = obj_dir.join(Path::new(&c).with_extension("o").file_name().unwrap());
                run(Command::new(cc)
                    .args(STRICT)
                    .args(&extra)
                    .args(["-ffreestanding", "-c", &c, "-o"])
                    .arg(&obj));
                if cc == "arm-none-eabi-gcc" {
                    let undefined = run(Command::new("arm-none-eabi-nm").arg("-u").arg(&obj));
                    for sym in undefined.split_whitespace().filter(|s| *s != "U") {
                        assert!(
                            sym.starts_with("eb_")
                                || sym.starts_with("__aeabi_")
                                || ["memcpy", "memset"].contains(&sym),
                            "{}: {} ({cc} {extra:?}) calls `{sym}`",
                            case.name,
                            Path::new(&c).display()
                        );
                    }
                }
            }
        }

        // bit-exact on this host, outputs and every node's trace
        let host = tmp.path().join(format!("{}-host", case.name));
        let trace_host = tmp.path().join(format!("{}-host-trace", case.name));
        for (exe, trace) in [(&host, false), (&trace_host, true)] {
            let mut cmd = Command::new("cc");
            cmd.args(STRICT).arg("-I").arg(&src);
            if trace {
                cmd.arg("-DEB_MODEL_TRACE");
            }
            cmd.args(c_files(&src))
                .arg(format!("{RUNTIME}/harness/host_main.c"))
                .arg("-o")
                .arg(exe);
            run(&mut cmd);
        }
        let shape = &model.input_shape;
        let per: usize = shape.iter().product();
        let held = synthesize(shape, 48, 7, Distribution::Smooth, case.range);
        let inputs: Vec<Vec<i8>> = held.chunks(per).map(|s| model.quantize_input(s)).collect();
        let input_file = tmp.path().join(format!("{}.in", case.name));
        std::fs::write(
            &input_file,
            inputs
                .iter()
                .flatten()
                .map(|&v| v as u8)
                .collect::<Vec<u8>>(),
        )
        .unwrap();
        let out_file = tmp.path().join(format!("{}.out", case.name));
        run(Command::new(&host).arg(&input_file).arg(&out_file));
        let got = std::fs::read(&out_file).unwrap();
        let want: Vec<u8> = edgebuild_ml::int8::run_all(model, &inputs)
            .unwrap()
            .into_iter()
            .flatten()
            .map(|v| v as u8)
            .collect();
        assert_eq!(got.len(), want.len(), "{}", case.name);
        assert!(
            got == want,
            "{}: host outputs differ from the reference",
            case.name
        );

        let trace_file = tmp.path().join(format!("{}.trace", case.name));
        run(Command::new(&trace_host)
            .arg(&input_file)
            .arg(&out_file)
            .arg("5")
            .arg(&trace_file));
        let trace = std::fs::read(&trace_file).unwrap();
        let mut reference = Vec::new();
        model
            .run_with(&inputs[5], |i, out| {
                reference.extend((i as u32).to_le_bytes());
                reference.extend((out.len() as u32).to_le_bytes());
                reference.extend(out.iter().map(|&v| v as u8));
            })
            .unwrap();
        assert!(
            trace == reference,
            "{}: the trace of every node equals the reference's",
            case.name
        );
    }
}

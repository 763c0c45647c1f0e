//! Hand-off: `init` scaffolds a workspace whose pipeline builds and passes its gates, the runbook
//! is generated from the pipeline and `plan` notices when it is stale, and `doctor` finds what a
//! newcomer's machine gets wrong.

mod common;

use common::{REPO, Workspace, stderr, stdout};

/// A directory with the digits model's files under `model/`, and no pipeline yet.
fn model_files() -> Workspace {
    let ws = Workspace::new();
    for file in [
        "mlp.yaml",
        "mlp.safetensors",
        "calibration.npz",
        "heldout.npz",
    ] {
        let dest = ws.file(&format!("model/{file}"));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(
            std::path::Path::new(REPO)
                .join("examples/digits")
                .join(file),
            dest,
        )
        .unwrap();
    }
    ws
}

const INIT: &[&str] = &[
    "init",
    "--name",
    "mnist8",
    "--weights",
    "model/mlp.safetensors",
    "--architecture",
    "model/mlp.yaml",
    "--calibration",
    "model/calibration.npz",
    "--heldout",
    "model/heldout.npz",
    "--device",
    "cortex-m7",
    "--max-size",
    "131072",
];

#[test]
fn init_scaffolds_a_pipeline_that_builds_and_passes_its_gates() {
    let ws = model_files();
    let out = ws.run(INIT);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for file in [
        "pipelines/mnist8.yaml",
        "devices/profiles.yaml",
        ".github/workflows/edgebuild.yml",
        ".gitignore",
    ] {
        assert!(ws.exists(file), "{file}");
    }
    insta::assert_snapshot!("init_pipeline", ws.read("pipelines/mnist8.yaml"));
    assert!(ws.read(".gitignore").contains("/out/\n"));
    let report = ws.build(&[], 0);
    assert_eq!(report.of("mnist8:gates"), "ran");
    assert_eq!(report.of("mnist8:package"), "ran");
    let gates: serde_json::Value = serde_json::from_str(&ws.read("out/mnist8/gates.json")).unwrap();
    assert_eq!(gates["passed"], true);
    assert_eq!(gates["checks"][1]["max"], 131072.0);

    // It does not overwrite; --force does.
    let before = ws.read("pipelines/mnist8.yaml");
    ws.write("pipelines/mnist8.yaml", "edited by hand\n");
    let out = ws.run(INIT);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already exist"), "{}", stderr(&out));
    assert_eq!(ws.read("pipelines/mnist8.yaml"), "edited by hand\n");
    let mut forced = INIT.to_vec();
    forced.push("--force");
    assert_eq!(ws.run(&forced).status.code(), Some(0));
    assert_eq!(ws.read("pipelines/mnist8.yaml"), before);
}

/// `init` with the digits files, one flag changed or added.
fn init_with(flag: &str, value: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "init",
        "--weights",
        "model/mlp.safetensors",
        "--architecture",
        "model/mlp.yaml",
        "--calibration",
        "model/calibration.npz",
        "--heldout",
        "model/heldout.npz",
    ]
    .map(String::from)
    .to_vec();
    match args.iter().position(|a| a == flag) {
        Some(i) => args[i + 1] = value.to_string(),
        None => args.extend([flag.to_string(), value.to_string()]),
    }
    args
}

#[test]
fn init_refuses_bad_answers() {
    let ws = model_files();
    let cases = [
        (
            vec!["init".to_string(), "--name".into(), "x".into()],
            "init needs --weights, --architecture, --calibration, --heldout",
        ),
        (
            init_with("--weights", "model/nope.safetensors"),
            "weights model/nope.safetensors does not exist",
        ),
        (
            init_with("--architecture", "model/mlp.safetensors"),
            "architecture model/mlp.safetensors",
        ),
        (init_with("--device", "esp32"), "no device profile `esp32`"),
        (
            init_with("--type", "q9_z"),
            "unknown quantization type `q9_z`",
        ),
        (
            init_with("--weights", "/etc/hostname"),
            "is outside the workspace",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ws.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
        assert!(!ws.exists("pipelines/model.yaml"));
    }
}

#[test]
fn the_runbook_lists_stages_gates_and_hashes_and_plan_notices_when_it_is_stale() {
    let ws = common::digits();
    let out = ws.run(&["runbook", "digits"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let runbook = stdout(&out);
    for stage in [
        "imatrix", "quantize", "evaluate", "report", "measure", "gates", "package", "firmware",
    ] {
        assert!(runbook.contains(&format!("`{stage}` (")), "stage {stage}");
    }
    assert!(
        runbook
            .contains("| accuracy drop vs float (points) | metrics `accuracy_drop_points` | ≤ 2 |")
    );
    assert!(runbook.contains("| top-1 agreement with float | metrics `top1_agreement` | ≥ 0.97 |"));
    let weights = common::sha256_of(&ws.file("examples/digits/mlp.safetensors"));
    assert!(runbook.contains(&format!(
        "| `examples/digits/mlp.safetensors` | `{weights}` |"
    )));
    assert!(runbook.contains("edgebuild verify-reproducible COMMIT digits"));

    // Written beside the pipeline, it is up to date; a changed threshold makes it stale.
    assert_eq!(
        ws.run(&["runbook", "digits", "--write"]).status.code(),
        Some(0)
    );
    assert_eq!(ws.read("pipelines/digits.runbook.md"), runbook);
    ws.build(&[], 0);
    let out = ws.run(&["plan", "--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let yaml = ws.read("pipelines/digits.yaml");
    ws.pipeline(
        "digits",
        &yaml.replace(
            "path: top1_agreement, min: 0.97",
            "path: top1_agreement, min: 0.98",
        ),
    );
    let out = ws.run(&["plan", "--check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("note: pipelines/digits.runbook.md no longer matches its pipeline: run `edgebuild runbook digits --write`"),
        "{}",
        stderr(&out)
    );
    let out = ws.run(&["runbook", "digits"]);
    assert!(
        stdout(&out).contains("| top-1 agreement with float | metrics `top1_agreement` | ≥ 0.98 |")
    );

    let out = ws.run(&["runbook", "digits", "--format", "html"]);
    assert!(stdout(&out).starts_with("<!DOCTYPE html>"));
    assert!(stdout(&out).contains("<table>"));
}

#[test]
fn doctor_finds_a_dirty_tree_a_missing_credential_and_toolchain_drift() {
    let ws = common::digits();
    ws.git_init();
    ws.build(&[], 0);
    ws.commit("built");
    let out = ws.run(&["doctor"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("ok   git       working tree clean"),
        "{}",
        stdout(&out)
    );

    // Uncommitted work, an S3 remote without credentials, and a lock written by another
    // edgebuild.
    ws.write("notes.txt", "wip\n");
    ws.write(
        "edgebuild.yaml",
        "remote:\n  url: s3://team-bucket/edgebuild\n",
    );
    let lock = ws.read("pipelines/digits.lock");
    ws.write(
        "pipelines/digits.lock",
        &lock.replace(env!("CARGO_PKG_VERSION"), "0.0.9"),
    );
    let out = ws
        .command()
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |check: &str, level: &str| -> String {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["check"] == check && c["level"] == level)
            .map(|c| c["message"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        find("git", "warn").contains("working tree not clean"),
        "{report}"
    );
    assert!(find("git", "fail").contains("lock files not committed: pipelines/digits.lock"));
    assert!(
        find("remote", "fail").contains("s3://team-bucket/edgebuild: no credentials"),
        "{report}"
    );
    assert!(
        find("toolchain", "warn").contains("edgebuild: 0.0.9 → "),
        "{report}"
    );
}

#[test]
fn doctor_runs_when_the_workspace_does_not_load() {
    let ws = Workspace::new();
    ws.pipeline(
        "p",
        "version: 1\nstages:\n  a:\n    cmd: \"cp ${inputs.0} out.txt\"\n    inputs: [w.bin]\n    outputs: [out.txt]\n",
    );
    ws.write("w.bin", "weights");
    assert_eq!(ws.run(&["add", "w.bin"]).status.code(), Some(0));
    std::fs::remove_file(ws.file("w.bin")).unwrap();
    let out = ws.run(&["doctor"]);
    assert_eq!(out.status.code(), Some(2));
    let text = stdout(&out);
    assert!(
        text.contains("FAIL pipelines the workspace does not load"),
        "{text}"
    );
    assert!(
        text.contains("FAIL inputs    w.bin.pointer: the file it points to is missing"),
        "{text}"
    );
    assert!(text.contains("`edgebuild pull`"), "{text}");
}

//! Bad input: every case gets a diagnostic pointing at the YAML, exit code 2, and nothing is
//! run or written. The text users read is snapshot-tested.

mod common;

use common::{Workspace, stderr};

/// Runs `build` on a workspace with the given pipeline files and returns the diagnostic.
fn rejected(files: &[(&str, &str)]) -> String {
    let ws = Workspace::new();
    ws.write("data/in.txt", "in\n");
    for (name, yaml) in files {
        ws.pipeline(name, yaml);
    }
    let plan = ws.run(&["plan"]);
    assert_eq!(plan.status.code(), Some(2), "plan: {}", stderr(&plan));
    let out = ws.run(&["build"]);
    assert_eq!(out.status.code(), Some(2), "build: {}", stderr(&out));
    assert_eq!(
        stderr(&plan),
        stderr(&out),
        "plan and build report the same problem"
    );
    for name in [
        "out",
        "cache",
        "pipelines/p.lock",
        "pipelines/q.lock",
        "ran",
    ] {
        assert!(!ws.exists(name), "{name} must not be written for bad input");
    }
    stderr(&out)
}

const OK_STAGE: &str = "  ok:\n    cmd: \"touch ran\"\n    outputs: [ran]\n";

#[test]
fn malformed_yaml() {
    insta::assert_snapshot!(rejected(&[(
        "p",
        "version: 1\nstages:\n  a:\n    cmd: [unclosed\n"
    )]));
}

#[test]
fn unknown_key_suggests_the_right_one() {
    insta::assert_snapshot!(rejected(&[(
        "p",
        "version: 1\nstages:\n  a:\n    cmd: \"cp data/in.txt out.txt\"\n    inputs: [data/in.txt]\n    outptus: [out.txt]\n"
    )]));
}

#[test]
fn both_cmd_and_op() {
    insta::assert_snapshot!(rejected(&[(
        "p",
        "version: 1\nstages:\n  a:\n    cmd: \"true\"\n    op: quantize\n"
    )]));
}

#[test]
fn neither_cmd_nor_op() {
    insta::assert_snapshot!(rejected(&[(
        "p",
        "version: 1\nstages:\n  a:\n    outputs: [out.txt]\n"
    )]));
}

#[test]
fn unknown_op() {
    insta::assert_snapshot!(rejected(&[(
        "p",
        "version: 1\nstages:\n  a:\n    op: frobnicate\n    outputs: [out.txt]\n"
    )]));
}

#[test]
fn two_stages_declare_the_same_output_across_files() {
    insta::assert_snapshot!(rejected(&[
        (
            "p",
            "version: 1\nstages:\n  a:\n    cmd: \"echo a > out.txt\"\n    outputs: [out.txt]\n"
        ),
        (
            "q",
            "version: 1\nstages:\n  b:\n    cmd: \"echo b > out.txt\"\n    outputs: [out.txt]\n"
        ),
    ]));
}

#[test]
fn cycle_is_printed() {
    insta::assert_snapshot!(rejected(&[(
        "p",
        &format!(
            "version: 1\nstages:\n{OK_STAGE}  a:\n    cmd: \"cp c.txt a.txt\"\n    inputs: [c.txt]\n    outputs: [a.txt]\n  b:\n    cmd: \"cp a.txt b.txt\"\n    inputs: [a.txt]\n    outputs: [b.txt]\n  c:\n    cmd: \"cp b.txt c.txt\"\n    inputs: [b.txt]\n    outputs: [c.txt]\n"
        )
    )]));
}

#[test]
fn missing_input_that_no_stage_produces() {
    insta::assert_snapshot!(rejected(&[(
        "p",
        "version: 1\nstages:\n  a:\n    cmd: \"cp data/missing.txt out.txt\"\n    inputs: [data/missing.txt]\n    outputs: [out.txt]\n"
    )]));
}

#[test]
fn paths_that_escape_the_workspace() {
    insta::assert_snapshot!(rejected(&[(
        "p",
        "version: 1\nstages:\n  a:\n    cmd: \"true\"\n    inputs: [../secret.txt, /etc/passwd]\n    outputs: [out/../../x.txt]\n"
    )]));
}

#[test]
fn a_symlink_out_of_the_workspace_is_an_escape() {
    let ws = Workspace::new();
    std::os::unix::fs::symlink(std::env::temp_dir(), ws.file("outside")).unwrap();
    ws.pipeline(
        "p",
        "version: 1\nstages:\n  a:\n    cmd: \"echo x > outside/x.txt\"\n    outputs: [outside/x.txt]\n",
    );
    let out = ws.run(&["build"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("goes through a symlink that leaves the workspace"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn undefined_reference_in_cmd() {
    insta::assert_snapshot!(rejected(&[(
        "p",
        "version: 1\nstages:\n  a:\n    cmd: \"sed s/x/${params.pattern}/ ${inputs.src} > ${outputs.0}\"\n    inputs: {src: data/in.txt}\n    outputs: [out.txt]\n    params: {patern: y}\n"
    )]));
}

#[test]
fn after_names_an_unknown_stage() {
    insta::assert_snapshot!(rejected(&[(
        "p",
        &format!("version: 1\nstages:\n{OK_STAGE}  a:\n    cmd: \"true\"\n    after: [okk]\n")
    )]));
}

#[test]
fn unsupported_version() {
    insta::assert_snapshot!(rejected(&[("p", "version: 2\nstages: {}\n")]));
}

#[test]
fn several_problems_are_reported_together() {
    insta::assert_snapshot!(rejected(&[(
        "p",
        "version: 1\nstages:\n  a:\n    outputs: [x]\n  b:\n    op: nope\n"
    )]));
}

#[test]
fn no_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin!("edgebuild"))
        .arg("plan")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no workspace found"));
}

#[test]
fn outputs_of_two_stages_may_not_nest() {
    insta::assert_snapshot!(rejected(&[(
        "p",
        "version: 1\nstages:\n  a:\n    cmd: \"mkdir -p out\"\n    outputs: [out]\n  b:\n    cmd: \"echo b > out/b.txt\"\n    outputs: [out/b.txt]\n"
    )]));
}

#[test]
fn a_stage_may_not_read_its_own_output() {
    insta::assert_snapshot!(rejected(&[(
        "p",
        "version: 1\nstages:\n  a:\n    cmd: \"ls data > data/listing.txt\"\n    inputs: [data]\n    outputs: [data/listing.txt]\n"
    )]));
}

#[test]
fn edgebuild_directories_are_off_limits() {
    insta::assert_snapshot!(rejected(&[(
        "p",
        "version: 1\nstages:\n  a:\n    cmd: \"true\"\n    inputs: [pipelines]\n    outputs: [cache/x]\n"
    )]));
}

#[test]
fn a_stage_may_not_run_after_itself() {
    insta::assert_snapshot!(rejected(&[(
        "p",
        "version: 1\nstages:\n  a:\n    cmd: \"true\"\n    after: [a]\n"
    )]));
}

#[test]
fn a_reproducible_stage_may_not_read_a_volatile_output() {
    insta::assert_snapshot!(rejected(&[(
        "p",
        "version: 1\nstages:\n  time:\n    cmd: \"date > t.txt\"\n    outputs: [t.txt]\n    volatile: true\n  ship:\n    cmd: \"cp t.txt shipped.txt\"\n    inputs: [t.txt]\n    outputs: [shipped.txt]\n"
    )]));
}

//! CI reports: `build --junit FILE` and `--summary FILE` describe every gate check and stage.

mod common;

use common::{Workspace, stderr};

const GATED: &str = r#"
version: 1
stages:
  measure:
    cmd: "mkdir -p out && printf '{\"accuracy\": 0.91, \"bytes\": 2048}' > out/metrics.json"
    outputs: [out/metrics.json]
  gate:
    op: gate
    inputs: {metrics: out/metrics.json}
    outputs: {verdict: out/gate.json}
    params:
      checks:
        - {name: "accuracy", input: metrics, path: accuracy, min: 0.95}
        - {name: "size (bytes)", input: metrics, path: bytes, max: 4096}
  ship:
    cmd: "cp out/metrics.json out/shipped.json"
    inputs: [out/metrics.json]
    outputs: [out/shipped.json]
    after: [gate]
  broken:
    cmd: "echo 'no such tool' >&2; exit 3"
    outputs: [out/never.txt]
"#;

#[test]
fn junit_and_markdown_report_every_check_and_stage() {
    let ws = Workspace::new();
    ws.pipeline("p", GATED);
    let out = ws.run(&[
        "build",
        "-k",
        "--junit",
        "reports/junit.xml",
        "--summary",
        "reports/summary.md",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let xml = ws.read("reports/junit.xml");
    insta::assert_snapshot!("junit", xml);
    insta::assert_snapshot!("summary", ws.read("reports/summary.md"));
    // The reports are the same on a second build that restores nothing and runs the failing
    // stage again: no timestamps, no durations.
    let again = ws.run(&["build", "-k", "--junit", "reports/junit.xml"]);
    assert_eq!(again.status.code(), Some(4));
    assert_eq!(ws.read("reports/junit.xml"), xml);
}

#[test]
fn a_passing_build_reports_success() {
    let ws = Workspace::new();
    ws.pipeline("p", &GATED.replace("min: 0.95", "min: 0.9").replace(
        "  broken:\n    cmd: \"echo 'no such tool' >&2; exit 3\"\n    outputs: [out/never.txt]\n",
        "",
    ));
    let out = ws.run(&["build", "--summary", "summary.md", "--junit", "junit.xml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let summary = ws.read("summary.md");
    assert!(
        summary.starts_with("### edgebuild build: passed\n"),
        "{summary}"
    );
    assert!(
        summary.contains("| p:gate | accuracy | 0.91 | ≥ 0.9 | pass |"),
        "{summary}"
    );
    let xml = ws.read("junit.xml");
    assert!(
        xml.contains(r#"tests="5" skipped="0" failures="0" errors="0""#),
        "{xml}"
    );
}

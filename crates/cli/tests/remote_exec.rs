//! Remote execution over REAPI v2 against a real server: buildbox-casd with buildbox-run
//! (bubblewrap), started by the tests and installed by `.ci/run`. Remote builds give the bytes a
//! local build gives, a fresh workspace is served from the action cache without executing, the
//! edgebuild binary (above the 4 MB batch limit) goes through ByteStream, an undeclared input
//! fails remotely as in the sandbox, and a server that goes away fails the build clearly or,
//! with `--remote-exec-fallback`, lets it finish locally.

mod common;

use std::path::Path;

use common::{Casd, REPO, Workspace, digits, files_under, stderr};
use serde_json::Value;

/// A workspace with the `text` pipeline: three `cmd` stages over the seed article.
fn text() -> Workspace {
    let ws = Workspace::new();
    for file in ["pipelines/text.yaml", "examples/text/seed-article.txt"] {
        let dest = ws.file(file);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(Path::new(REPO).join(file), dest).unwrap();
    }
    ws
}

fn remote_build(ws: &Workspace, casd: &Casd, extra: &[&str], code: i32) -> Value {
    let mut args = vec!["build", "--json", "--remote-exec"];
    let url = casd.url();
    args.push(&url);
    args.extend_from_slice(extra);
    let out = ws.run(&args);
    assert_eq!(out.status.code(), Some(code), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn remote_of(report: &Value) -> Vec<(String, String)> {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["remote"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect()
}

/// Non-volatile outputs under `out/`.
fn outputs(ws: &Workspace) -> Vec<(String, Vec<u8>)> {
    files_under(&ws.file("out"))
        .into_iter()
        .filter(|(path, _)| !path.ends_with("latency.json"))
        .collect()
}

#[test]
fn cmd_stages_built_remotely_match_a_local_build_and_a_fresh_workspace_only_hits_the_cache() {
    let casd = Casd::start();
    let local = text();
    local.build(&[], 0);
    let remote = text();
    let report = remote_build(&remote, &casd, &[], 0);
    assert!(
        remote_of(&report).iter().all(|(_, how)| how == "executed"),
        "{report:#}"
    );
    assert_eq!(report["remote_exec"]["executions"], 3);
    assert_eq!(outputs(&remote), outputs(&local));
    assert_eq!(
        remote.read("pipelines/text.lock"),
        local.read("pipelines/text.lock")
    );

    // A colleague's fresh clone: every stage comes from the action cache, nothing executes.
    let fresh = text();
    let report = remote_build(&fresh, &casd, &[], 0);
    assert!(
        remote_of(&report)
            .iter()
            .all(|(_, how)| how == "action-cache"),
        "{report:#}"
    );
    assert_eq!(report["remote_exec"]["executions"], 0);
    assert_eq!(report["remote_exec"]["action_cache_hits"], 3);
    assert_eq!(outputs(&fresh), outputs(&local));
}

#[test]
fn the_digits_pipeline_ops_included_builds_remotely_to_the_same_bytes() {
    let casd = Casd::start();
    let local = digits();
    local.build(&[], 0);
    let remote = digits();
    let report = remote_build(&remote, &casd, &[], 0);
    let how = remote_of(&report);
    assert!(how.iter().all(|(_, h)| h == "executed"), "{how:?}");
    // The ops ran from the edgebuild binary sent in the input root: far above the 4 MB batch
    // limit, so through ByteStream.
    let binary = std::fs::metadata(assert_cmd::cargo::cargo_bin!("edgebuild"))
        .unwrap()
        .len();
    assert!(binary > 4_000_000, "{binary}");
    assert!(
        report["remote_exec"]["bytestream_uploads"]
            .as_u64()
            .unwrap()
            >= 1,
        "{report:#}"
    );
    assert_eq!(outputs(&remote), outputs(&local));
    // The gate's checks came back from the worker.
    let gates = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "digits:gates")
        .unwrap();
    assert!(
        gates["log"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("PASS"))
    );
}

#[test]
fn an_undeclared_input_fails_remotely_as_in_the_sandbox() {
    let casd = Casd::start();
    let ws = Workspace::new();
    ws.write("data/declared.txt", "declared\n")
        .write("data/secret.txt", "not declared\n");
    ws.pipeline(
        "p",
        "version: 1\nstages:\n  leak:\n    cmd: \"cat ${inputs.0} data/secret.txt > ${outputs.0}\"\n    inputs: [data/declared.txt]\n    outputs: [out/leak.txt]\n",
    );
    for args in [
        vec!["build", "--remote-exec", &casd.url()],
        vec!["build", "--sandbox"],
    ] {
        let out = ws.run(&args);
        assert_eq!(out.status.code(), Some(4), "{args:?}");
        let text = stderr(&out);
        assert!(text.contains("p:leak"), "{text}");
        assert!(
            text.contains("an undeclared input is the likely cause"),
            "{args:?}: {text}"
        );
        assert!(!ws.exists("out/leak.txt"));
    }
    // Declared, it builds remotely.
    ws.pipeline(
        "p",
        "version: 1\nstages:\n  leak:\n    cmd: \"cat ${inputs.0} ${inputs.1} > ${outputs.0}\"\n    inputs: [data/declared.txt, data/secret.txt]\n    outputs: [out/leak.txt]\n",
    );
    remote_build(&ws, &casd, &[], 0);
    assert_eq!(ws.read("out/leak.txt"), "declared\nnot declared\n");
}

/// Stage `stop` runs on this machine (`remote: false`) and stops the server; `after` runs next.
fn stopping(casd: &Casd) -> Workspace {
    let ws = Workspace::new();
    ws.write("data/in.txt", "in\n");
    ws.pipeline(
        "p",
        &format!(
            "version: 1\nstages:\n  stop:\n    cmd: \"kill {} && mkdir -p out && echo stopped > ${{outputs.0}}\"\n    remote: false\n    outputs: [out/stopped.txt]\n  after:\n    cmd: \"cat ${{inputs.0}} ${{inputs.1}} > ${{outputs.0}}\"\n    inputs: [data/in.txt, out/stopped.txt]\n    outputs: [out/after.txt]\n    platform: {{OSFamily: linux}}\n",
            casd.pid()
        ),
    );
    ws
}

#[test]
fn a_server_stopped_mid_build_fails_clearly_and_fallback_finishes_locally() {
    let casd = Casd::start();
    let ws = stopping(&casd);
    let out = ws.run(&["build", "--remote-exec", &casd.url()]);
    assert_eq!(out.status.code(), Some(4));
    let text = stderr(&out);
    assert!(text.contains("p:after"), "{text}");
    assert!(
        text.contains(&format!(
            "the remote executor grpc://127.0.0.1:{} could not run it: Unavailable",
            casd.port
        )),
        "{text}"
    );
    assert!(!ws.exists("out/after.txt"));

    let casd = Casd::start();
    let ws = stopping(&casd);
    let report = {
        let out = ws.run(&[
            "build",
            "--json",
            "--remote-exec",
            &casd.url(),
            "--remote-exec-fallback",
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stderr(&out).contains("running it locally (--remote-exec-fallback)"));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    assert_eq!(
        remote_of(&report),
        [
            ("p:stop".to_string(), "-".to_string()),
            ("p:after".to_string(), "fallback".to_string())
        ]
    );
    assert_eq!(report["remote_exec"]["fallbacks"], 1);
    assert_eq!(ws.read("out/after.txt"), "in\nstopped\n");
}

#[test]
fn an_op_for_a_platform_no_worker_has_is_a_clear_error() {
    let casd = Casd::start();
    let ws = digits();
    let yaml = ws.read("pipelines/digits.yaml").replacen(
        "    op: imatrix\n",
        "    op: imatrix\n    platform: {OSFamily: windows}\n",
        1,
    );
    ws.write("pipelines/digits.yaml", &yaml);
    let out = ws.run(&["build", "digits:imatrix", "--remote-exec", &casd.url()]);
    assert_eq!(out.status.code(), Some(4));
    let text = stderr(&out);
    assert!(text.contains("digits:imatrix"), "{text}");
    assert!(
        text.contains("an op runs the edgebuild binary sent with it, built for linux x86-64"),
        "{text}"
    );
}

#[test]
fn doctor_checks_the_configured_executor() {
    let mut casd = Casd::start();
    let ws = text();
    ws.write(
        "edgebuild.yaml",
        &format!("remote_exec:\n  url: {}\n", casd.url()),
    );
    let executor = |ws: &Workspace| -> Value {
        let out = ws.run(&["doctor", "--json"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == "executor")
            .cloned()
            .expect("an executor check")
    };
    let found = executor(&ws);
    assert_eq!(found["level"], "ok", "{found}");
    assert!(
        found["message"]
            .as_str()
            .unwrap()
            .contains("executes actions, SHA-256"),
        "{found}"
    );
    casd.stop();
    let found = executor(&ws);
    assert_eq!(found["level"], "fail", "{found}");
    assert!(
        found["message"].as_str().unwrap().contains("Unavailable"),
        "{found}"
    );
}

//! Manual steps (SPEC.md, "Manual steps"): a checklist that blocks its dependents until a person signs it
//! off with `edgebuild approve` for exactly the stage's current inputs.

mod common;

use common::{Workspace, stderr};

const PIPELINE: &str = r#"version: 1
stages:
  firmware:
    cmd: "mkdir -p out && cat ${inputs.0} > ${outputs.0}"
    inputs: [data/model.txt]
    outputs: [out/firmware.bin]
  bench:
    manual:
      - "flashed on the bench board"
      - "the demo classifies the 10 test cards"
    inputs: [out/firmware.bin]
  ship:
    cmd: "cp ${inputs.0} ${outputs.0}"
    inputs: [out/firmware.bin]
    outputs: [out/shipped.bin]
    after: [bench]
"#;

fn workspace() -> Workspace {
    let ws = Workspace::new();
    ws.write("data/model.txt", "model v1\n")
        .pipeline("p", PIPELINE);
    ws
}

#[test]
fn a_manual_stage_blocks_until_signed_off_for_its_current_inputs() {
    let ws = workspace();
    // Not built yet: nothing to sign off.
    let out = ws.run(&["approve", "p:bench", "--by", "Ada"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("the inputs of p:bench are not built yet"),
        "{}",
        stderr(&out)
    );

    let out = ws.run(&["build"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("AWAITS SIGN-OFF p:bench"), "{text}");
    assert!(text.contains("[ ] flashed on the bench board"), "{text}");
    assert!(text.contains("edgebuild approve p:bench"), "{text}");
    assert!(text.contains("blocked  p:ship (by p:bench)"), "{text}");
    assert!(!ws.exists("out/shipped.bin"));

    let out = ws.run(&["approve", "p:bench", "--by", "Ada"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let approvals: serde_json::Value =
        serde_json::from_str(&ws.read("pipelines/p.approvals.json")).unwrap();
    assert_eq!(approvals["bench"]["by"], "Ada");
    assert_eq!(
        approvals["bench"]["checklist"][1],
        "the demo classifies the 10 test cards"
    );
    let outcomes = ws.build(&[], 0);
    assert_eq!(outcomes.of("p:bench"), "ran");
    assert_eq!(outcomes.of("p:ship"), "ran");
    assert_eq!(ws.read("out/shipped.bin"), "model v1\n");
    // The sign-off is in the lock; a second build has nothing to do.
    let outcomes = ws.build(&[], 0);
    assert_eq!(outcomes.of("p:bench"), "up-to-date");

    // A new model is a new binary: the sign-off no longer matches.
    ws.write("data/model.txt", "model v2\n");
    let out = ws.run(&["build"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("AWAITS SIGN-OFF p:bench"));
    assert_eq!(ws.read("out/shipped.bin"), "model v1\n", "ship did not run");
    ws.run(&["approve", "p:bench", "--by", "Grace"]);
    ws.build(&[], 0);
    assert_eq!(ws.read("out/shipped.bin"), "model v2\n");

    // The runbook lists the checklist and the command.
    assert_eq!(ws.run(&["runbook", "p", "--write"]).status.code(), Some(0));
    let runbook = ws.read("pipelines/p.runbook.md");
    assert!(
        runbook.contains("- [ ] flashed on the bench board"),
        "{runbook}"
    );
    assert!(runbook.contains("edgebuild approve p:bench"), "{runbook}");
}

#[test]
fn only_manual_stages_are_signed_off_and_they_make_no_files() {
    let ws = workspace();
    ws.build(&["p:firmware"], 0);
    let out = ws.run(&["approve", "p:firmware"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("p:firmware is not a manual stage"),
        "{}",
        stderr(&out)
    );

    ws.pipeline(
        "p",
        &PIPELINE.replace(
            "    inputs: [out/firmware.bin]\n  ship:",
            "    inputs: [out/firmware.bin]\n    outputs: [out/ok.txt]\n  ship:",
        ),
    );
    let out = ws.run(&["plan"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("manual stage p:bench declares outputs"),
        "{}",
        stderr(&out)
    );

    ws.pipeline(
        "p",
        &PIPELINE.replace("    manual:\n", "    cmd: \"true\"\n    manual:\n"),
    );
    let out = ws.run(&["plan"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("stage p:bench has both `cmd` and `manual`"),
        "{}",
        stderr(&out)
    );
}

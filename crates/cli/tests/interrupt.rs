//! Crash safety and concurrency: a build killed mid-stage leaves nothing that claims its outputs,
//! and a second build in the same workspace waits for the first.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{Workspace, stderr};

/// A stage that writes half its output, then waits until `release` exists.
const SLOW: &str = r#"version: 1
stages:
  fast:
    cmd: "echo fast > fast.txt"
    outputs: [fast.txt]
  slow:
    cmd: "echo half > slow.txt && echo $$ > stage.pid && touch started && while [ ! -f release ]; do sleep 0.05; done && echo done > slow.txt"
    inputs: [fast.txt]
    outputs: [slow.txt]
"#;

fn wait_for(path: &Path) {
    for _ in 0..600 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} never appeared", path.display());
}

/// Starts a build of [`SLOW`] and returns once its slow stage is running.
fn start_slow_build(ws: &Workspace) -> std::process::Child {
    let child = ws
        .command()
        .args(["build", "-j", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&ws.file("started"));
    child
}

/// Starts a second build and returns once it has said that it waits for the workspace lock.
fn second_build_that_waits(ws: &Workspace) -> std::process::Child {
    let mut second = ws
        .command()
        .args(["build", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(second.stderr.take().unwrap()).lines();
    let waiting = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("waiting for another edgebuild"));
    assert!(waiting, "the second build says it waits");
    // Keep reading, so the build never writes to a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    second
}

/// SIGKILLs the stage [`SLOW`] left running (a positive pid: some versions of procps `kill`
/// mis-parse a negative process-group id).
fn kill_slow_stage(ws: &Workspace) {
    let stage_pid = ws.read("stage.pid").trim().to_string();
    let status = std::process::Command::new("kill")
        .args(["-9", &stage_pid])
        .status()
        .unwrap();
    assert!(status.success());
}

fn action_entries(ws: &Workspace) -> usize {
    walkdir::WalkDir::new(ws.file("cache/ac"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .count()
}

#[test]
fn kill_9_mid_stage_leaves_no_cache_entry_or_lock_claim() {
    let ws = Workspace::new();
    ws.pipeline("p", SLOW);
    // SIGKILL edgebuild and then its stage: neither gets a chance to clean up.
    let mut child = start_slow_build(&ws);
    child.kill().unwrap();
    let _ = child.wait();
    kill_slow_stage(&ws);

    assert_eq!(
        ws.read("slow.txt"),
        "half\n",
        "the stage was interrupted mid-write"
    );
    assert_eq!(action_entries(&ws), 1, "only the finished stage is cached");
    assert!(
        !ws.exists("pipelines/p.lock"),
        "no lock claims the interrupted outputs"
    );

    ws.write("release", "");
    let rebuilt = ws.build(&["-j", "1"], 0);
    assert_eq!(
        rebuilt.of("p:slow"),
        "ran",
        "the interrupted stage runs again"
    );
    assert_eq!(
        rebuilt.of("p:fast"),
        "restored",
        "finished work is reused from the cache"
    );
    assert_eq!(ws.read("slow.txt"), "done\n");
}

#[test]
fn a_second_build_waits_for_the_first() {
    let ws = Workspace::new();
    ws.pipeline("p", SLOW);
    let first = start_slow_build(&ws);
    let second = second_build_that_waits(&ws);
    ws.write("release", "");
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    let second = second.wait_with_output().unwrap();
    assert!(second.status.success());
    let report = common::Outcomes(serde_json::from_slice(&second.stdout).unwrap());
    assert_eq!(
        report.with("up-to-date"),
        ["p:fast", "p:slow"],
        "it sees the first build's results"
    );
}

#[test]
fn a_stage_orphaned_by_kill_9_keeps_the_workspace_locked() {
    let ws = Workspace::new();
    ws.pipeline("p", SLOW);
    let mut first = start_slow_build(&ws);
    first.kill().unwrap();
    let _ = first.wait();
    // edgebuild is gone but its stage still runs: a new build must wait for it.
    let second = second_build_that_waits(&ws);
    ws.write("release", "");
    let second = second.wait_with_output().unwrap();
    assert!(second.status.success());
    let report = common::Outcomes(serde_json::from_slice(&second.stdout).unwrap());
    assert_eq!(
        report.of("p:slow"),
        "ran",
        "the orphan's unrecorded output is rebuilt"
    );
    assert_eq!(ws.read("slow.txt"), "done\n");
}

#[test]
fn an_interrupted_rebuild_drops_the_stale_lock_entry() {
    let ws = Workspace::new();
    ws.pipeline("p", SLOW);
    ws.write("release", "");
    ws.build(&[], 0);
    std::fs::remove_file(ws.file("release")).unwrap();
    std::fs::remove_file(ws.file("started")).unwrap();
    ws.pipeline("p", &SLOW.replace("echo done", "echo DONE"));
    let mut child = start_slow_build(&ws);
    child.kill().unwrap();
    let _ = child.wait();
    kill_slow_stage(&ws);
    let lock: serde_json::Value = serde_json::from_str(&ws.read("pipelines/p.lock")).unwrap();
    assert!(
        lock["stages"].get("slow").is_none(),
        "no entry claims the half-written slow.txt"
    );
    assert!(
        lock["stages"].get("fast").is_some(),
        "untouched stages keep theirs"
    );
}

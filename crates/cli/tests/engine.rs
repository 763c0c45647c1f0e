//! The engine end to end: incremental builds, cache restores, early cutoff, parallelism,
//! failures and crash safety, driven through the binary on temporary workspaces.

mod common;

use common::{Workspace, stderr, stdout};

/// Two independent chains: a → b (from data/a.txt) and c → d (from data/c.txt).
fn two_chains() -> Workspace {
    let ws = Workspace::new();
    ws.write("data/a.txt", "alpha\n")
        .write("data/c.txt", "gamma\n")
        .pipeline(
            "p",
            r#"version: 1
stages:
  a:
    cmd: "mkdir -p out && tr a-z A-Z < ${inputs.0} > ${outputs.0}"
    inputs: [data/a.txt]
    outputs: [out/a.txt]
  b:
    cmd: "wc -c < ${inputs.0} > ${outputs.0}"
    inputs: [out/a.txt]
    outputs: [out/b.txt]
  c:
    cmd: "mkdir -p out && rev < ${inputs.0} > ${outputs.0}"
    inputs: [data/c.txt]
    outputs: [out/c.txt]
  d:
    cmd: "cat ${inputs} > ${outputs.0}"
    inputs: [out/c.txt, out/a.txt]
    outputs: [out/d.txt]
"#,
        );
    ws
}

#[test]
fn first_build_runs_everything_and_second_runs_nothing() {
    let ws = two_chains();
    let first = ws.build(&[], 0);
    assert_eq!(first.with("ran"), ["p:a", "p:b", "p:c", "p:d"]);
    assert_eq!(ws.read("out/d.txt"), "ammag\nALPHA\n");
    let second = ws.build(&[], 0);
    assert_eq!(second.with("up-to-date"), ["p:a", "p:b", "p:c", "p:d"]);
    assert!(ws.exists("pipelines/p.lock"));
    let plan = ws.run(&["plan", "--check"]);
    assert_eq!(plan.status.code(), Some(0), "{}", stdout(&plan));
}

#[test]
fn touching_a_file_without_changing_it_runs_nothing() {
    let ws = two_chains();
    ws.build(&[], 0);
    let path = ws.file("data/a.txt");
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let again = ws.build(&[], 0);
    assert_eq!(again.with("up-to-date").len(), 4);
}

#[test]
fn changing_one_input_reruns_exactly_its_downstream_cone() {
    let ws = two_chains();
    ws.build(&[], 0);
    ws.write("data/c.txt", "delta\n");
    let plan = ws.plan_json(&[]);
    assert_eq!(plan.with("run"), ["p:c"]);
    assert_eq!(plan.with("pending"), ["p:d"]);
    assert_eq!(plan.with("up-to-date"), ["p:a", "p:b"]);
    let rebuilt = ws.build(&[], 0);
    assert_eq!(rebuilt.with("ran"), ["p:c", "p:d"]);
    assert_eq!(rebuilt.with("up-to-date"), ["p:a", "p:b"]);
    assert_eq!(ws.read("out/d.txt"), "atled\nALPHA\n");
}

#[test]
fn early_cutoff_stops_at_an_unchanged_output() {
    let ws = two_chains();
    ws.build(&[], 0);
    // Upper-casing maps both spellings to the same output: b and d must not run.
    ws.write("data/a.txt", "ALPHA\n");
    let rebuilt = ws.build(&[], 0);
    assert_eq!(rebuilt.with("ran"), ["p:a"]);
    assert_eq!(rebuilt.with("up-to-date"), ["p:b", "p:c", "p:d"]);
}

#[test]
fn flipping_a_param_back_restores_from_the_cache() {
    let ws = Workspace::new();
    let pipeline = |bits: u32| {
        format!(
            "version: 1\nstages:\n  q:\n    cmd: \"mkdir -p out && echo bits=${{params.bits}} > ${{outputs.0}}\"\n    outputs: [out/q.txt]\n    params: {{bits: {bits}}}\n"
        )
    };
    ws.pipeline("p", &pipeline(8));
    assert_eq!(ws.build(&[], 0).of("p:q"), "ran");
    ws.pipeline("p", &pipeline(4));
    let plan = ws.run(&["plan"]);
    insta::assert_snapshot!("plan_param_changed", stdout(&plan));
    assert_eq!(ws.build(&[], 0).of("p:q"), "ran");
    assert_eq!(ws.read("out/q.txt"), "bits=4\n");
    ws.pipeline("p", &pipeline(8));
    let flipped = ws.build(&[], 0);
    assert_eq!(flipped.of("p:q"), "restored");
    assert_eq!(ws.read("out/q.txt"), "bits=8\n");
}

#[test]
fn independent_stages_overlap_in_time() {
    // Each stage records when it started and ended; a barrier-free proof of concurrency is that
    // each started before the other ended.
    let ws = Workspace::new();
    let stage = |name: &str| {
        format!(
            "  {name}:\n    cmd: \"mkdir -p out && date +%s%N > out/{name}.start && sleep 0.4 && date +%s%N > out/{name}.end\"\n    outputs: [out/{name}.start, out/{name}.end]\n    volatile: true\n"
        )
    };
    ws.pipeline(
        "p",
        &format!("version: 1\nstages:\n{}{}", stage("x"), stage("y")),
    );
    let span = |ws: &Workspace, name: &str| -> (u128, u128) {
        let read = |suffix: &str| {
            ws.read(&format!("out/{name}.{suffix}"))
                .trim()
                .parse::<u128>()
                .unwrap()
        };
        (read("start"), read("end"))
    };
    ws.build(&["-j", "2"], 0);
    let (x, y) = (span(&ws, "x"), span(&ws, "y"));
    assert!(
        x.0 < y.1 && y.0 < x.1,
        "with -j 2 the stages overlap: {x:?} {y:?}"
    );

    std::fs::remove_dir_all(ws.file("out")).unwrap();
    std::fs::remove_dir_all(ws.file("cache")).unwrap();
    ws.build(&["-j", "1"], 0);
    let (x, y) = (span(&ws, "x"), span(&ws, "y"));
    assert!(
        x.1 <= y.0 || y.1 <= x.0,
        "with -j 1 they do not: {x:?} {y:?}"
    );
}

#[test]
fn a_failing_stage_blocks_its_dependents_and_is_not_locked() {
    let ws = two_chains();
    ws.build(&[], 0);
    ws.pipeline(
        "p",
        &ws.read("pipelines/p.yaml").replace(
            "tr a-z A-Z < ${inputs.0} > ${outputs.0}",
            "echo half > ${outputs.0}; echo broken tool >&2; exit 7",
        ),
    );
    let out = ws.run(&["build", "-j", "1", "--keep-going"]);
    assert_eq!(out.status.code(), Some(4));
    let err = stderr(&out);
    assert!(
        err.contains("FAILED   p:a: command failed (exit status: 7)"),
        "{err}"
    );
    assert!(
        err.contains("broken tool"),
        "the tail of the stage's stderr is shown: {err}"
    );
    assert!(err.contains("blocked  p:b (by p:a)"), "{err}");
    let lock: serde_json::Value = serde_json::from_str(&ws.read("pipelines/p.lock")).unwrap();
    assert!(
        lock["stages"].get("a").is_none(),
        "a failed stage has no lock entry"
    );
    assert!(lock["stages"].get("c").is_some());
}

#[test]
fn a_corrupt_cache_blob_is_never_used() {
    let ws = two_chains();
    ws.build(&[], 0);
    let lock: serde_json::Value = serde_json::from_str(&ws.read("pipelines/p.lock")).unwrap();
    let hash = lock["stages"]["a"]["outputs"]["out/a.txt"]["hash"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(
        ws.file(&format!("cache/cas/{}/{hash}", &hash[..2])),
        "EVIL\n",
    )
    .unwrap();
    std::fs::remove_file(ws.file("out/a.txt")).unwrap();
    let rebuilt = ws.build(&[], 0);
    assert_eq!(
        rebuilt.of("p:a"),
        "ran",
        "the corrupt blob is rejected and the stage runs"
    );
    assert_eq!(ws.read("out/a.txt"), "ALPHA\n");
}

#[test]
fn directory_outputs_and_inputs_are_hashed_as_trees() {
    let ws = Workspace::new();
    ws.write("data/in/one.txt", "1\n").write("data/in/sub/two.txt", "2\n").pipeline(
        "p",
        r#"version: 1
stages:
  split:
    cmd: "mkdir -p out/parts && cat data/in/one.txt > out/parts/one && cat data/in/sub/two.txt > out/parts/two"
    inputs: [data/in]
    outputs: [out/parts]
  pick:
    cmd: "cp out/parts/two out/two.txt"
    inputs: [out/parts/two]
    outputs: [out/two.txt]
"#,
    );
    assert_eq!(ws.build(&[], 0).with("ran"), ["p:pick", "p:split"]);
    ws.write("data/in/one.txt", "one\n");
    let rebuilt = ws.build(&[], 0);
    assert_eq!(rebuilt.of("p:split"), "ran");
    assert_eq!(
        rebuilt.of("p:pick"),
        "up-to-date",
        "its file inside the directory did not change"
    );
    std::fs::remove_dir_all(ws.file("out/parts")).unwrap();
    assert_eq!(ws.build(&[], 0).of("p:split"), "restored");
    assert_eq!(ws.read("out/parts/one"), "one\n");
}

#[test]
fn declared_env_is_passed_and_keyed_undeclared_env_is_not() {
    let ws = Workspace::new();
    ws.pipeline(
        "p",
        "version: 1\nstages:\n  e:\n    cmd: \"echo mode=$MODE secret=$SECRET > out.txt\"\n    outputs: [out.txt]\n    env: [MODE]\n",
    );
    let build = |mode: &str| {
        let out = ws
            .command()
            .args(["build", "--json"])
            .env("MODE", mode)
            .env("SECRET", "hunter2")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        common::Outcomes(serde_json::from_slice(&out.stdout).unwrap())
    };
    assert_eq!(build("fast").of("p:e"), "ran");
    assert_eq!(ws.read("out.txt"), "mode=fast secret=\n");
    assert_eq!(build("fast").of("p:e"), "up-to-date");
    let changed = build("slow");
    assert_eq!(changed.of("p:e"), "ran");
    assert_eq!(changed.reasons("p:e")[0]["kind"], "env_changed");
    let lock = ws.read("pipelines/p.lock");
    assert!(
        !lock.contains("slow") && !lock.contains("hunter2"),
        "env values are hashed, never written"
    );
}

#[test]
fn targets_select_a_stage_and_what_it_needs() {
    let ws = two_chains();
    let built = ws.build(&["p:b"], 0);
    assert_eq!(built.with("ran"), ["p:a", "p:b"]);
    assert!(!ws.exists("out/c.txt"));
    let out = ws.run(&["build", "p:zz"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no pipeline or stage named `p:zz`"));
}

#[test]
fn lock_files_are_identical_across_workspaces() {
    let a = two_chains();
    let b = two_chains();
    a.build(&["-j", "1"], 0);
    b.build(&["-j", "2"], 0);
    assert_eq!(a.read("pipelines/p.lock"), b.read("pipelines/p.lock"));
    let lock = a.read("pipelines/p.lock");
    assert!(
        !lock.contains(a.path().to_str().unwrap()),
        "no absolute paths in the lock"
    );
}

#[test]
fn gc_keeps_what_locks_refer_to() {
    let ws = two_chains();
    ws.build(&[], 0);
    ws.write("data/c.txt", "delta\n");
    ws.build(&[], 0);
    let out = ws.run(&["gc"]);
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("removed 2 action entries"),
        "{}",
        stderr(&out)
    );
    // Everything the lock names is still restorable.
    std::fs::remove_dir_all(ws.file("out")).unwrap();
    assert_eq!(ws.build(&[], 0).with("restored").len(), 4);
}

#[test]
fn plan_check_exits_1_when_anything_would_run() {
    let ws = two_chains();
    let out = ws.run(&["plan", "--check"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("plan_fresh", stdout(&out));
}

#[test]
fn dag_prints_dot_and_mermaid() {
    let ws = two_chains();
    insta::assert_snapshot!("dag_dot", stdout(&ws.run(&["dag"])));
    insta::assert_snapshot!(
        "dag_mermaid",
        stdout(&ws.run(&["dag", "--format", "mermaid"]))
    );
}

#[test]
fn order_only_dependencies_run_first_without_entering_the_key() {
    let ws = Workspace::new();
    ws.write("data/x.txt", "x\n").pipeline(
        "p",
        r#"version: 1
stages:
  check:
    cmd: "test -s data/x.txt && date +%s%N > check.stamp"
    inputs: [data/x.txt]
    outputs: [check.stamp]
    volatile: true
  ship:
    cmd: "cp data/x.txt shipped.txt"
    inputs: [data/x.txt]
    outputs: [shipped.txt]
    after: [check]
"#,
    );
    ws.build(&[], 0);
    let lock: serde_json::Value = serde_json::from_str(&ws.read("pipelines/p.lock")).unwrap();
    assert_eq!(
        lock["stages"]["ship"]["ingredients"]["inputs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    ws.pipeline(
        "p",
        &ws.read("pipelines/p.yaml")
            .replace("test -s", "false && test -s"),
    );
    let failed = ws.build(&["--keep-going"], 4);
    assert_eq!(failed.of("p:ship"), "blocked");
}

#[test]
fn reordering_inputs_changes_the_key() {
    let ws = Workspace::new();
    ws.write("a.txt", "A\n").write("b.txt", "B\n");
    let pipeline = |order: &str| {
        format!(
            "version: 1\nstages:\n  cat:\n    cmd: \"cat ${{inputs}} > ${{outputs.0}}\"\n    inputs: {{{order}}}\n    outputs: [out.txt]\n"
        )
    };
    ws.pipeline("p", &pipeline("first: a.txt, second: b.txt"));
    ws.build(&[], 0);
    ws.pipeline("p", &pipeline("second: b.txt, first: a.txt"));
    let plan = ws.plan_json(&[]);
    assert_eq!(plan.of("p:cat"), "run");
    assert_eq!(plan.reasons("p:cat")[0]["kind"], "inputs_reordered");
    ws.build(&[], 0);
    assert_eq!(ws.read("out.txt"), "B\nA\n");
}

#[test]
fn empty_directories_and_symlinks_survive_a_restore() {
    let ws = Workspace::new();
    ws.pipeline(
        "p",
        "version: 1\nstages:\n  gen:\n    cmd: \"mkdir -p out/logs && echo x > out/x.txt && ln -s x.txt out/link\"\n    outputs: [out]\n  use:\n    cmd: \"ls out/logs > listing.txt\"\n    inputs: [out/logs]\n    outputs: [listing.txt]\n",
    );
    ws.build(&[], 0);
    std::fs::remove_dir_all(ws.file("out")).unwrap();
    let rebuilt = ws.build(&[], 0);
    assert_eq!(rebuilt.of("p:gen"), "restored");
    assert_eq!(rebuilt.of("p:use"), "up-to-date");
    assert!(ws.file("out/logs").is_dir());
    assert_eq!(
        std::fs::read_link(ws.file("out/link")).unwrap().to_str(),
        Some("x.txt")
    );
}

#[test]
fn parsed_pipelines_are_cached_but_paths_are_checked_again() {
    let ws = two_chains();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    let set_old = |rel: &str| {
        std::fs::File::options()
            .write(true)
            .open(ws.file(rel))
            .unwrap()
            .set_modified(old)
            .unwrap()
    };
    // A file changed in the last two seconds is not cached (its ctime cannot be set back).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    ws.build(&[], 0);
    assert!(
        ws.exists(".edgebuild/spec-cache.json"),
        "a file that is not brand new is cached"
    );
    assert_eq!(
        ws.build(&[], 0).with("up-to-date").len(),
        4,
        "a cache hit plans the same"
    );

    // The YAML did not change, but `out` became a symlink out of the workspace.
    std::fs::remove_dir_all(ws.file("out")).unwrap();
    std::os::unix::fs::symlink(std::env::temp_dir(), ws.file("out")).unwrap();
    let out = ws.run(&["plan"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("goes through a symlink that leaves the workspace"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(ws.file("out")).unwrap();

    // Editing the file invalidates its entry, even with an old mtime.
    ws.pipeline("p", &ws.read("pipelines/p.yaml").replace("rev <", "tac <"));
    set_old("pipelines/p.yaml");
    assert_eq!(
        ws.plan_json(&[]).reasons("p:c")[0]["kind"],
        "action_changed"
    );
}

//! `verify-reproducible`: rebuilding commits of temporary git repositories from scratch, naming
//! the first divergent stage, leaving the user's checkout and cache alone, variation builds, and
//! every way a verification can be refused.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{Workspace, digits, stderr, stdout};
use serde_json::Value;

const DETERMINISTIC: &str = r#"
version: 1
stages:
  words:
    cmd: "mkdir -p out && tr ' ' '\\n' < ${inputs.text} > ${outputs.words}"
    inputs: {text: data/text.txt}
    outputs: {words: out/words.txt}
  count:
    cmd: "sort ${inputs.words} | uniq -c > ${outputs.counts}"
    inputs: {words: out/words.txt}
    outputs: {counts: out/counts.txt}
"#;

/// `stamp` writes the time into a non-volatile output; `digest` reads it.
const STAMPED: &str = r#"
version: 1
stages:
  source:
    cmd: "mkdir -p out && cp data/text.txt out/source.txt"
    inputs: [data/text.txt]
    outputs: [out/source.txt]
  stamp:
    cmd: "(cat out/source.txt; date +%s%N) > out/stamp.txt"
    inputs: [out/source.txt]
    outputs: [out/stamp.txt]
  digest:
    cmd: "cksum < out/stamp.txt > out/digest.txt"
    inputs: [out/stamp.txt]
    outputs: [out/digest.txt]
"#;

fn repo(pipeline: &str) -> Workspace {
    let ws = Workspace::new();
    ws.git_init()
        .write(
            "data/text.txt",
            "the quick brown fox jumps over the lazy dog the end\n",
        )
        .pipeline("p", pipeline);
    ws
}

/// Builds, commits the lock, and returns the commit.
fn built_commit(ws: &Workspace) -> String {
    ws.build(&[], 0);
    ws.commit("build")
}

fn verify(ws: &Workspace, args: &[&str], code: i32) -> Value {
    let mut all = vec!["verify-reproducible", "--json"];
    all.extend_from_slice(args);
    let out = ws.run(&all);
    assert_eq!(out.status.code(), Some(code), "stderr:\n{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

fn verdicts(v: &Value) -> BTreeMap<String, String> {
    v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["output"].as_str().unwrap().to_string(),
                r["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every file under `dir` with its content, to show that nothing changed.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(dir).unwrap().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_clean_commit_verifies_from_scratch_and_touches_nothing_of_the_user() {
    let ws = repo(DETERMINISTIC);
    let commit = built_commit(&ws);
    // Work in progress after the commit must not leak into the verification.
    ws.write("data/text.txt", "uncommitted change");
    let cache_before = snapshot(&ws.file("cache"));
    let outputs_before = snapshot(&ws.file("out"));
    assert!(!cache_before.is_empty());

    // Even when the environment names the user's cache, the rebuild does not use it.
    let out = ws
        .command()
        .env("EDGEBUILD_CACHE_DIR", ws.file("cache"))
        .args(["verify-reproducible", "--json", "HEAD"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["commit"], commit);
    assert_eq!(v["reproducible"], true);
    assert_eq!(v["first_divergent"], Value::Null);
    assert_eq!(
        verdicts(&v),
        BTreeMap::from([
            ("out/words.txt".into(), "match".into()),
            ("out/counts.txt".into(), "match".into()),
        ])
    );
    // Every stage ran in a private cache: nothing was restored from anywhere.
    let build = &v["builds"][0];
    assert_eq!(build["cache"], "private");
    assert_eq!(build["stages"]["p:words"], "ran");
    assert_eq!(build["stages"]["p:count"], "ran");

    assert_eq!(snapshot(&ws.file("cache")), cache_before);
    assert_eq!(snapshot(&ws.file("out")), outputs_before);
    assert_eq!(ws.read("data/text.txt"), "uncommitted change");
    assert_eq!(ws.git(&["status", "--porcelain"]), "M data/text.txt");

    let out = ws.run(&["verify-reproducible", &commit[..10]]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("Reproducible: 2 output(s) identical."),
        "{text}"
    );
    assert!(text.contains("p:count  out/counts.txt"), "{text}");
}

#[test]
fn a_stage_that_writes_the_time_is_the_first_divergent_stage() {
    let ws = repo(STAMPED);
    built_commit(&ws);
    let v = verify(&ws, &["HEAD", "p"], 5);
    assert_eq!(v["reproducible"], false);
    assert_eq!(v["first_divergent"], "p:stamp");
    assert_eq!(
        verdicts(&v),
        BTreeMap::from([
            ("out/source.txt".into(), "match".into()),
            ("out/stamp.txt".into(), "differs".into()),
            ("out/digest.txt".into(), "cascade".into()),
        ])
    );
    let findings = v["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 2, "{findings:?}");
    assert_eq!(findings[0]["stage"], "p:stamp");
    assert_eq!(findings[0]["kind"], "root");
    assert!(
        findings[0]["explanation"]
            .as_str()
            .unwrap()
            .contains("not deterministic")
    );
    assert_eq!(findings[1]["stage"], "p:digest");
    assert_eq!(findings[1]["kind"], "cascade");
    assert_eq!(findings[1]["from"], "p:stamp");
    // The expected bytes come from the user's cache, so the diff shows the two times.
    let diff = v["diffs"][0]["diff"].as_str().unwrap();
    assert_eq!(v["diffs"][0]["output"], "out/stamp.txt");
    assert!(
        diff.contains(" the quick brown fox jumps over the lazy dog the end"),
        "{diff}"
    );
    assert_eq!(diff.lines().filter(|l| l.starts_with('-')).count(), 2); // header + old time
    assert_eq!(diff.lines().filter(|l| l.starts_with('+')).count(), 2);

    let out = ws.run(&["verify-reproducible", "HEAD"]);
    assert_eq!(out.status.code(), Some(5));
    let text = stdout(&out);
    assert!(
        text.contains("First divergent stage: p:stamp: its inputs, command and params matched"),
        "{text}"
    );
    assert!(
        text.contains("Cascade: p:digest differs because p:stamp did"),
        "{text}"
    );
    assert!(
        stderr(&out).contains("not reproducible: first divergent stage p:stamp, 1 stage(s) downstream differ as a consequence"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_edited_lock_file_is_caught() {
    let ws = repo(DETERMINISTIC);
    built_commit(&ws);
    let lock = ws.read("pipelines/p.lock");
    let mut value: Value = serde_json::from_str(&lock).unwrap();
    // An output hash changed by hand: the rebuilt output no longer matches.
    value["stages"]["count"]["outputs"]["out/counts.txt"]["hash"] = Value::String("ab".repeat(32));
    ws.write(
        "pipelines/p.lock",
        &serde_json::to_string_pretty(&value).unwrap(),
    );
    ws.commit("edit an output hash");
    let v = verify(&ws, &["HEAD"], 5);
    assert_eq!(v["first_divergent"], "p:count");
    assert_eq!(verdicts(&v)["out/counts.txt"], "differs");

    // A key changed by hand no longer matches its own ingredients.
    ws.write(
        "pipelines/p.lock",
        &lock.replace(
            value["stages"]["words"]["key"].as_str().unwrap(),
            &"cd".repeat(32),
        ),
    );
    ws.commit("edit a key");
    let v = verify(&ws, &["HEAD"], 5);
    assert_eq!(v["first_divergent"], "p:words");
    assert!(
        v["findings"][0]["explanation"]
            .as_str()
            .unwrap()
            .contains("edited by hand"),
        "{}",
        v["findings"]
    );
    // The previous commit still verifies.
    verify(&ws, &["HEAD~2"], 0);
}

#[test]
fn an_untracked_input_makes_the_commit_fail_to_build() {
    let ws = repo(DETERMINISTIC);
    // The input exists in the working tree but was never committed: it escapes version control.
    ws.write(".gitignore", "out/\ncache/\n.edgebuild/\ndata/\n");
    built_commit(&ws);
    let out = ws.run(&["verify-reproducible", "HEAD"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the pipelines do not build at commit"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn refusals_have_their_own_exit_codes() {
    // Not a git repository.
    let plain = Workspace::new();
    plain.pipeline("p", DETERMINISTIC);
    let out = plain.run(&["verify-reproducible", "HEAD"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is not inside a git repository"),
        "{}",
        stderr(&out)
    );

    // An unknown commit, and an option where a commit should be.
    let ws = repo(DETERMINISTIC);
    ws.commit("pipeline without a lock");
    for rev in ["no-such-commit", "--output=x"] {
        let out = ws.run(&["verify-reproducible", "--", rev]);
        assert_eq!(out.status.code(), Some(2), "{rev}");
        assert!(stderr(&out).contains("unknown commit"), "{}", stderr(&out));
    }

    // A commit without a lock.
    let out = ws.run(&["verify-reproducible", "HEAD"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("has no lock file pipelines/p.lock"),
        "{}",
        stderr(&out)
    );

    // An unknown pipeline.
    built_commit(&ws);
    let out = ws.run(&["verify-reproducible", "HEAD", "q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown pipeline `q`"),
        "{}",
        stderr(&out)
    );

    // No commit and no --vary.
    let out = ws.run(&["verify-reproducible"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn variation_builds_pass_on_digits_and_catch_the_time() {
    let ws = digits();
    let v = verify(&ws, &["--vary"], 0);
    assert_eq!(v["reproducible"], true);
    let verdicts = verdicts(&v);
    assert_eq!(verdicts["out/digits/model.gguf"], "match");
    assert_eq!(verdicts["out/digits/metrics.json"], "match");
    assert_eq!(verdicts["out/digits/package/digits_model.h"], "match");
    assert_eq!(verdicts["out/digits/latency.json"], "volatile");
    assert_eq!(v["builds"][1]["conditions"]["jobs"], 1);
    assert_eq!(v["builds"][1]["conditions"]["umask"], 0o077);
    for build in v["builds"].as_array().unwrap() {
        assert!(
            build["stages"]
                .as_object()
                .unwrap()
                .values()
                .all(|o| o == "ran"),
            "{build}"
        );
    }
    // The user's workspace was not built.
    assert!(!ws.exists("out"));
    assert!(!ws.exists("pipelines/digits.lock"));

    let ws = repo(STAMPED);
    let v = verify(&ws, &["--vary", "p"], 5);
    assert_eq!(v["first_divergent"], "p:stamp");
    assert_eq!(verdicts_of(&v, "out/digest.txt"), "cascade");
}

#[test]
fn variation_builds_pass_the_time_zone_and_locale_to_commands() {
    // A stage that prints the time zone and the locale's view of a date is told apart.
    let ws = repo(
        r#"
version: 1
stages:
  zone:
    cmd: "mkdir -p out && date -d @0 +%H > out/zone.txt"
    outputs: [out/zone.txt]
"#,
    );
    let v = verify(&ws, &["--vary"], 5);
    assert_eq!(v["first_divergent"], "p:zone");
}

fn verdicts_of(v: &Value, output: &str) -> String {
    verdicts(v)[output].clone()
}

#[test]
fn compare_shows_the_size_drop_from_q8_0_to_q4_k() {
    let ws = digits();
    ws.git_init();
    let yaml = ws.read("pipelines/digits.yaml");
    ws.pipeline("digits", &yaml.replace("type: q4_k", "type: q8_0"));
    ws.build(&["digits:report"], 0);
    let base = ws.commit("q8_0");
    ws.pipeline("digits", &yaml);

    let row = |c: &Value, metric: &str| -> Value {
        c["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["metric"] == metric)
            .unwrap_or_else(|| panic!("no {metric} in {c}"))
            .clone()
    };
    // Against the working tree, which compare builds in a copy, not in place.
    let built = (
        ws.read("pipelines/digits.lock"),
        std::fs::read(ws.file("out/digits/model.gguf")).unwrap(),
    );
    let out = ws.run(&["compare", "HEAD", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    let size = row(&c, "binary size (bytes)");
    let (a, b) = (size["a"].as_f64().unwrap(), size["b"].as_f64().unwrap());
    assert!(b < a * 0.7, "q4_k {b} vs q8_0 {a}");
    assert_eq!(size["delta"].as_f64().unwrap(), b - a);
    assert!(size["relative"].as_f64().unwrap() < -0.3);
    let bits = row(&c, "bits per weight");
    assert!(bits["a"].as_f64().unwrap() > 8.0 && bits["b"].as_f64().unwrap() < 6.0);
    assert_eq!(row(&c, "verdict")["b"], "pass");
    assert_eq!(
        (
            ws.read("pipelines/digits.lock"),
            std::fs::read(ws.file("out/digits/model.gguf")).unwrap()
        ),
        built,
        "the working tree was not touched"
    );

    // Two commits, as Markdown for a pull request.
    ws.commit("q4_k");
    let out = ws.run(&["compare", &base, "HEAD", "--format", "markdown"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let md = stdout(&out);
    let line = md
        .lines()
        .find(|l| l.starts_with("| digits | report | binary size (bytes) |"))
        .unwrap_or_else(|| panic!("{md}"));
    assert!(
        line.contains(&format!("| {a} | {b} | {} |", b - a)),
        "{line}"
    );

    let out = ws.run(&["compare", "no-such-commit"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn toolchain_drift_is_printed_and_told_apart_from_an_untracked_input() {
    // A "compiler" outside the workspace whose version is declared with `tools`.
    // Outside /tmp: the sandbox of a verification has a private /tmp; a compiler lives elsewhere.
    let tool = tempfile::tempdir_in("/var/tmp").unwrap();
    let version = tool.path().join("version");
    std::fs::write(&version, "gen 1.0\n").unwrap();
    let ws = repo(&format!(
        r#"
version: 1
stages:
  gen:
    cmd: "mkdir -p out && cat {v} data/text.txt > out/gen.txt"
    inputs: [data/text.txt]
    outputs: [out/gen.txt]
    tools: {{gen: "cat {v}"}}
"#,
        v = version.display()
    ));
    built_commit(&ws);
    // The lock was written by an older compiler: recorded, reported, but not part of any key.
    let lock = ws.read("pipelines/p.lock");
    let mut value: Value = serde_json::from_str(&lock).unwrap();
    value["toolchain"]["rustc"] = Value::String("rustc 1.80.0 (old)".into());
    ws.write(
        "pipelines/p.lock",
        &serde_json::to_string_pretty(&value).unwrap(),
    );
    ws.commit("an older compiler wrote the lock");
    let v = verify(&ws, &["HEAD"], 0);
    let drift: Vec<&str> = v["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(
        drift
            .iter()
            .any(|d| d.starts_with("rustc: rustc 1.80.0 (old) → rustc ")),
        "{drift:?}"
    );

    // The tool is upgraded: plan names it, and verify blames the tool, not an input.
    std::fs::write(&version, "gen 2.0\n").unwrap();
    let plan = ws.plan_json(&[]);
    assert_eq!(plan.reasons("p:gen")[0]["kind"], "tool_changed");
    let out = ws.run(&["verify-reproducible", "HEAD"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("p:gen: tool gen: gen 1.0 → gen 2.0"),
        "{text}"
    );
    assert!(
        text.contains("its action changed: tool gen: gen 1.0 → gen 2.0 (toolchain drift"),
        "{text}"
    );
}

#[test]
fn a_named_pipeline_is_verified_with_the_stages_it_needs_from_others() {
    let ws = repo(DETERMINISTIC);
    ws.pipeline(
        "q",
        r#"
version: 1
stages:
  upper:
    cmd: "tr a-z A-Z < ${inputs.counts} > ${outputs.upper}"
    inputs: {counts: out/counts.txt}
    outputs: {upper: out/upper.txt}
"#,
    );
    built_commit(&ws);
    let v = verify(&ws, &["HEAD", "q"], 0);
    assert_eq!(v["pipelines"], serde_json::json!(["q"]));
    assert_eq!(verdicts(&v)["out/upper.txt"], "match");
    assert_eq!(verdicts(&v)["out/words.txt"], "match");
}

#[test]
fn a_gate_that_failed_at_the_commit_fails_again_and_that_is_reproducible() {
    let ws = repo(DETERMINISTIC);
    let gated = |max: u32| {
        format!(
            r#"
version: 1
stages:
  size:
    cmd: "mkdir -p out && printf '{{\"bytes\": %d}}' $(wc -c < data/text.txt) > out/size.json"
    inputs: [data/text.txt]
    outputs: [out/size.json]
  gate:
    op: gate
    inputs: {{size: out/size.json}}
    outputs: {{verdict: out/gate.json}}
    params:
      checks: [{{name: small, input: size, path: bytes, max: {max}}}]
  ship:
    cmd: "cp out/size.json out/shipped.json"
    inputs: [out/size.json]
    outputs: [out/shipped.json]
    after: [gate]
"#
        )
    };
    ws.pipeline("g", &gated(1000));
    ws.build(&["g"], 0);
    // Tighten the gate: it fails, `ship` is blocked and keeps its earlier lock entry.
    ws.pipeline("g", &gated(10));
    ws.build(&["g"], 3);
    ws.commit("a failing gate");
    let v = verify(&ws, &["HEAD", "g"], 0);
    assert_eq!(verdicts(&v)["out/gate.json"], "match");
    assert_eq!(verdicts(&v)["out/shipped.json"], "blocked");
    assert_eq!(v["builds"][0]["stages"]["g:gate"], "gate-failed");
    let notes = v["notes"].to_string();
    assert!(
        notes.contains("gate g:gate failed, as the reference records"),
        "{notes}"
    );
    assert!(notes.contains("g:ship was not built"), "{notes}");
}

#[test]
fn declared_environment_keeps_its_value_in_verification_builds() {
    let ws = repo(
        r#"
version: 1
stages:
  stamp:
    cmd: "mkdir -p out && echo $SOURCE_DATE_EPOCH $TZ > out/env.txt"
    outputs: [out/env.txt]
    env: [SOURCE_DATE_EPOCH, TZ]
"#,
    );
    let with_env = |args: &[&str]| {
        ws.command()
            .env("SOURCE_DATE_EPOCH", "1600000000")
            .env("TZ", "Europe/Paris")
            .env("EDGEBUILD_CACHE_DIR", ws.file("cache"))
            .args(args)
            .output()
            .unwrap()
    };
    assert_eq!(with_env(&["build"]).status.code(), Some(0));
    assert_eq!(ws.read("out/env.txt"), "1600000000 Europe/Paris\n");
    ws.commit("built");
    for args in [
        &["verify-reproducible", "HEAD"][..],
        &["verify-reproducible", "--vary"],
    ] {
        let out = with_env(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
}

#[test]
fn a_stage_whose_own_inputs_matched_is_a_root_cause_even_below_another() {
    // `a` writes a stable file and a stamped one; `b` reads only the stable file, `c` only runs
    // after `a`: both write the time themselves, so both are root causes, not a cascade.
    let ws = repo(
        r#"
version: 1
stages:
  a:
    cmd: "mkdir -p out && cp data/text.txt out/x.txt && date +%s%N > out/t.txt"
    inputs: [data/text.txt]
    outputs: [out/x.txt, out/t.txt]
  b:
    cmd: "(cat out/x.txt; date +%s%N) > out/b.txt"
    inputs: [out/x.txt]
    outputs: [out/b.txt]
  c:
    cmd: "date +%s%N > out/c.txt"
    outputs: [out/c.txt]
    after: [a]
"#,
    );
    built_commit(&ws);
    let v = verify(&ws, &["HEAD"], 5);
    assert_eq!(v["first_divergent"], "p:a");
    let kinds: BTreeMap<String, String> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["stage"].as_str().unwrap().into(),
                f["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        BTreeMap::from([
            ("p:a".into(), "root".into()),
            ("p:b".into(), "root".into()),
            ("p:c".into(), "root".into()),
        ])
    );
}

#[test]
fn variation_copies_leave_out_the_cache_outputs_and_state() {
    let ws = repo(DETERMINISTIC);
    ws.build(&[], 0);
    ws.write("cache/junk", "not a source");
    let out = ws.run(&["verify-reproducible", "--vary", "--keep"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let kept = stderr(&out)
        .lines()
        .find_map(|l| l.strip_prefix("kept the rebuilt workspace in "))
        .map(std::path::PathBuf::from)
        .expect("--keep prints the path");
    let copy = kept.join("a/workspace");
    assert!(copy.join("data/text.txt").is_file());
    assert!(copy.join("out/counts.txt").is_file(), "rebuilt there");
    assert!(!copy.join("cache/junk").exists());
    std::fs::remove_dir_all(kept).unwrap();
}

#[test]
fn what_users_read() {
    let ws = repo(DETERMINISTIC);
    let redact = |text: String, commit: &str| {
        text.replace(&commit[..12], "[COMMIT]")
            .replace(&commit[..7], "[SHORT]")
            .replace(&ws.path().display().to_string(), "[WS]")
    };
    let unlocked = ws.commit("pipeline without a lock");
    let out = ws.run(&["verify-reproducible", "HEAD"]);
    insta::assert_snapshot!("no_lock", redact(stderr(&out), &unlocked));
    let out = ws.run(&["verify-reproducible", "v9.9"]);
    insta::assert_snapshot!("unknown_commit", stderr(&out));

    built_commit(&ws);
    let lock = ws.read("pipelines/p.lock");
    let mut value: Value = serde_json::from_str(&lock).unwrap();
    value["stages"]["words"]["outputs"]["out/words.txt"]["hash"] = Value::String("ab".repeat(32));
    ws.write(
        "pipelines/p.lock",
        &serde_json::to_string_pretty(&value).unwrap(),
    );
    let edited = ws.commit("edit an output hash");
    let out = ws.run(&["verify-reproducible", "HEAD"]);
    assert_eq!(out.status.code(), Some(5));
    insta::assert_snapshot!("edited_lock_stdout", redact(stdout(&out), &edited));
    let diagnostic = stderr(&out);
    let diagnostic = &diagnostic[diagnostic.find("edgebuild::verify").unwrap()..];
    insta::assert_snapshot!("edited_lock_stderr", diagnostic);
}

#[test]
fn a_differing_directory_output_names_its_files() {
    let ws = repo(
        r#"
version: 1
stages:
  bundle:
    cmd: "mkdir -p out/bundle && cp data/text.txt out/bundle/a.txt && date +%s%N > out/bundle/stamp.txt"
    inputs: [data/text.txt]
    outputs: [out/bundle]
"#,
    );
    let v = verify(&ws, &["--vary"], 5);
    assert_eq!(v["first_divergent"], "p:bundle");
    let diff = v["diffs"][0]["diff"].as_str().unwrap();
    assert!(
        diff.starts_with("files that differ: stamp.txt\nstamp.txt:"),
        "{diff}"
    );
}

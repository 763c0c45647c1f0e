//! What a hostile or careless user throws at edgebuild (issue 17): every case ends in a pointed
//! error with exit code 2, or in a build that loses nothing; none panics.

mod common;

use common::{Workspace, digits, stderr};

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

/// A pipeline file that others' outputs must never touch.
const KEEP: &str = "version: 1\nstages:\n  k: {cmd: \"true\"}\n";

#[test]
fn a_symlink_does_not_get_an_output_into_pipelines() {
    let ws = Workspace::new();
    ws.pipeline("keep", KEEP);
    std::os::unix::fs::symlink("pipelines", ws.file("plink")).unwrap();
    ws.pipeline(
        "p",
        "version: 1\nstages:\n  s: {cmd: \"true\", outputs: [plink/keep.yaml]}\n",
    );
    let out = ws.run(&["build", "p"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("goes through a symlink into a directory"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ws.read("pipelines/keep.yaml"), KEEP);
}

#[test]
fn the_path_guard_refuses_a_symlink_made_after_the_pipelines_loaded() {
    // Stage `a` makes a symlink into the cache; stage `b`'s output goes through it. When the
    // pipelines load the link does not exist: only the guard, before `b`'s outputs are moved,
    // can see where they lead.
    let ws = Workspace::new();
    ws.pipeline(
        "p",
        "version: 1\nstages:\n  a:\n    cmd: \"ln -s cache lnk && echo a > a.txt\"\n    outputs: [a.txt]\n  b:\n    cmd: \"true\"\n    outputs: [lnk/ac]\n    after: [a]\n",
    );
    let out = ws.run(&["build", "p"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refusing to replace output lnk/ac: it goes through a symlink"),
        "{}",
        stderr(&out)
    );
    assert!(
        ws.file("cache/ac").is_dir(),
        "the cache's action entries are kept"
    );
    assert!(
        !common::files_under(&ws.file("cache/ac")).is_empty(),
        "a's entry is still there"
    );
}

#[test]
fn the_path_guard_refuses_a_symlink_into_another_stages_output() {
    // `lnk` leads into `c`'s output directory, inside the workspace and outside edgebuild's
    // directories: only the guard knows that `b` would replace a file of `c`.
    let ws = Workspace::new();
    ws.pipeline(
        "p",
        "version: 1\nstages:\n  c:\n    cmd: \"mkdir -p outc && echo c > outc/x\"\n    outputs: [outc]\n  a:\n    cmd: \"ln -s outc lnk && echo a > a.txt\"\n    outputs: [a.txt]\n    after: [c]\n  b:\n    cmd: \"echo b > lnk/x\"\n    outputs: [lnk/x]\n    after: [a]\n",
    );
    let out = ws.run(&["build", "p"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("resolves to outc/x, which overlaps output outc of p:c"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ws.read("outc/x"), "c\n", "c's output is intact");
}

#[test]
fn a_symlink_into_git_is_refused_by_the_guard() {
    let ws = Workspace::new();
    ws.git_init();
    ws.pipeline(
        "p",
        "version: 1\nstages:\n  a:\n    cmd: \"ln -s .git g && echo a > a.txt\"\n    outputs: [a.txt]\n  b:\n    cmd: \"true\"\n    outputs: [g/HEAD]\n    after: [a]\n",
    );
    let out = ws.run(&["build", "p"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(ws.file(".git/HEAD").is_file(), ".git is intact");
}

#[test]
fn a_tracked_file_declared_as_an_output_survives_a_failing_stage() {
    let ws = Workspace::new();
    ws.git_init();
    ws.write("models/weights.bin", "committed weights\n");
    ws.commit("weights");
    for cmd in ["exit 1", "true"] {
        ws.pipeline(
            "p",
            &format!(
                "version: 1\nstages:\n  s: {{cmd: \"{cmd}\", outputs: [models/weights.bin]}}\n"
            ),
        );
        let out = ws.run(&["build", "p"]);
        assert_eq!(code(&out), Some(4), "{cmd}: {}", stderr(&out));
        assert_eq!(
            ws.read("models/weights.bin"),
            "committed weights\n",
            "{cmd}: the file is put back"
        );
    }
    // A stage that regenerates it replaces it, and nothing is left aside.
    ws.pipeline(
        "p",
        "version: 1\nstages:\n  s: {cmd: \"echo new > models/weights.bin\", outputs: [models/weights.bin]}\n",
    );
    ws.build(&["p"], 0);
    assert_eq!(ws.read("models/weights.bin"), "new\n");
    let aside = common::files_under(&ws.file(".edgebuild/aside"));
    assert!(aside.is_empty(), "nothing left aside: {aside:?}");
}

#[test]
fn a_cache_inside_an_output_is_a_load_time_diagnostic() {
    let ws = Workspace::new();
    ws.pipeline(
        "p",
        "version: 1\nstages:\n  s: {cmd: \"mkdir -p out && echo x > out/a\", outputs: [out]}\n",
    );
    ws.build(&["--cache-dir", "elsewhere"], 0);
    std::fs::create_dir_all(ws.file("out/cache")).unwrap();
    ws.write("out/cache/precious", "kept");
    let out = ws.run(&["build", "--cache-dir", "out/cache"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("output `out` of p:s overlaps the cache directory"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ws.read("out/cache/precious"), "kept");
    // And a cache that contains an output.
    let out = ws.run(&["plan", "--cache-dir", "."]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
}

#[test]
fn fleet_serve_refuses_a_zero_tick() {
    let ws = Workspace::new();
    let out = ws.run(&[
        "fleet", "serve", "--db", "f.sqlite", "--key", "k.pub", "--tick", "0s",
    ]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("at least 1ms"), "{}", stderr(&out));
}

#[test]
fn a_diagnostic_on_a_very_long_line_is_elided() {
    let ws = Workspace::new();
    let long = "a".repeat(70_000);
    ws.pipeline(
        "p",
        &format!(
            "version: 1\nstages:\n  s: {{cmd: \"true\", params: {{x: \"{long}\"}}, bogus: 1}}\n"
        ),
    );
    let out = ws.run(&["plan"]);
    let err = stderr(&out);
    assert_eq!(code(&out), Some(2), "{}", &err[..err.len().min(2000)]);
    assert!(
        err.contains("unknown key `bogus`"),
        "{}",
        &err[..err.len().min(2000)]
    );
    assert!(err.contains('…'), "the line is cut: {err}");
    assert!(err.len() < 5_000, "{} bytes of diagnostic", err.len());
    // The location is the true line and column.
    assert!(err.contains("p.yaml:3:"), "{err}");
}

#[test]
fn integers_beyond_64_bits_are_refused_not_rounded() {
    let ws = Workspace::new();
    ws.pipeline(
        "p",
        "version: 1\nstages:\n  s: {cmd: \"true\", params: {n: 18446744073709551616}}\n",
    );
    let out = ws.run(&["plan"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "param `18446744073709551616` of p:s is an integer that does not fit in 64 bits"
        ),
        "{}",
        stderr(&out)
    );
    // The largest u64 and the smallest i64 are kept exact.
    ws.pipeline(
        "p",
        "version: 1\nstages:\n  s: {cmd: \"echo ${params.n} ${params.m} > o.txt\", outputs: [o.txt], params: {n: 18446744073709551615, m: -9223372036854775808}}\n",
    );
    ws.build(&[], 0);
    assert_eq!(
        ws.read("o.txt"),
        "18446744073709551615 -9223372036854775808\n"
    );
}

#[test]
fn the_job_count_is_bounded() {
    let ws = Workspace::new();
    ws.pipeline("p", KEEP);
    for jobs in ["100000", "0", "x"] {
        let out = ws.run(&["build", "-j", jobs]);
        assert_eq!(code(&out), Some(2), "-j {jobs}: {}", stderr(&out));
        assert!(stderr(&out).contains("from 1 to 1024"), "{}", stderr(&out));
    }
    ws.build(&["-j", "1024"], 0);
}

#[test]
fn reports_are_never_written_over_what_edgebuild_does_not_own() {
    let ws = Workspace::new();
    ws.pipeline("p", KEEP);
    let out = ws.run(&["build", "--junit", "/nonexistent-edgebuild-dir/x.xml"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(!std::path::Path::new("/nonexistent-edgebuild-dir").exists());

    let out = ws.run(&["build", "--junit", "pipelines/p.yaml"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert_eq!(ws.read("pipelines/p.yaml"), KEEP);

    ws.write("notes.md", "my notes\n");
    let out = ws.run(&["build", "--summary", "notes.md"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a report edgebuild wrote"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ws.read("notes.md"), "my notes\n");

    // An empty file (GitHub's step summary) and edgebuild's own report are fine.
    ws.write("summary.md", "");
    for _ in 0..2 {
        let out = ws.run(&["build", "--summary", "summary.md", "--junit", "j.xml"]);
        assert_eq!(code(&out), Some(0), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("wrote summary.md"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn unreadable_pipeline_files_are_errors() {
    let ws = Workspace::new();
    ws.pipeline("p", KEEP);
    ws.build(&[], 0);
    std::os::unix::fs::symlink("gone.yaml", ws.file("pipelines/dangling.yaml")).unwrap();
    let out = ws.run(&["plan", "--check"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pipelines/dangling.yaml"),
        "{}",
        stderr(&out)
    );
    let out = ws.run(&["doctor"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    let all = format!("{}{}", common::stdout(&out), stderr(&out));
    assert!(all.contains("dangling.yaml"), "{all}");

    std::fs::remove_file(ws.file("pipelines/dangling.yaml")).unwrap();
    std::fs::create_dir(ws.file("pipelines/dir.yaml")).unwrap();
    let out = ws.run(&["plan", "--check"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("it is a directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn op_params_are_checked_when_the_pipeline_loads() {
    for (from, to, needle) in [
        (
            "runs: 300",
            "runs: 0",
            "`runs: 0` is not a number of timed runs",
        ),
        (
            "warmup: 30",
            "warmup: 18446744073709551615",
            "`warmup: 18446744073709551615` is not a number of warm-up runs",
        ),
        (
            "profile: host",
            "profile: \"\"",
            "is not a device profile name",
        ),
        ("runs: 300", "runs: -1", "params: invalid value"),
    ] {
        let ws = digits();
        let yaml = ws.read("pipelines/digits.yaml");
        assert!(yaml.contains(from));
        ws.write("pipelines/digits.yaml", &yaml.replace(from, to));
        let out = ws.run(&["plan"]);
        assert_eq!(code(&out), Some(2), "{to}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{to}: {}", stderr(&out));
    }
    let ws = digits();
    let yaml = ws.read("pipelines/digits.yaml");
    let calibrate = yaml.find("op: imatrix").expect("an imatrix stage");
    let (head, tail) = yaml.split_at(calibrate);
    ws.write(
        "pipelines/digits.yaml",
        &format!("{head}params: {{max_samples: -1}}\n    {tail}"),
    );
    let out = ws.run(&["plan"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("max_samples"), "{}", stderr(&out));
}

#[test]
fn bad_stage_and_pipeline_names_are_refused() {
    for name in ["\".\"", "\"..\"", "\"-x\""] {
        let ws = Workspace::new();
        ws.pipeline(
            "p",
            &format!("version: 1\nstages:\n  {name}: {{cmd: \"true\"}}\n"),
        );
        let out = ws.run(&["plan"]);
        assert_eq!(code(&out), Some(2), "{name}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("invalid stage name"),
            "{}",
            stderr(&out)
        );
    }
    let ws = Workspace::new();
    ws.write("pipelines/a:b.yaml", KEEP);
    let out = ws.run(&["plan"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`a:b` is not a pipeline name"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_yaml_alias_bomb_is_refused_with_the_limit() {
    let ws = Workspace::new();
    let mut yaml = String::from(
        "version: 1\nstages:\n  s:\n    cmd: \"true\"\n    params:\n      a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for i in 1..9 {
        let prev = i - 1;
        yaml.push_str(&format!(
            "      a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
        ));
    }
    ws.pipeline("p", &yaml);
    let out = ws.run(&["plan"]);
    let err = stderr(&out);
    assert_eq!(code(&out), Some(2), "{err}");
    assert!(!err.contains("budget breached"), "{err}");
    assert!(err.contains("it exceeds"), "{err}");
    assert!(err.contains("alias bomb"), "{err}");
}

#[test]
fn an_edited_lock_key_is_named_as_such() {
    let ws = Workspace::new();
    ws.pipeline(
        "p",
        "version: 1\nstages:\n  s: {cmd: \"echo s > s.txt\", outputs: [s.txt]}\n",
    );
    ws.build(&[], 0);
    let lock = ws.read("pipelines/p.lock");
    let key = serde_json::from_str::<serde_json::Value>(&lock).unwrap()["stages"]["s"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    ws.write("pipelines/p.lock", &lock.replace(&key, &"0".repeat(64)));
    let plan = ws.plan_json(&[]);
    assert_eq!(plan.reasons("p:s")[0]["kind"], "lock_edited", "{}", plan.0);
}

#[test]
fn a_volatile_output_leaves_the_committed_lock_alone() {
    let ws = Workspace::new();
    ws.pipeline(
        "p",
        "version: 1\nstages:\n  t:\n    cmd: \"date +%N > t.txt\"\n    outputs: [t.txt]\n    volatile: true\n",
    );
    ws.build(&[], 0);
    let lock = ws.read("pipelines/p.lock");
    assert!(
        !lock.contains("\"hash\""),
        "no hash of a volatile output: {lock}"
    );
    // A fresh checkout runs it again (its output is missing), and the lock stays the same.
    std::fs::remove_file(ws.file("t.txt")).unwrap();
    std::fs::remove_dir_all(ws.file("cache")).unwrap();
    ws.build(&[], 0);
    assert_eq!(ws.read("pipelines/p.lock"), lock);
    let out = ws.run(&["plan", "--check"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
}

#[test]
fn candle_backtraces_stay_out_of_messages() {
    let ws = Workspace::new();
    ws.write("bad.gguf", "GGUF\u{3}\0\0\0not a gguf at all");
    ws.write("x.csv", "1,2\n");
    let out = ws
        .command()
        .env("RUST_BACKTRACE", "1")
        .args(["infer", "bad.gguf", "--input", "x.csv"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), Some(2), "{err}");
    assert!(
        !err.contains("stack backtrace") && !err.contains("   0: "),
        "{err}"
    );
}

#[test]
fn a_corrupt_fleet_database_is_bad_input() {
    let ws = Workspace::new();
    let out = ws.run(&["keygen", "k"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    ws.write("fleet.sqlite", &"not a database ".repeat(200));
    let out = ws.run(&[
        "fleet",
        "serve",
        "--db",
        "fleet.sqlite",
        "--key",
        "k.pub",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a usable fleet database"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn nan_calibration_data_is_refused_naming_sample_and_column() {
    let ws = digits();
    let path = ws.file("examples/digits/calibration.npz");
    let arrays = candle_core::Tensor::read_npz(&path).unwrap();
    let x = &arrays.iter().find(|(n, _)| n == "x").unwrap().1;
    let mut values = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    values[3 * 64 + 17] = f32::NAN;
    let x = candle_core::Tensor::from_vec(values, x.dims(), &candle_core::Device::Cpu).unwrap();
    candle_core::Tensor::write_npz(&[("x", &x)], &path).unwrap();
    let out = ws.run(&["build", "digits:imatrix"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("array `x`, sample 3, column 17 is NaN"),
        "{}",
        stderr(&out)
    );
    assert!(
        common::files_under(&ws.file("out")).is_empty(),
        "no importance matrix is written"
    );
}

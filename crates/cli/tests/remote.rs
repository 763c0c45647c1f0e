//! The shared remote cache against a real HTTP server (nginx with WebDAV PUT on loopback): a
//! fresh clone restored entirely from the remote, poisoned entries rejected, an outage that
//! costs a warning, `--remote-required`, uploads that never leave an entry without its blobs,
//! `cache status|push|pull`, and credentials that never show.

mod common;

use std::collections::BTreeSet;

use common::{Nginx, Workspace, digits, stderr};
use serde_json::Value;

const CHAIN: &str = r#"
version: 1
stages:
  a:
    cmd: "mkdir -p out && tr a-z A-Z < data/in.txt > out/a.txt"
    inputs: [data/in.txt]
    outputs: [out/a.txt]
  b:
    cmd: "rev out/a.txt > out/b.txt"
    inputs: [out/a.txt]
    outputs: [out/b.txt]
  c:
    cmd: "cat out/a.txt out/b.txt > out/c.txt"
    inputs: [out/a.txt, out/b.txt]
    outputs: [out/c.txt]
"#;

fn chain() -> Workspace {
    let ws = Workspace::new();
    ws.write("data/in.txt", "hello remote cache\n")
        .pipeline("p", CHAIN);
    ws
}

/// `build --json` with extra arguments; returns (exit code, report, stderr).
fn build(ws: &Workspace, args: &[&str]) -> (i32, Value, String) {
    let mut all = vec!["build", "--json"];
    all.extend_from_slice(args);
    let out = ws.run(&all);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), report, stderr(&out))
}

fn outcomes(report: &Value) -> Vec<(String, String, bool)> {
    report["stages"]
        .as_array()
        .map(|stages| {
            stages
                .iter()
                .map(|s| {
                    (
                        s["stage"].as_str().unwrap().to_string(),
                        s["outcome"].as_str().unwrap().to_string(),
                        s["from_remote"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every action entry on the server names only blobs that are on the server too.
fn assert_no_entry_without_blobs(server: &Nginx) {
    let files: BTreeSet<String> = server.files().into_iter().collect();
    for file in files.iter().filter(|f| f.starts_with("ac/")) {
        let entry: Value =
            serde_json::from_slice(&std::fs::read(server.data().join(file)).unwrap()).unwrap();
        for output in entry["outputs"].as_object().unwrap().values() {
            let hashes: Vec<String> = match output["tree"].as_array() {
                Some(tree) => tree
                    .iter()
                    .filter(|e| e["dir"] != true && e["link"].is_null())
                    .map(|e| e["hash"].as_str().unwrap().to_string())
                    .collect(),
                None => vec![output["hash"].as_str().unwrap().to_string()],
            };
            for hash in hashes {
                let blob = format!("cas/{}/{hash}", &hash[..2]);
                assert!(files.contains(&blob), "{file} names {blob}, absent");
            }
        }
    }
}

#[test]
fn a_fresh_clone_builds_digits_from_the_remote_without_running_a_stage() {
    let server = Nginx::start();
    let writer = digits();
    let (code, report, err) = build(&writer, &["--remote", &server.url(), "--remote-upload"]);
    assert_eq!(code, 0, "{err}");
    assert!(outcomes(&report).iter().all(|(_, o, _)| o == "ran"));
    assert!(
        err.contains("8 entries uploaded") || err.contains("entries uploaded"),
        "{err}"
    );
    assert_no_entry_without_blobs(&server);

    // A second workspace with an empty local cache: everything comes from the remote, except
    // the volatile measurement, which is never shared.
    let reader = digits();
    let plan = reader.run(&["plan", "--remote", &server.url()]);
    let plan_text = common::stdout(&plan);
    assert!(
        plan_text.contains("imatrix   restore (remote)"),
        "{plan_text}"
    );
    let (code, report, err) = build(&reader, &["--remote", &server.url()]);
    assert_eq!(code, 0, "{err}");
    for (stage, outcome, from_remote) in outcomes(&report) {
        if stage == "digits:measure" {
            assert_eq!(outcome, "ran");
        } else {
            assert_eq!(
                (outcome.as_str(), from_remote),
                ("restored", true),
                "{stage}"
            );
        }
    }
    for file in [
        "out/digits/model.gguf",
        "out/digits/package/digits_model.h",
        "out/digits/firmware/model.o",
    ] {
        assert_eq!(
            std::fs::read(reader.file(file)).unwrap(),
            std::fs::read(writer.file(file)).unwrap(),
            "{file}"
        );
    }
    // Nothing volatile went to the server: the latency file's hash is not there (nor in the
    // lock, which records no hash of a volatile output).
    let lock: Value = serde_json::from_str(&writer.read("pipelines/digits.lock")).unwrap();
    let locked = &lock["stages"]["measure"]["outputs"]["out/digits/latency.json"];
    assert_eq!(locked, &serde_json::json!({"volatile": true}));
    let latency = common::sha256_of(&writer.file("out/digits/latency.json"));
    assert!(!server.files().iter().any(|f| f.ends_with(&latency)));
}

#[test]
fn a_corrupted_blob_or_a_forged_entry_is_rejected_and_the_stage_runs() {
    let server = Nginx::start();
    let writer = chain();
    let (code, _, err) = build(&writer, &["--remote", &server.url(), "--remote-upload"]);
    assert_eq!(code, 0, "{err}");
    let lock: Value = serde_json::from_str(&writer.read("pipelines/p.lock")).unwrap();
    let hash_of = |stage: &str, path: &str| {
        lock["stages"][stage]["outputs"][path]["hash"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Flip the content of a's output on the server.
    let a = hash_of("a", "out/a.txt");
    std::fs::write(
        server.data().join(format!("cas/{}/{a}", &a[..2])),
        "POISON\n",
    )
    .unwrap();
    // Make b's entry claim another key.
    let b_key = lock["stages"]["b"]["key"].as_str().unwrap().to_string();
    let b_entry = server
        .data()
        .join(format!("ac/{}/{b_key}.json", &b_key[..2]));
    let forged = std::fs::read_to_string(&b_entry)
        .unwrap()
        .replace(&b_key, &"0".repeat(64));
    std::fs::write(&b_entry, forged).unwrap();

    let reader = chain();
    let (code, report, err) = build(&reader, &["--remote", &server.url()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("rejected the remote cache entry for p:a (blob")
            && err.contains("does not match its hash"),
        "{err}"
    );
    assert!(
        err.contains("rejected the remote cache entry for p:b (the entry names key"),
        "{err}"
    );
    let outcomes = outcomes(&report);
    assert_eq!(outcomes[0], ("p:a".into(), "ran".into(), false));
    assert_eq!(outcomes[1], ("p:b".into(), "ran".into(), false));
    assert_eq!(outcomes[2], ("p:c".into(), "restored".into(), true));
    assert_eq!(reader.read("out/a.txt"), "HELLO REMOTE CACHE\n");
    assert_eq!(reader.read("out/c.txt"), writer.read("out/c.txt"));
    // The poison never reached the local cache.
    assert!(
        !common::files_under(&reader.file("cache"))
            .iter()
            .any(|(_, bytes)| bytes == b"POISON\n")
    );
}

#[test]
fn a_server_stopped_mid_build_costs_a_warning_not_the_build() {
    let mut server = Nginx::start();
    let writer = chain();
    let (code, _, err) = build(
        &writer,
        &["--remote", &server.url(), "--remote-upload", "p:a"],
    );
    assert_eq!(code, 0, "{err}");
    // In the reader, b stops the server while the build runs.
    let reader = Workspace::new();
    reader
        .write("data/in.txt", "hello remote cache\n")
        .pipeline(
            "p",
            &CHAIN.replace(
                "rev out/a.txt > out/b.txt",
                &format!(
                    "kill -TERM {} && sleep 0.5 && rev out/a.txt > out/b.txt",
                    server.pid()
                ),
            ),
        );
    let (code, report, err) = build(&reader, &["--remote", &server.url(), "-j", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: remote cache"), "{err}");
    assert!(err.contains("continuing without it"), "{err}");
    let outcomes = outcomes(&report);
    assert_eq!(outcomes[0], ("p:a".into(), "restored".into(), true));
    assert_eq!(outcomes[2], ("p:c".into(), "ran".into(), false));
    assert_eq!(
        reader.read("out/c.txt"),
        "HELLO REMOTE CACHE\nEHCAC ETOMER OLLEH\n"
    );
    server.stop();

    // --remote-required fails clearly instead, before anything runs.
    let fresh = chain();
    let out = fresh.run(&["build", "--remote", &server.url(), "--remote-required"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("remote cache {} is unavailable", server.url())),
        "{}",
        stderr(&out)
    );
    assert!(!fresh.exists("out"));
    // Without it, the same outage is a warning.
    let out = fresh.run(&["build", "--remote", &server.url()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning: remote cache"));
}

#[test]
fn an_interrupted_upload_leaves_no_entry_without_its_blobs() {
    // The server refuses bodies over 20 kB: the GGUF's upload fails half-way through an entry.
    let server = Nginx::start_with_body_limit("20k");
    let writer = digits();
    let (code, report, err) = build(&writer, &["--remote", &server.url(), "--remote-upload"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        outcomes(&report).iter().all(|(_, o, _)| o == "ran"),
        "{err}"
    );
    assert!(err.contains("warning: remote cache"), "{err}");
    assert_no_entry_without_blobs(&server);
    let lock: Value = serde_json::from_str(&writer.read("pipelines/digits.lock")).unwrap();
    let key = lock["stages"]["quantize"]["key"].as_str().unwrap();
    assert!(!server.files().iter().any(|f| f.contains(key)));
}

#[test]
fn cache_status_push_and_pull() {
    let server = Nginx::start();
    let writer = chain();
    writer.write(
        "edgebuild.yaml",
        &format!("remote:\n  url: {}\n  timeout: 5\n", server.url()),
    );
    let (code, _, err) = build(&writer, &[]);
    assert_eq!(code, 0, "{err}");
    let status = |ws: &Workspace| -> Vec<(String, bool, bool)> {
        let out = ws.run(&["cache", "status", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["stage"].as_str().unwrap().to_string(),
                    s["local"].as_bool().unwrap(),
                    s["remote"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    // Read-only by default: nothing was uploaded.
    assert!(
        status(&writer)
            .iter()
            .all(|(_, local, remote)| *local && !remote)
    );
    assert!(server.files().is_empty());
    let out = writer.run(&["cache", "push"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("pushed 3"), "{}", stderr(&out));
    assert!(
        status(&writer)
            .iter()
            .all(|(_, local, remote)| *local && *remote)
    );
    assert_no_entry_without_blobs(&server);

    // A clone with the lock but no local cache pulls, then builds without the remote.
    let reader = chain();
    reader.write("edgebuild.yaml", &writer.read("edgebuild.yaml"));
    reader.write("pipelines/p.lock", &writer.read("pipelines/p.lock"));
    assert!(
        status(&reader)
            .iter()
            .all(|(_, local, remote)| !local && *remote)
    );
    let out = reader.run(&["cache", "pull"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("pulled 3"), "{}", stderr(&out));
    let (code, report, err) = build(&reader, &["--no-remote"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        outcomes(&report)
            .iter()
            .all(|(_, o, remote)| o == "restored" && !remote),
        "{report}"
    );

    let plain = chain();
    let out = plain.run(&["cache", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no remote cache is configured"));
}

#[test]
fn credentials_never_show() {
    let mut server = Nginx::start();
    server.stop();
    let ws = chain();
    let url = format!("http://alice:hunter2@127.0.0.1:{}/cache/", server.port);
    let out = ws
        .command()
        .env("EDGEBUILD_REMOTE_TOKEN", "s3cr3t-t0ken")
        .args(["build", "--remote", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = format!("{}{}", stderr(&out), common::stdout(&out));
    assert!(
        shown.contains("warning: remote cache http://127.0.0.1:"),
        "{shown}"
    );
    for secret in ["hunter2", "alice", "s3cr3t-t0ken"] {
        assert!(!shown.contains(secret), "{secret} shown: {shown}");
        assert!(!ws.read("pipelines/p.lock").contains(secret));
    }
}

#[test]
fn bad_remote_configuration_is_bad_input() {
    let ws = chain();
    for (config, needle) in [
        (
            "remote:\n  url: ftp://example.com/x\n",
            "unsupported scheme `ftp`",
        ),
        ("remote:\n  ulr: http://x/\n", "cannot read edgebuild.yaml"),
        (
            "remote:\n  url: \"http://[::1\"\n",
            "cannot use the remote cache",
        ),
    ] {
        ws.write("edgebuild.yaml", config);
        let out = ws.run(&["build"]);
        assert_eq!(out.status.code(), Some(2), "{config}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{config}: {}", stderr(&out));
        assert!(!ws.exists("out"));
    }
    std::fs::remove_file(ws.file("edgebuild.yaml")).unwrap();
    let out = ws.run(&["build", "--remote-required"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no remote is configured"),
        "{}",
        stderr(&out)
    );
}

const USES_WEIGHTS: &str = r#"
version: 1
stages:
  size:
    cmd: "mkdir -p out && wc -c < ${inputs.weights} > ${outputs.size}"
    inputs: {weights: models/weights.bin}
    outputs: {size: out/size.txt}
"#;

#[test]
fn versioned_inputs_outside_git_are_added_and_pulled() {
    let server = Nginx::start();
    let writer = Workspace::new();
    writer.git_init();
    writer.pipeline("p", USES_WEIGHTS);
    writer.write("models/weights.bin", &"w".repeat(5000));
    writer.write(
        "edgebuild.yaml",
        &format!("remote:\n  url: {}\n  timeout: 5\n", server.url()),
    );
    let out = writer.run(&["add", "models/weights.bin", "--remote-upload"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let pointer: Value = serde_json::from_str(&writer.read("models/weights.bin.pointer")).unwrap();
    assert_eq!(pointer["size"], 5000);
    assert_eq!(pointer["file"], "weights.bin");
    assert!(writer.read(".gitignore").contains("/models/weights.bin\n"));
    let hash = pointer["sha256"].as_str().unwrap();
    assert!(
        server
            .files()
            .contains(&format!("cas/{}/{hash}", &hash[..2]))
    );
    // Adding again changes nothing.
    let gitignore = writer.read(".gitignore");
    assert_eq!(
        writer.run(&["add", "models/weights.bin"]).status.code(),
        Some(0)
    );
    assert_eq!(writer.read(".gitignore"), gitignore);
    assert_eq!(build(&writer, &[]).0, 0);
    writer.commit("weights by pointer");
    assert_eq!(
        writer.git(&["ls-files", "models"]),
        "models/weights.bin.pointer",
        "git holds the pointer, not the weights"
    );

    // A fresh clone: the weights are missing until pulled, and `plan` says so.
    let reader = Workspace::new();
    for file in [
        "pipelines/p.yaml",
        "models/weights.bin.pointer",
        "edgebuild.yaml",
    ] {
        reader.write(file, &writer.read(file));
    }
    let out = reader.run(&["plan"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("run `edgebuild pull`"),
        "{}",
        stderr(&out)
    );
    let out = reader.run(&["pull"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 from the remote"),
        "{}",
        stderr(&out)
    );
    assert_eq!(reader.read("models/weights.bin"), "w".repeat(5000));
    // Deleted again: the local cache has it now.
    std::fs::remove_file(reader.file("models/weights.bin")).unwrap();
    let out = reader.run(&["pull", "--no-remote"]);
    assert!(
        stderr(&out).contains("1 from the local cache"),
        "{}",
        stderr(&out)
    );
    assert_eq!(build(&reader, &[]).0, 0);
    assert_eq!(reader.read("out/size.txt").trim(), "5000");

    // verify-reproducible brings the weights in: from the working tree, else the remote.
    let out = writer.run(&["verify-reproducible", "--json", "HEAD"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pulled"][0][1], "working-tree");
    std::fs::remove_file(writer.file("models/weights.bin")).unwrap();
    let out = writer.run(&["verify-reproducible", "--json", "HEAD"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["pulled"][0],
        serde_json::json!(["models/weights.bin", "remote"])
    );

    // A corrupted blob on the server is refused, and nothing is written.
    std::fs::write(
        server.data().join(format!("cas/{}/{hash}", &hash[..2])),
        "bad",
    )
    .unwrap();
    let other = Workspace::new();
    for file in [
        "pipelines/p.yaml",
        "models/weights.bin.pointer",
        "edgebuild.yaml",
    ] {
        other.write(file, &writer.read(file));
    }
    let out = other.run(&["pull"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("does not match its hash"),
        "{}",
        stderr(&out)
    );
    assert!(!other.exists("models/weights.bin"));
}

#[test]
fn verification_never_uses_the_remote() {
    let server = Nginx::start();
    let ws = chain();
    ws.git_init();
    ws.write(
        "edgebuild.yaml",
        &format!("remote:\n  url: {}\n", server.url()),
    );
    let (code, _, err) = build(&ws, &["--remote-upload"]);
    assert_eq!(code, 0, "{err}");
    ws.commit("built and uploaded");
    let before = server.requests();
    assert!(
        before.iter().any(|r| r.starts_with("PUT /cache/ac/")),
        "{before:?}"
    );
    let out = ws
        .command()
        .env("EDGEBUILD_REMOTE", server.url())
        .args(["verify-reproducible", "--json", "HEAD"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["builds"][0]["stages"]
            .as_object()
            .unwrap()
            .values()
            .all(|o| o == "ran")
    );
    let out = ws.run(&["verify-reproducible", "--vary"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(server.requests(), before, "no request reached the remote");
}

#[test]
fn a_directory_remote_and_cloud_urls() {
    // file://: a shared directory works like any other remote.
    let shared = tempfile::tempdir().unwrap();
    let url = format!("file://{}", shared.path().display());
    let writer = chain();
    assert_eq!(build(&writer, &["--remote", &url, "--remote-upload"]).0, 0);
    let reader = chain();
    let (code, report, err) = build(&reader, &["--remote", &url]);
    assert_eq!(code, 0, "{err}");
    assert!(
        outcomes(&report)
            .iter()
            .all(|(_, o, r)| o == "restored" && *r),
        "{report}"
    );

    // s3://, gs://, az:// are accepted; an unreachable endpoint is a warning, not a failure.
    for url in [
        "s3://bucket/edgebuild",
        "gs://bucket/edgebuild",
        "az://container/edgebuild",
    ] {
        let ws = chain();
        let out = ws
            .command()
            .env("AWS_ENDPOINT", "http://127.0.0.1:9")
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
            .env("AWS_REGION", "us-east-1")
            .env("GOOGLE_SERVICE_ACCOUNT_KEY", "{}")
            .env("AZURE_STORAGE_ACCOUNT_NAME", "devstoreaccount1")
            .env("AZURE_STORAGE_ACCOUNT_KEY", "a2V5")
            .env("AZURE_STORAGE_USE_EMULATOR", "true")
            .args(["build", "--remote", url])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!err.contains("wJalrXUtnFEMI"), "{url}: secret shown: {err}");
        if url.starts_with("gs:") {
            // A service account key without its private key is refused before anything runs.
            assert_eq!(out.status.code(), Some(2), "{url}: {err}");
            assert!(
                err.contains("cannot use the remote cache `gs://bucket/edgebuild`"),
                "{err}"
            );
        } else {
            assert_eq!(out.status.code(), Some(0), "{url}: {err}");
            assert!(
                err.contains(&format!("warning: remote cache {url} is unavailable")),
                "{err}"
            );
        }
    }
}

#[test]
fn a_remote_entry_cannot_flip_a_gate_or_name_other_outputs() {
    let gated = r#"
version: 1
stages:
  measure:
    cmd: "mkdir -p out && printf '{\"accuracy\": 0.5}' > out/m.json"
    outputs: [out/m.json]
  gate:
    op: gate
    inputs: {m: out/m.json}
    outputs: {verdict: out/gate.json}
    params: {checks: [{name: accuracy, input: m, path: accuracy, min: 0.9}]}
  ship:
    cmd: "cp out/m.json out/shipped.json"
    inputs: [out/m.json]
    outputs: [out/shipped.json]
    after: [gate]
"#;
    let shared = tempfile::tempdir().unwrap();
    let url = format!("file://{}", shared.path().display());
    let writer = Workspace::new();
    writer.pipeline("p", gated);
    assert_eq!(build(&writer, &["--remote", &url, "--remote-upload"]).0, 3);
    let lock: Value = serde_json::from_str(&writer.read("pipelines/p.lock")).unwrap();
    let key = lock["stages"]["gate"]["key"].as_str().unwrap().to_string();
    let entry_path = shared.path().join(format!("ac/{}/{key}.json", &key[..2]));
    let entry = std::fs::read_to_string(&entry_path).unwrap();
    assert!(entry.contains("\"gate_passed\": false"), "{entry}");
    // A forged entry says the gate passed: its own verdict file says otherwise.
    std::fs::write(
        &entry_path,
        entry.replace(",\n  \"gate_passed\": false", ""),
    )
    .unwrap();
    let reader = Workspace::new();
    reader.pipeline("p", gated);
    let (code, report, err) = build(&reader, &["--remote", &url]);
    assert_eq!(code, 3, "{err}");
    assert!(
        !reader.exists("out/shipped.json"),
        "nothing after the gate ran"
    );
    assert!(
        outcomes(&report)
            .iter()
            .any(|(s, o, _)| s == "p:gate" && o == "gate-failed"),
        "{report}"
    );

    // An entry that names an extra output is rejected before anything is written.
    let m_key = lock["stages"]["measure"]["key"]
        .as_str()
        .unwrap()
        .to_string();
    let m_path = shared
        .path()
        .join(format!("ac/{}/{m_key}.json", &m_key[..2]));
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&m_path).unwrap()).unwrap();
    let copy = m["outputs"]["out/m.json"].clone();
    m["outputs"]["../escaped.json"] = copy;
    std::fs::write(&m_path, serde_json::to_vec(&m).unwrap()).unwrap();
    let third = Workspace::new();
    third.pipeline("p", gated);
    let (_, _, err) = build(&third, &["--remote", &url]);
    assert!(
        err.contains("rejected the remote cache entry for p:measure (the entry names outputs"),
        "{err}"
    );
    assert!(!third.path().parent().unwrap().join("escaped.json").exists());
}

#[test]
fn pointers_are_checked_and_outages_do_not_lose_work() {
    let ws = Workspace::new();
    ws.pipeline("p", USES_WEIGHTS);
    ws.write("models/weights.bin", "weights v1");
    // An unreachable remote while adding: a warning, and the pointer is written anyway.
    let out = ws.run(&[
        "add",
        "models/weights.bin",
        "--remote",
        "http://127.0.0.1:9/cache/",
        "--remote-upload",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: remote cache"),
        "{}",
        stderr(&out)
    );
    assert!(ws.exists("models/weights.bin.pointer"));

    // A local change is not overwritten by pull, unless forced.
    ws.write("models/weights.bin", "weights v2, not added");
    let out = ws.run(&["pull"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("differs from its pointer"),
        "{}",
        stderr(&out)
    );
    assert_eq!(ws.read("models/weights.bin"), "weights v2, not added");
    assert_eq!(ws.run(&["pull", "--force"]).status.code(), Some(0));
    assert_eq!(ws.read("models/weights.bin"), "weights v1");

    // Not in the local cache and the remote down: a clear error, nothing written.
    std::fs::remove_file(ws.file("models/weights.bin")).unwrap();
    std::fs::remove_dir_all(ws.file("cache")).unwrap();
    let out = ws.run(&["pull", "--remote", "http://127.0.0.1:9/cache/"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is in neither the local cache"),
        "{}",
        stderr(&out)
    );
    assert!(!ws.exists("models/weights.bin"));

    // A pointer that names a path rather than the file beside it is refused.
    let pointer = ws.read("models/weights.bin.pointer");
    std::fs::remove_file(ws.file("models/weights.bin.pointer")).unwrap();
    ws.write(
        "models/x.bin.pointer",
        &pointer.replace("\"weights.bin\"", "\"../../evil.bin\""),
    );
    let out = ws.run(&["pull"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a pointer file: it names `../../evil.bin`"),
        "{}",
        stderr(&out)
    );
    assert!(!ws.path().parent().unwrap().join("evil.bin").exists());

    // Credentials in a URL that does not parse are not shown either.
    let out = ws.run(&[
        "build",
        "--remote",
        "http://alice:s3cretpw@127.0.0.1:99999/cache/",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!stderr(&out).contains("s3cretpw"), "{}", stderr(&out));
}

//! Signed releases: made only from a gated, current build; verified as a device would (signature,
//! number, artifact hashes); a pre-signed rollback to the previous release; the private key
//! stays out of the cache, the locks and the output.

mod common;

use common::{digits, stderr, stdout};

fn keys(dir: &std::path::Path) -> (String, String) {
    let private = dir.join("release.key").display().to_string();
    (private.clone(), format!("{private}.pub"))
}

#[test]
fn a_release_is_signed_verified_and_rolled_back_to() {
    let ws = digits();
    let keydir = tempfile::tempdir().unwrap();
    let (private, public) = keys(keydir.path());
    let out = ws.run(&["keygen", &private]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        ws.run(&["keygen", &private]).status.code(),
        Some(2),
        "never overwritten"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&private).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Not built yet: refused.
    let out = ws.run(&["release", "digits", "--version", "1.0.0", "--key", &private]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("the lock does not match the working tree"),
        "{}",
        stderr(&out)
    );

    ws.build(&[], 0);
    let out = ws.run(&["release", "digits", "--version", "1.0.0", "--key", &private]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let manifest = ws.file("releases/digits/1.json");
    let signed: serde_json::Value =
        serde_json::from_str(&ws.read("releases/digits/1.json")).unwrap();
    assert_eq!(signed["manifest"]["release"], 1);
    assert_eq!(signed["manifest"]["gates"]["digits:gates"], "passed");
    let names: Vec<&str> = signed["manifest"]["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["digits.gguf", "digits_model.h", "manifest.json"]);

    let verify = |path: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["verify-release", path.to_str().unwrap(), "--key", &public];
        args.extend_from_slice(extra);
        ws.run(&args)
    };
    let out = verify(&manifest, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("ok: release 1 (digits 1.0.0)"));
    // A device running release 1 refuses it again.
    let out = verify(&manifest, &["--current", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is not newer than the running release 1"));

    // A tampered manifest, and a tampered artifact, are refused.
    let tampered = ws.file("tampered.json");
    std::fs::write(
        &tampered,
        ws.read("releases/digits/1.json").replace("1.0.0", "1.0.1"),
    )
    .unwrap();
    let out = verify(&tampered, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("the signature does not match"),
        "{}",
        stderr(&out)
    );
    let artifacts = ws.file("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for name in &names {
        std::fs::copy(
            ws.file(&format!("out/digits/package/{name}")),
            artifacts.join(name),
        )
        .unwrap();
    }
    let out = verify(&manifest, &["--artifacts", artifacts.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut gguf = std::fs::read(artifacts.join("digits.gguf")).unwrap();
    let last = gguf.len() - 1;
    gguf[last] ^= 1;
    std::fs::write(artifacts.join("digits.gguf"), gguf).unwrap();
    let out = verify(&manifest, &["--artifacts", artifacts.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("artifact digits.gguf does not match its hash"));
    // Signed by another key: refused.
    let other = tempfile::tempdir().unwrap();
    let (other_private, other_public) = keys(other.path());
    assert_eq!(ws.run(&["keygen", &other_private]).status.code(), Some(0));
    let out = ws.run(&[
        "verify-release",
        manifest.to_str().unwrap(),
        "--key",
        &other_public,
    ]);
    assert_eq!(out.status.code(), Some(2));

    // A second release (q8_0) comes with a pre-signed rollback to the first.
    let yaml = ws.read("pipelines/digits.yaml");
    ws.pipeline("digits", &yaml.replace("type: q4_k", "type: q8_0"));
    ws.build(&[], 0);
    let out = ws.run(&["release", "digits", "--version", "1.1.0", "--key", &private]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rollback: serde_json::Value =
        serde_json::from_str(&ws.read("releases/digits/3.json")).unwrap();
    assert_eq!(rollback["manifest"]["kind"], "rollback");
    assert_eq!(rollback["manifest"]["rollback_to"], 1);
    assert_eq!(
        rollback["manifest"]["artifacts"],
        signed["manifest"]["artifacts"]
    );
    // A device on release 2 accepts the rollback (numbered 3), which restores release 1's bytes.
    let out = verify(&ws.file("releases/digits/3.json"), &["--current", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The next release is numbered above both; a version is released once, even an older one.
    for version in ["1.1.0", "1.0.0"] {
        let out = ws.run(&["release", "digits", "--version", version, "--key", &private]);
        assert_eq!(out.status.code(), Some(2), "{version}");
        assert!(
            stderr(&out).contains("was released already"),
            "{}",
            stderr(&out)
        );
    }
    let out = ws.run(&["verify-release", "releases/digits/9.json", "--key", &public]);
    assert_eq!(out.status.code(), Some(2), "a missing manifest is refused");

    // The private key is nowhere but its file.
    let secret = std::fs::read_to_string(&private).unwrap();
    let seed = secret.lines().nth(1).unwrap();
    for (path, bytes) in common::files_under(ws.path()) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(seed),
            "the private key leaked into {path}"
        );
    }
}

#[test]
fn a_failed_gate_is_never_released() {
    let ws = digits();
    let keydir = tempfile::tempdir().unwrap();
    let (private, _) = keys(keydir.path());
    assert_eq!(ws.run(&["keygen", &private]).status.code(), Some(0));
    let yaml = ws.read("pipelines/digits.yaml");
    ws.pipeline("digits", &yaml.replace("max: 262144", "max: 1000"));
    ws.build(&[], 3);
    let out = ws.run(&["release", "digits", "--version", "1.0.0", "--key", &private]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!ws.exists("releases"));
}

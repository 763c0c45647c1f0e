//! A temporary workspace and helpers to drive the `edgebuild` binary on it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

/// The repository this test suite belongs to.
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A workspace with the digits pipeline and its inputs.
pub fn digits() -> Workspace {
    let ws = Workspace::new();
    for file in [
        "examples/digits/mlp.yaml",
        "examples/digits/mlp.safetensors",
        "examples/digits/calibration.npz",
        "examples/digits/heldout.npz",
        "devices/profiles.yaml",
        "pipelines/digits.yaml",
    ] {
        let dest = ws.file(file);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(Path::new(REPO).join(file), dest).unwrap();
    }
    ws
}

pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
        Workspace { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) -> &Self {
        let path = self.file(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        self
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.file(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.file(rel).exists()
    }

    pub fn pipeline(&self, name: &str, yaml: &str) -> &Self {
        self.write(&format!("pipelines/{name}.yaml"), yaml)
    }

    /// The binary, run in the workspace with a predictable environment.
    pub fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin!("edgebuild"));
        cmd.current_dir(self.path())
            .env("NO_COLOR", "1")
            .env_remove("EDGEBUILD_CACHE_DIR")
            .env_remove("CLICOLOR_FORCE");
        cmd
    }

    /// Runs git in the workspace, with no user or system configuration; panics on failure.
    pub fn git(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .current_dir(self.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "edgebuild tests")
            .env("GIT_AUTHOR_EMAIL", "tests@edgebuild.invalid")
            .env("GIT_COMMITTER_NAME", "edgebuild tests")
            .env("GIT_COMMITTER_EMAIL", "tests@edgebuild.invalid")
            .args(args)
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Makes the workspace a git repository that ignores outputs, caches and local state.
    pub fn git_init(&self) -> &Self {
        self.write(".gitignore", "out/\ncache/\n.edgebuild/\n");
        self.git(&["init", "--quiet", "--initial-branch=main"]);
        self
    }

    /// Commits everything; returns the commit hash.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run edgebuild")
    }

    /// `build --json`, asserting the exit code; returns stage id → outcome.
    pub fn build(&self, args: &[&str], expect_code: i32) -> Outcomes {
        let mut all = vec!["build", "--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert_eq!(
            out.status.code(),
            Some(expect_code),
            "build exit code; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).expect("build --json prints JSON");
        Outcomes(report)
    }

    pub fn plan_json(&self, args: &[&str]) -> Outcomes {
        let mut all = vec!["plan", "--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "plan failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Outcomes(serde_json::from_slice(&out.stdout).expect("plan --json prints JSON"))
    }
}

/// A build or plan report.
pub struct Outcomes(pub Value);

impl Outcomes {
    fn stages(&self) -> &Vec<Value> {
        self.0["stages"].as_array().expect("stages array")
    }

    /// The outcome (build) or status (plan) of one stage.
    pub fn of(&self, stage: &str) -> String {
        let entry = self
            .stages()
            .iter()
            .find(|s| s["stage"] == stage)
            .unwrap_or_else(|| panic!("no stage {stage} in {}", self.0));
        entry
            .get("outcome")
            .or_else(|| entry.get("status"))
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    }

    /// Stage ids with the given outcome, sorted.
    pub fn with(&self, outcome: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .stages()
            .iter()
            .filter(|s| {
                s.get("outcome")
                    .or_else(|| s.get("status"))
                    .and_then(Value::as_str)
                    == Some(outcome)
            })
            .map(|s| s["stage"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    }

    pub fn reasons(&self, stage: &str) -> Vec<Value> {
        self.stages()
            .iter()
            .find(|s| s["stage"] == stage)
            .and_then(|s| s["reasons"].as_array().cloned())
            .unwrap_or_default()
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

//! The README, run as a newcomer would (SPEC.md, "The README is tested"): its `sh` blocks in order, through bash, in
//! a fresh copy of this repository committed to a new git repository, with the built binary on
//! PATH. Each block must succeed, and when a `text` block follows it, its output (stdout and
//! stderr together) must match it, with snapbox's wildcards (`...` for lines, `[..]` within one).
//!
//! The README's first block (the main job and the tests) is not run here: it is what CI runs.

use std::path::Path;
use std::process::Command;

use pulldown_cmark::{CodeBlockKind, Event, Parser, Tag, TagEnd};

/// The repository root (this crate is `crates/cli`).
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Code blocks of a Markdown text: (info string, content), in order.
fn code_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for event in Parser::new(markdown) {
        match event {
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(info))) => {
                current = Some((info.to_string(), String::new()));
            }
            Event::Text(text) => {
                if let Some((_, content)) = current.as_mut() {
                    content.push_str(&text);
                }
            }
            Event::End(TagEnd::CodeBlock) => blocks.extend(current.take()),
            _ => {}
        }
    }
    blocks
}

/// A newcomer's git: a name and address, no configuration of this machine's.
fn as_newcomer(cmd: &mut Command) -> &mut Command {
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "A Newcomer")
        .env("GIT_AUTHOR_EMAIL", "newcomer@example.com")
        .env("GIT_COMMITTER_NAME", "A Newcomer")
        .env("GIT_COMMITTER_EMAIL", "newcomer@example.com")
}

fn git(dir: &Path, args: &[&str]) {
    let status = as_newcomer(Command::new("git").current_dir(dir).args(args))
        .output()
        .expect("git");
    assert!(
        status.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// The repository's tracked files as they are in the working tree, committed to a new
/// repository, so the README's `git` commands work on what is being tested.
fn fresh_clone() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let listed = Command::new("git")
        .current_dir(REPO)
        .args(["ls-files", "-z", "--cached"])
        .output()
        .expect("git ls-files");
    assert!(listed.status.success(), "the repository is a git checkout");
    for rel in listed.stdout.split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let rel = String::from_utf8_lossy(rel).into_owned();
        let from = Path::new(REPO).join(&rel);
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        let to = dir.path().join(&rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap();
    }
    git(dir.path(), &["init", "--quiet", "--initial-branch=main"]);
    git(dir.path(), &["add", "--all"]);
    git(dir.path(), &["commit", "--quiet", "-m", "a fresh clone"]);
    dir
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    let blocks = code_blocks(&readme);
    assert_eq!(blocks[0].0, "sh");
    assert_eq!(
        blocks[0].1, "cargo run --release -- build\nbash .ci/run\n",
        "the README opens with the two commands, and nothing else"
    );
    let clone = fresh_clone();
    let bin = Path::new(env!("CARGO_BIN_EXE_edgebuild"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = 0;
    for (i, (info, script)) in blocks.iter().enumerate().skip(1) {
        if info != "sh" {
            continue;
        }
        let out = as_newcomer(
            Command::new("bash")
                .current_dir(clone.path())
                .args(["-euo", "pipefail", "-c", &format!("exec 2>&1\n{script}")])
                .env("PATH", &path)
                .env("NO_COLOR", "1")
                .env_remove("EDGEBUILD_CACHE_DIR")
                .env_remove("EDGEBUILD_REMOTE"),
        )
        .output()
        .expect("bash");
        let output = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "README block {i} failed ({}):\n{script}\n--- output:\n{output}",
            out.status
        );
        if let Some((next, expected)) = blocks.get(i + 1)
            && next == "text"
        {
            snapbox::Assert::new().eq(output, expected.as_str());
        }
        ran += 1;
    }
    assert!(ran >= 6, "the walkthrough has its blocks ({ran})");
}

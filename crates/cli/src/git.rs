//! The git repository around a workspace: resolving commits, reading files at a commit and
//! materializing a commit's tree or the working tree in a directory of its own.
//!
//! edgebuild runs the `git` command rather than linking a git library: what it needs is a few
//! plumbing commands, and the user's own git (with its configuration and object formats) is the
//! one that wrote the repository. Nothing here writes to the repository, its index or its working
//! tree: a commit is checked out through a temporary index file into a directory elsewhere.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use miette::Diagnostic;
use thiserror::Error;

#[derive(Debug, Error, Diagnostic)]
pub enum GitError {
    #[error("cannot run git: {0}")]
    #[diagnostic(
        code(edgebuild::git::missing),
        help("install git; verifying and comparing commits reads them with git")
    )]
    NoGit(std::io::Error),

    #[error("{} is not inside a git repository", .0.display())]
    #[diagnostic(
        code(edgebuild::git::not_a_repository),
        help(
            "commit the workspace to git (`git init && git add -A && git commit`) to verify or compare commits"
        )
    )]
    NotARepository(PathBuf),

    #[error("unknown commit `{0}`")]
    #[diagnostic(
        code(edgebuild::git::unknown_commit),
        help(
            "give a commit hash, a branch, a tag or an expression such as HEAD~1 (`git log --oneline` lists commits)"
        )
    )]
    UnknownCommit(String),

    #[error("git {command} failed: {stderr}")]
    #[diagnostic(code(edgebuild::git::failed))]
    Failed { command: String, stderr: String },

    #[error("I/O error on {path}: {source}")]
    #[diagnostic(code(edgebuild::git::io))]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A workspace's repository: where it is and where the workspace lies inside it.
#[derive(Debug, Clone)]
pub struct Repository {
    /// The top of the working tree.
    pub toplevel: PathBuf,
    /// The workspace root relative to `toplevel` (empty, or ending in `/`).
    pub prefix: String,
}

fn git(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        // The user's pager, colours and locale must not change what is parsed here.
        .env("GIT_PAGER", "cat")
        .env("LC_ALL", "C")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE");
    cmd
}

fn run(mut cmd: Command, what: &str) -> Result<Vec<u8>, GitError> {
    let output = cmd.output().map_err(GitError::NoGit)?;
    if !output.status.success() {
        return Err(GitError::Failed {
            command: what.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output.stdout)
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).trim().to_string()
}

impl Repository {
    /// The repository that holds the workspace at `root`.
    pub fn find(root: &Path) -> Result<Repository, GitError> {
        let mut cmd = git(root);
        cmd.args(["rev-parse", "--show-toplevel", "--show-prefix"]);
        let output = cmd.output().map_err(GitError::NoGit)?;
        if !output.status.success() {
            return Err(GitError::NotARepository(root.to_path_buf()));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let mut lines = stdout.lines();
        let toplevel = PathBuf::from(lines.next().unwrap_or_default());
        let prefix = lines.next().unwrap_or_default().to_string();
        Ok(Repository { toplevel, prefix })
    }

    /// The full hash of the commit `rev` names.
    pub fn resolve(&self, rev: &str) -> Result<String, GitError> {
        if rev.starts_with('-') {
            return Err(GitError::UnknownCommit(rev.to_string()));
        }
        let mut cmd = git(&self.toplevel);
        cmd.args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
            .arg(format!("{rev}^{{commit}}"));
        run(cmd, "rev-parse")
            .map(text)
            .map_err(|_| GitError::UnknownCommit(rev.to_string()))
    }

    /// A one-line description of a commit: short hash and subject.
    pub fn describe(&self, commit: &str) -> String {
        let mut cmd = git(&self.toplevel);
        cmd.args(["log", "-1", "--format=%h (%s)", commit]);
        run(cmd, "log").map(text).unwrap_or_else(|_| commit.into())
    }

    /// Writes the tree of `commit` into `dest` (which must exist), through a temporary index:
    /// the repository's own index and working tree are not touched.
    pub fn checkout_into(&self, commit: &str, dest: &Path) -> Result<(), GitError> {
        let index = tempfile::NamedTempFile::new().map_err(|source| GitError::Io {
            path: "temporary index".into(),
            source,
        })?;
        let mut read = git(&self.toplevel);
        read.env("GIT_INDEX_FILE", index.path())
            .args(["read-tree", commit]);
        run(read, "read-tree")?;
        let mut prefix = dest.as_os_str().to_owned();
        prefix.push("/");
        let mut checkout = git(&self.toplevel);
        checkout
            .env("GIT_INDEX_FILE", index.path())
            .args(["checkout-index", "--all", "--force"])
            .arg(concat_os("--prefix=", &prefix));
        run(checkout, "checkout-index")?;
        Ok(())
    }

    /// The files of the working tree under the workspace root that git tracks or would track
    /// (untracked files that no ignore rule matches), relative to the workspace root.
    pub fn working_files(&self, root: &Path) -> Result<Vec<String>, GitError> {
        let mut cmd = git(root);
        cmd.args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
            ".",
        ]);
        let out = run(cmd, "ls-files")?;
        let mut files: Vec<String> = out
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        files.sort();
        files.dedup();
        Ok(files)
    }
}

fn concat_os(a: &str, b: &OsStr) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(a);
    s.push(b);
    s
}

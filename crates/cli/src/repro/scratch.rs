//! The scratch space of a verification: a temporary directory for workspace copies and private
//! caches (kept with `--keep`), and copying a workspace's files into it.

use std::path::Path;

use std::collections::BTreeSet;

use super::{VerifyError, io_err};
use crate::git::{GitError, Repository};
use edgebuild_engine::op::OpRegistry;
use edgebuild_engine::spec::PIPELINES_DIR;
use edgebuild_engine::spec::Workspace;

/// A temporary directory for the copies and caches of a verification, removed unless kept.
pub struct Scratch {
    dir: tempfile::TempDir,
    keep: bool,
}

impl Scratch {
    pub fn new(keep: bool) -> Result<Scratch, VerifyError> {
        let dir = tempfile::Builder::new()
            .prefix("edgebuild-verify-")
            .tempdir()
            .map_err(io_err(Path::new("temporary directory")))?;
        Ok(Scratch { dir, keep })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn finish(self) {
        if self.keep {
            let path = self.dir.keep();
            eprintln!("kept the rebuilt workspace in {}", path.display());
        }
    }
}

/// Deletes every lock file under `root/pipelines`, so that a build there starts from scratch.
pub fn remove_locks(root: &Path) -> Result<(), VerifyError> {
    let dir = root.join(PIPELINES_DIR);
    for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
        let path = entry.map_err(io_err(&dir))?.path();
        if path.extension().is_some_and(|e| e == "lock") {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Copies the workspace's source files to `dest`: what git tracks or would track (without git,
/// every file), but never edgebuild's own directories (the cache, `.edgebuild/`), `.git/`, or
/// the declared outputs of stages.
pub fn copy_workspace(root: &Path, dest: &Path, ops: &OpRegistry) -> Result<(), VerifyError> {
    // Declared outputs are skipped when the pipelines load; when they do not, the build of the
    // copy reports why.
    let outputs: BTreeSet<String> = Workspace::load(root, ops)
        .map(|ws| {
            ws.stages
                .iter()
                .flat_map(|s| s.outputs.iter().map(|p| p.path.clone()))
                .collect()
        })
        .unwrap_or_default();
    let skipped = |rel: &str| {
        std::iter::once(rel)
            .chain(edgebuild_engine::spec::ancestors(rel))
            .any(|p| {
                outputs.contains(p)
                    || (p != PIPELINES_DIR && edgebuild_engine::spec::RESERVED.contains(&p))
            })
    };
    let files = match Repository::find(root) {
        Ok(repo) => repo.working_files(root)?,
        Err(GitError::NotARepository(_)) => all_files(root, &skipped)?,
        Err(e) => return Err(e.into()),
    };
    for rel in files.iter().filter(|rel| !skipped(rel)) {
        let from = root.join(rel);
        let to = dest.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&from) else {
            continue; // deleted in the working tree
        };
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&from).map_err(io_err(&from))?;
            std::os::unix::fs::symlink(target, &to).map_err(io_err(&to))?;
        } else if meta.is_file() {
            std::fs::copy(&from, &to).map_err(io_err(&from))?;
        }
    }
    Ok(())
}

/// Every file under `root` outside the `skipped` paths, relative to `root`.
fn all_files(root: &Path, skipped: &dyn Fn(&str) -> bool) -> Result<Vec<String>, VerifyError> {
    let mut files = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let rel = e.path().strip_prefix(root).unwrap_or(e.path());
            rel.as_os_str().is_empty() || !skipped(&rel.to_string_lossy())
        });
    for entry in walker {
        let entry = entry.map_err(|e| VerifyError::Io {
            path: root.display().to_string(),
            source: e.into(),
        })?;
        if !entry.file_type().is_dir() {
            let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
            files.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(files)
}

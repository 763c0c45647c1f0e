//! The one guard for every path edgebuild deletes or writes on a stage's or a user's behalf
//! (SPEC.md, "Path guard"): a stage's outputs before they are moved aside, restored or
//! collected, and the files of CI reports. It resolves symlinks along the path (and a symlink
//! at its end) and refuses anything that then lies in, or contains, `pipelines/`, `.git/`,
//! `.edgebuild/` (the workspace lock, the stat and parse caches), the cache directory, or an
//! output of another stage. The load-time checks of [`crate::spec`] catch the same problems in
//! the pipeline files; the guard catches what the disk became since (a symlink a stage made).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::layout::{PIPELINES_DIR, STATE_DIR};
use crate::spec::ancestors;
use crate::stage::Stage;

/// Symlinks followed at most while resolving one path.
const MAX_LINKS: u32 = 40;

pub struct PathGuard {
    canonical_root: PathBuf,
    /// Resolved paths that belong to edgebuild or git, with what they are.
    protected: Vec<(PathBuf, String)>,
    /// Declared outputs (workspace-relative) → the stage that declares them.
    outputs: BTreeMap<String, String>,
}

impl PathGuard {
    /// The guard of the workspace at `root`, with its cache at `cache_dir` and these stages.
    pub fn new(root: &Path, cache_dir: &Path, stages: &[Stage]) -> PathGuard {
        let canonical_root = resolve(root);
        let mut protected = vec![
            (
                canonical_root.join(PIPELINES_DIR),
                "pipelines/ (pipeline and lock files)".to_string(),
            ),
            (canonical_root.join(".git"), ".git/".to_string()),
            (
                canonical_root.join(STATE_DIR),
                ".edgebuild/ (the workspace lock, the stat cache and the parse cache)".to_string(),
            ),
            (
                canonical_root.join(crate::layout::CACHE_DIR),
                "cache/".to_string(),
            ),
        ];
        let cache = resolve(cache_dir);
        if !protected.iter().any(|(p, _)| *p == cache) {
            protected.push((cache.clone(), format!("the cache {}", cache.display())));
        }
        let outputs = stages
            .iter()
            .flat_map(|s| s.outputs.iter().map(|o| (o.path.clone(), s.id.clone())))
            .collect();
        PathGuard {
            canonical_root,
            protected,
            outputs,
        }
    }

    /// Checks an output `rel` (workspace-relative) of `stage` before edgebuild deletes, moves,
    /// restores or collects it. `Err` says why not.
    pub fn output(&self, rel: &str, stage: &str) -> Result<(), String> {
        let resolved = resolve(&self.canonical_root.join(rel));
        let Ok(inside) = resolved.strip_prefix(&self.canonical_root) else {
            return Err(format!(
                "resolves to {}, outside the workspace",
                resolved.display()
            ));
        };
        self.check(&resolved, Some((inside, stage)))
    }

    /// Checks a file edgebuild writes for the user (a CI report), as given on the command line.
    /// It may lie outside the workspace, but never where [`PathGuard::output`] refuses a path, nor
    /// on a stage's output.
    pub fn file(&self, path: &Path) -> Result<(), String> {
        let resolved = resolve(path);
        match resolved.strip_prefix(&self.canonical_root) {
            Ok(inside) => self.check(&resolved, Some((inside, ""))),
            Err(_) => self.check(&resolved, None),
        }
    }

    fn check(&self, resolved: &Path, inside: Option<(&Path, &str)>) -> Result<(), String> {
        if resolved == self.canonical_root || self.canonical_root.starts_with(resolved) {
            return Err("is the workspace itself or contains it".into());
        }
        for (dir, what) in &self.protected {
            if resolved.starts_with(dir) {
                return Err(format!("lies in {what}, which belongs to edgebuild or git"));
            }
            if dir.starts_with(resolved) {
                return Err(format!(
                    "contains {what}, which belongs to edgebuild or git"
                ));
            }
        }
        let Some((rel, stage)) = inside else {
            return Ok(());
        };
        let Some(rel) = rel.to_str().map(|r| r.to_string()) else {
            return Err("is not UTF-8".into());
        };
        let top = rel.split('/').next().unwrap_or_default();
        if crate::layout::RESERVED.contains(&top) {
            return Err(format!("lies in {top}/, which belongs to edgebuild or git"));
        }
        // Another stage's output: the same path, one inside it, or one it contains.
        let (low, high) = (format!("{rel}/"), format!("{rel}0"));
        let clash = std::iter::once(rel.as_str())
            .chain(ancestors(&rel))
            .find_map(|a| self.outputs.get_key_value(a))
            .into_iter()
            .chain(self.outputs.range::<str, _>((
                std::ops::Bound::Included(low.as_str()),
                std::ops::Bound::Excluded(high.as_str()),
            )))
            .find(|(_, owner)| owner.as_str() != stage);
        match clash {
            Some((path, owner)) => Err(format!(
                "resolves to {rel}, which overlaps output {path} of {owner}"
            )),
            None => Ok(()),
        }
    }
}

/// `path` (absolute) with every symlink resolved, the last component included, for as much of
/// it as exists; the rest is appended as written.
pub fn resolve(path: &Path) -> PathBuf {
    resolve_within(path, 0)
}

fn resolve_within(path: &Path, links: u32) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return path.to_path_buf();
    };
    let joined = resolve_within(parent, links).join(name);
    // A dangling symlink: where it points is where a write through it lands.
    match std::fs::read_link(&joined) {
        Ok(target) if links < MAX_LINKS => {
            let target = joined.parent().map_or(target.clone(), |p| p.join(&target));
            resolve_within(&target, links + 1)
        }
        _ => joined,
    }
}

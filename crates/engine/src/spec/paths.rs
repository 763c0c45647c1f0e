//! Workspace paths: normalizing a declared path, refusing one that leaves the workspace (through
//! `..`, an absolute path or a symlink) or enters a directory that belongs to edgebuild or git,
//! and the path relations (ancestors, containment) that edges and overlap checks are made of.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// The proper ancestors of a workspace path: `a/b/c` → `a/b`, `a`.
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut rest = path;
    std::iter::from_fn(move || {
        let (parent, _) = rest.rsplit_once('/')?;
        rest = parent;
        Some(parent)
    })
}

/// Entries of a path-keyed map that lie strictly inside `dir`.
pub fn paths_below<'m, 'k, V>(
    map: &'m BTreeMap<&'k str, V>,
    dir: &str,
) -> impl Iterator<Item = (&'m &'k str, &'m V)> {
    // Paths under `dir/` sort between `dir/` and `dir0` ('0' follows '/').
    let (low, high) = (format!("{dir}/"), format!("{dir}0"));
    map.range::<str, _>((
        std::ops::Bound::Included(low.as_str()),
        std::ops::Bound::Excluded(high.as_str()),
    ))
    .collect::<Vec<_>>()
    .into_iter()
}

/// Whether one workspace path is the other or lies inside it.
pub fn paths_overlap(a: &str, b: &str) -> bool {
    let inside = |outer: &str, inner: &str| {
        inner.len() > outer.len()
            && inner.starts_with(outer)
            && inner.as_bytes()[outer.len()] == b'/'
    };
    a == b || inside(a, b) || inside(b, a)
}

/// Normalizes a workspace-relative path, rejecting anything that leaves the workspace:
/// absolute paths, `..`, and symlinks whose target lies outside `root`.
pub fn normalize_path(root: &Path, raw: &str) -> Result<String, &'static str> {
    PathChecker::new(root).check(raw)
}

/// Checks many paths of one workspace, remembering the directories and files already found safe,
/// so each distinct path costs about one `lstat`.
pub struct PathChecker {
    root: PathBuf,
    canonical_root: PathBuf,
    safe_paths: std::cell::RefCell<std::collections::HashSet<String>>,
}

impl PathChecker {
    pub fn new(root: &Path) -> PathChecker {
        PathChecker {
            root: root.to_path_buf(),
            canonical_root: std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf()),
            safe_paths: Default::default(),
        }
    }

    pub fn check(&self, raw: &str) -> Result<String, &'static str> {
        if raw.is_empty() {
            return Err("is empty");
        }
        let mut parts: Vec<&str> = Vec::new();
        for component in Path::new(raw).components() {
            match component {
                Component::Normal(part) => parts.push(part.to_str().ok_or("is not UTF-8")?),
                Component::CurDir => {}
                Component::ParentDir => return Err("uses `..`"),
                Component::RootDir | Component::Prefix(_) => return Err("is absolute"),
            }
        }
        if parts.is_empty() {
            return Err("names the workspace root itself");
        }
        let normalized = parts.join("/");
        if self.safe_paths.borrow().contains(&normalized) {
            return Ok(normalized); // an input of one stage is often another's output
        }
        // Follow symlinks along the existing prefix of the path.
        let mut prefix_len = 0;
        for (i, part) in parts.iter().enumerate() {
            prefix_len += part.len() + usize::from(i > 0);
            let prefix = &normalized[..prefix_len];
            if self.safe_paths.borrow().contains(prefix) {
                continue;
            }
            let full = self.root.join(prefix);
            let Ok(meta) = std::fs::symlink_metadata(&full) else {
                break;
            };
            if meta.file_type().is_symlink() {
                match std::fs::canonicalize(&full) {
                    // A symlink into edgebuild's or git's directories would let a stage's
                    // output reach them (SPEC.md, "Pipeline files").
                    Ok(real) if real.starts_with(&self.canonical_root) => {
                        let top = real
                            .strip_prefix(&self.canonical_root)
                            .ok()
                            .and_then(|rel| rel.components().next())
                            .and_then(|c| c.as_os_str().to_str());
                        match top {
                            None => return Err("goes through a symlink to the workspace root"),
                            Some(top) if crate::layout::RESERVED.contains(&top) => {
                                return Err(
                                    "goes through a symlink into a directory that belongs to edgebuild (pipelines/, cache/, .edgebuild/) or git",
                                );
                            }
                            Some(_) => {}
                        }
                    }
                    _ => return Err("goes through a symlink that leaves the workspace"),
                }
            } else if meta.is_dir() || i + 1 == parts.len() {
                self.safe_paths.borrow_mut().insert(prefix.to_string());
            }
        }
        Ok(normalized)
    }
}

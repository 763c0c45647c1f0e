//! The content-addressed cache: blobs by hash and an action cache from stage key to outputs.
//!
//! Layout under the cache directory (SPEC.md, "Cache"):
//! `cas/ab/<sha256>` holds file contents, `ac/ab/<key>.json` maps a stage key to the outputs it
//! produced, `tmp/` holds files being written. Every write goes to `tmp/` and is renamed into
//! place, so a reader never sees half an entry, and an interrupted build leaves at most stray
//! temporary files. Every read is verified: a blob whose content does not match its name is
//! deleted and reported as missing, never used. This module knows nothing of stages or plans.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::files::{remove_path, write_atomic};
use crate::hash::{Digest, PathHash, TreeEntry};

#[derive(Debug, Error, Diagnostic)]
pub enum StoreError {
    #[error("cache I/O error on {path}")]
    #[diagnostic(code(edgebuild::cache_io))]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cache blob {hash} is corrupt or missing")]
    #[diagnostic(code(edgebuild::cache_corrupt))]
    Corrupt { hash: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The outputs a stage produced, keyed by workspace-relative path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionEntry {
    pub key: Digest,
    pub outputs: BTreeMap<String, PathHash>,
    /// For a gate stage: whether it passed. A failed gate is cached too (SPEC.md, "`gate`").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_passed: Option<bool>,
}

impl ActionEntry {
    /// Every blob the entry refers to.
    pub fn blobs(&self) -> impl Iterator<Item = Digest> + '_ {
        self.outputs.values().flat_map(|out| match &out.tree {
            Some(tree) => tree
                .iter()
                .filter(|e| e.is_file())
                .map(|e| e.hash)
                .collect::<Vec<_>>(),
            None => vec![out.hash],
        })
    }
}

/// Reads a blob from the cache at `dir` without opening (or creating) anything there; `None`
/// when it is absent or its content does not match `hash`.
pub fn read_blob(dir: &Path, hash: &Digest) -> Option<Vec<u8>> {
    let hex = hash.hex();
    let bytes = fs::read(dir.join("cas").join(&hex[..2]).join(hex)).ok()?;
    (Digest::of_bytes(&bytes) == *hash).then_some(bytes)
}

/// The local content-addressed store.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        for sub in ["cas", "ac", "tmp"] {
            fs::create_dir_all(dir.join(sub)).map_err(io_err(dir))?;
        }
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn blob_path(&self, hash: &Digest) -> PathBuf {
        let hex = hash.hex();
        self.dir.join("cas").join(&hex[..2]).join(hex)
    }

    fn action_path(&self, key: &Digest) -> PathBuf {
        let hex = key.hex();
        self.dir
            .join("ac")
            .join(&hex[..2])
            .join(format!("{hex}.json"))
    }

    fn temp_file(&self) -> Result<tempfile::NamedTempFile, StoreError> {
        let tmp = self.dir.join("tmp");
        tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(&tmp)
            .map_err(io_err(&tmp))
    }

    pub fn has_blob(&self, hash: &Digest) -> bool {
        self.blob_path(hash).is_file()
    }

    /// Copies `source` into the store under `hash`, verifying the content on the way.
    pub fn put_file(&self, source: &Path, hash: &Digest) -> Result<(), StoreError> {
        if self.has_blob(hash) {
            return Ok(());
        }
        let tmp = self.temp_file()?;
        let actual = copy_hashing(source, tmp.as_file()).map_err(io_err(source))?;
        if actual != *hash {
            return Err(StoreError::Corrupt {
                hash: format!(
                    "{hash} (file {} changed while it was stored)",
                    source.display()
                ),
            });
        }
        self.persist_blob(tmp, hash)
    }

    /// Moves a verified temporary file into place as the blob `hash`.
    fn persist_blob(&self, tmp: tempfile::NamedTempFile, hash: &Digest) -> Result<(), StoreError> {
        let dest = self.blob_path(hash);
        fs::create_dir_all(dest.parent().expect("blob paths have a parent"))
            .map_err(io_err(&dest))?;
        tmp.persist(&dest).map_err(|e| StoreError::Io {
            path: dest.display().to_string(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Stores bytes that must hash to `hash` (a download, say); refuses them otherwise.
    pub fn put_bytes(&self, bytes: &[u8], hash: &Digest) -> Result<(), StoreError> {
        if Digest::of_bytes(bytes) != *hash {
            return Err(StoreError::Corrupt { hash: hash.hex() });
        }
        if self.has_blob(hash) {
            return Ok(());
        }
        let mut tmp = self.temp_file()?;
        tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
        self.persist_blob(tmp, hash)
    }

    /// The bytes of a blob, verified; `None` when it is absent or corrupt.
    pub fn blob_bytes(&self, hash: &Digest) -> Option<Vec<u8>> {
        read_blob(&self.dir, hash)
    }

    /// The size of a blob in the store.
    pub fn blob_size(&self, hash: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(hash)).ok().map(|m| m.len())
    }

    /// Writes the blob `hash` to `dest` (atomically), verifying it. A corrupt blob is deleted.
    pub fn materialize_file(
        &self,
        hash: &Digest,
        dest: &Path,
        executable: bool,
    ) -> Result<(), StoreError> {
        let blob = self.blob_path(hash);
        let parent = dest.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        let tmp = tempfile::Builder::new()
            .prefix(".edgebuild-tmp-")
            .tempfile_in(parent)
            .map_err(io_err(parent))?;
        let actual = match copy_hashing(&blob, tmp.as_file()) {
            Ok(actual) => actual,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Corrupt { hash: hash.hex() });
            }
            Err(e) => return Err(io_err(&blob)(e)),
        };
        if actual != *hash {
            let _ = fs::remove_file(&blob);
            return Err(StoreError::Corrupt { hash: hash.hex() });
        }
        let mode = if executable { 0o755 } else { 0o644 };
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode)).map_err(io_err(dest))?;
        tmp.persist(dest).map_err(|e| StoreError::Io {
            path: dest.display().to_string(),
            source: e.error,
        })?;
        Ok(())
    }

    /// Materializes a file or directory output at `dest`.
    pub fn materialize(&self, output: &PathHash, dest: &Path) -> Result<(), StoreError> {
        match &output.tree {
            None => self.materialize_file(&output.hash, dest, output.executable),
            Some(tree) => {
                crate::hash::check_tree(tree).map_err(|why| StoreError::Corrupt {
                    hash: format!("{} ({why})", output.hash),
                })?;
                if dest.exists() {
                    remove_path(dest).map_err(io_err(dest))?;
                }
                fs::create_dir_all(dest).map_err(io_err(dest))?;
                for entry in tree {
                    let path = dest.join(&entry.path);
                    if entry.dir {
                        fs::create_dir_all(&path).map_err(io_err(&path))?;
                    } else if let Some(target) = &entry.link {
                        std::os::unix::fs::symlink(target, &path).map_err(io_err(&path))?;
                    } else {
                        self.materialize_file(&entry.hash, &path, entry.executable)?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Stores every file of an output found at `source`.
    pub fn put_output(&self, output: &PathHash, source: &Path) -> Result<(), StoreError> {
        match &output.tree {
            None => self.put_file(source, &output.hash),
            Some(tree) => tree.iter().filter(|e| e.is_file()).try_for_each(
                |TreeEntry { path, hash, .. }| self.put_file(&source.join(path), hash),
            ),
        }
    }

    /// The action entry for `key`, if present, readable and complete (all blobs present).
    pub fn get_action(&self, key: &Digest) -> Option<ActionEntry> {
        let bytes = fs::read(self.action_path(key)).ok()?;
        let entry: ActionEntry = serde_json::from_slice(&bytes).ok()?;
        (entry.key == *key && entry.blobs().all(|b| self.has_blob(&b))).then_some(entry)
    }

    /// Records an action entry. Its blobs must already be stored.
    pub fn put_action(&self, entry: &ActionEntry) -> Result<(), StoreError> {
        let path = self.action_path(&entry.key);
        let bytes = serde_json::to_vec_pretty(entry).expect("action entries serialize");
        write_atomic(&path, &bytes).map_err(io_err(&path))
    }

    /// Deletes every action entry not in `keep_actions` and every blob they do not refer to.
    /// Returns (entries removed, blobs removed, bytes freed).
    pub fn gc(&self, keep_actions: &BTreeSet<Digest>) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let mut keep_blobs = BTreeSet::new();
        for path in files_under(&self.dir.join("ac")) {
            let key = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(Digest::parse);
            let entry = key
                .filter(|k| keep_actions.contains(k))
                .and_then(|k| self.get_action(&k));
            match entry {
                Some(entry) => keep_blobs.extend(entry.blobs()),
                None => {
                    report.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    report.actions += 1;
                }
            }
        }
        for path in files_under(&self.dir.join("cas")) {
            let hash = path
                .file_name()
                .and_then(|s| s.to_str())
                .and_then(Digest::parse);
            if hash.is_none_or(|h| !keep_blobs.contains(&h)) {
                report.bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&path).map_err(io_err(&path))?;
                report.blobs += 1;
            }
        }
        // Temporary files of a build that died; a recent one may belong to a running build.
        for path in files_under(&self.dir.join("tmp")) {
            let meta = fs::metadata(&path);
            let stale = meta
                .as_ref()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > std::time::Duration::from_secs(3600));
            if stale {
                report.bytes += meta.map(|m| m.len()).unwrap_or(0);
                let _ = fs::remove_file(&path);
            }
        }
        Ok(report)
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    pub actions: usize,
    pub blobs: usize,
    pub bytes: u64,
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}

/// Copies `source` into `dest`, returning the SHA-256 of what was copied.
fn copy_hashing(source: &Path, mut dest: &File) -> io::Result<Digest> {
    let mut reader = File::open(source)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        dest.write_all(&buf[..n])?;
    }
    Ok(Digest(hasher.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::hash_file;

    #[test]
    fn corrupt_blob_is_never_materialized() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("cache")).unwrap();
        let src = dir.path().join("a.txt");
        fs::write(&src, b"hello").unwrap();
        let (hash, _) = hash_file(&src).unwrap();
        store.put_file(&src, &hash).unwrap();
        fs::write(store.blob_path(&hash), b"jello").unwrap();
        let dest = dir.path().join("out.txt");
        assert!(matches!(
            store.materialize_file(&hash, &dest, false),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(!dest.exists(), "nothing written for a corrupt blob");
        assert!(!store.has_blob(&hash), "the corrupt blob is dropped");
    }

    #[test]
    fn action_entry_with_missing_blob_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let entry = ActionEntry {
            key: Digest::of_bytes(b"key"),
            outputs: BTreeMap::from([(
                "out/x".to_string(),
                PathHash {
                    hash: Digest::of_bytes(b"x"),
                    size: 1,
                    executable: false,
                    tree: None,
                },
            )]),
            gate_passed: None,
        };
        store.put_action(&entry).unwrap();
        assert_eq!(store.get_action(&entry.key), None);
    }
}

//! Large versioned inputs outside git (SPEC.md, "Versioned inputs outside git"): `edgebuild add PATH` stores a file in the
//! cache (and the remote, when uploading) and writes a small pointer file `PATH.pointer` that is
//! committed instead; `edgebuild pull` brings the pointed files back, verified by hash.
//!
//! The seed's weights "stored as artifacts rather than passed around in chat": the pointer pins
//! the exact bytes, so a commit names its weights as precisely as its code.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::hash::{Digest, hash_file};
use crate::remote_cache::RemoteCache;
use crate::store::Store;

/// The suffix of pointer files.
pub use crate::layout::POINTER_SUFFIX as SUFFIX;

/// A pointer file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pointer {
    pub pointer_version: u32,
    /// The file's name, beside the pointer.
    pub file: String,
    pub sha256: Digest,
    pub size: u64,
}

impl Pointer {
    pub fn read(path: &Path) -> Result<Pointer> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |why: String| {
            Error::usage(
                format!("{} is not a pointer file: {why}", path.display()),
                Some("restore it from git, or `edgebuild add` the file again".into()),
            )
        };
        let pointer: Pointer = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        // The file lies beside its pointer: a name, never a path.
        let expected = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(SUFFIX));
        if expected != Some(pointer.file.as_str()) {
            return Err(bad(format!(
                "it names `{}`, not the file beside it",
                pointer.file
            )));
        }
        Ok(pointer)
    }
}

/// The pointer file of `path`.
pub fn pointer_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(SUFFIX);
    PathBuf::from(name)
}

/// `edgebuild add PATH`: stores the file, writes its pointer and keeps the file out of git.
/// Returns the pointer.
pub fn add(
    root: &Path,
    rel: &str,
    store: &Store,
    remote: Option<&dyn RemoteCache>,
) -> Result<Pointer> {
    let full = root.join(rel);
    let meta = std::fs::metadata(&full).map_err(|e| Error::io(&full, e))?;
    if !meta.is_file() {
        return Err(Error::usage(
            format!("{rel} is not a file"),
            Some(
                "add files one by one; a directory of weights is a tar or safetensors file".into(),
            ),
        ));
    }
    let (hash, size) = hash_file(&full).map_err(|e| Error::io(&full, e))?;
    store.put_file(&full, &hash)?;
    if let Some(remote) = remote.filter(|r| r.uploads()) {
        // Without --remote-required an outage costs a warning: the pointer is still written, and
        // `cache push` or another `add` uploads later.
        if let Err(e) = remote.upload_blob(store, &hash)
            && remote.required()
        {
            return Err(e.into());
        }
    }
    let pointer = Pointer {
        pointer_version: 1,
        file: Path::new(rel)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: hash,
        size,
    };
    let mut bytes = serde_json::to_vec_pretty(&pointer).expect("pointers serialize");
    bytes.push(b'\n');
    crate::files::write_atomic(&pointer_path(&full), &bytes)
        .map_err(|e| Error::io(pointer_path(&full), e))?;
    ignore_in_git(root, rel)?;
    Ok(pointer)
}

/// Appends `/REL` to the workspace's `.gitignore` unless a line says so already.
fn ignore_in_git(root: &Path, rel: &str) -> Result<()> {
    let path = root.join(".gitignore");
    let line = format!("/{rel}");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    if old.lines().any(|l| l.trim() == line) {
        return Ok(());
    }
    let mut new = old;
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(&line);
    new.push('\n');
    crate::files::write_atomic(&path, new.as_bytes()).map_err(|e| Error::io(&path, e))
}

/// Every pointer file under `root`, outside edgebuild's and git's directories, sorted.
pub fn find(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .into_iter()
        .filter_entry(|e| {
            let rel = e.path().strip_prefix(root).unwrap_or(e.path());
            !crate::layout::RESERVED
                .iter()
                .any(|r| rel == Path::new(r) && *r != crate::layout::PIPELINES_DIR)
        })
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file() && e.file_name().to_string_lossy().ends_with(SUFFIX))
        .map(|e| e.into_path())
        .collect();
    found.sort();
    found
}

/// Where a pulled file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The file was already there with the right content.
    InPlace,
    /// Copied from the user's working tree, where it had the right content.
    WorkingTree,
    LocalCache,
    Remote,
}

/// Brings the file of one pointer into place, verified: from the local cache, else the remote.
/// A file that is there with other content is a local change: kept unless `force`.
pub fn pull_one(
    pointer_file: &Path,
    store: Option<&Store>,
    remote: Option<&dyn RemoteCache>,
    force: bool,
) -> Result<Source> {
    let pointer = Pointer::read(pointer_file)?;
    let dest = pointer_file.with_file_name(&pointer.file);
    match hash_file(&dest) {
        Ok((hash, _)) if hash == pointer.sha256 => return Ok(Source::InPlace),
        Ok(_) if !force => {
            return Err(Error::usage(
                format!("{} differs from its pointer: a local change", dest.display()),
                Some("`edgebuild add` it to record the new version, or `edgebuild pull --force` to discard the change".into()),
            ));
        }
        _ => {}
    }
    if let Some(store) = store
        && store.has_blob(&pointer.sha256)
        && store
            .materialize_file(&pointer.sha256, &dest, false)
            .is_ok()
    {
        return Ok(Source::LocalCache);
    }
    let fetched = match remote.map(|r| (r, r.fetch_blob(&pointer.sha256))) {
        Some((_, Ok(found))) => found,
        Some((r, Err(e))) if r.required() => return Err(e.into()),
        _ => None,
    };
    let Some(bytes) = fetched else {
        return Err(Error::usage(
            format!(
                "{} (sha256 {}) is in neither the local cache nor the remote",
                dest.display(),
                pointer.sha256.short()
            ),
            Some("ask whoever added it to `edgebuild add` it with --remote-upload, or configure the remote it was uploaded to".into()),
        ));
    };
    crate::files::write_atomic(&dest, &bytes).map_err(|e| Error::io(&dest, e))?;
    if let Some(store) = store {
        let _ = store.put_bytes(&bytes, &pointer.sha256);
    }
    Ok(Source::Remote)
}

/// Brings every pointed file of the workspace copy at `copy` into place without the user's
/// cache (SPEC.md, "`edgebuild verify-reproducible`"): from the user's working tree at `working` when the file there
/// has the pointed hash, else from the remote. Returns each file with where it came from.
pub fn fill_copy(
    copy: &Path,
    working: &Path,
    remote: Option<&dyn RemoteCache>,
) -> Result<Vec<(String, Source)>> {
    let mut filled = Vec::new();
    for pointer_file in find(copy) {
        let pointer = Pointer::read(&pointer_file)?;
        let rel = pointer_file
            .strip_prefix(copy)
            .unwrap_or(&pointer_file)
            .with_file_name(&pointer.file);
        let dest = copy.join(&rel);
        let theirs = working.join(&rel);
        let source = if hash_file(&theirs).is_ok_and(|(hash, _)| hash == pointer.sha256) {
            let bytes = std::fs::read(&theirs).map_err(|e| Error::io(&theirs, e))?;
            crate::files::write_atomic(&dest, &bytes).map_err(|e| Error::io(&dest, e))?;
            Source::WorkingTree
        } else {
            pull_one(&pointer_file, None, remote, false)?
        };
        filled.push((rel.to_string_lossy().into_owned(), source));
    }
    Ok(filled)
}

//! The parse cache (`.edgebuild/spec-cache.json`; SPEC.md, "Pipeline files"): each pipeline
//! file's parsed stages, keyed by the file's size, mtime, ctime and inode and by the edgebuild
//! and op versions that parsed it. Paths are checked against the disk again on every load.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::paths::PathChecker;
use super::{Pipeline, SpecError};
use crate::op::OpRegistry;
use crate::stage::Stage;

/// Stages parsed from one file, and the problems found in it.
pub type ParsedStages = (Vec<Stage>, Vec<SpecError>);

/// Identity of a pipeline file on disk, for the parse cache.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct FileStamp {
    size: usize,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata, size: usize) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            size,
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            inode: meta.ino(),
        }
    }

    /// Modified so recently that another write in the same timestamp tick could go unseen.
    pub fn racy(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        now - self.mtime_ns.max(self.ctime_ns) < 2_000_000_000
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct CachedPipeline {
    pub stamp: FileStamp,
    pub description: Option<String>,
    pub stages: Vec<Stage>,
}

/// Parsed pipeline files by path (`.edgebuild/spec-cache.json`), valid for one edgebuild build.
#[derive(Debug, serde::Serialize, Deserialize)]
pub struct ParseCache {
    pub version: String,
    pub files: BTreeMap<String, CachedPipeline>,
}

impl ParseCache {
    /// What a cache entry is valid for: this edgebuild, its compiler and its ops' versions.
    fn current_version(ops: &OpRegistry) -> String {
        format!(
            "{} {} {}",
            env!("CARGO_PKG_VERSION"),
            env!("EDGEBUILD_RUSTC_VERSION"),
            ops.identity()
        )
    }

    /// An empty cache for this edgebuild and these ops.
    pub fn new(ops: &OpRegistry) -> ParseCache {
        ParseCache {
            version: ParseCache::current_version(ops),
            files: BTreeMap::new(),
        }
    }

    /// The cache at `path`, or an empty one when it is missing, unreadable or stale.
    pub fn load(path: &Path, ops: &OpRegistry) -> ParseCache {
        std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<ParseCache>(&bytes).ok())
            .filter(|cache| cache.version == Self::current_version(ops))
            .unwrap_or_else(|| ParseCache::new(ops))
    }
}

/// Cached stages of one file, with their paths checked against today's disk.
pub fn recheck(
    paths: &PathChecker,
    pipeline: &Pipeline,
    index: usize,
    cached: Vec<Stage>,
) -> ParsedStages {
    let mut errors = Vec::new();
    let stages = cached
        .into_iter()
        .map(|mut stage| {
            stage.pipeline = index;
            for (port, what) in stage
                .inputs
                .iter()
                .map(|p| (p, "input"))
                .chain(stage.outputs.iter().map(|p| (p, "output")))
            {
                if let Err(why) = paths.check(&port.path) {
                    errors.push(pipeline.source.invalid(
                        port.span,
                        format!("{what} path `{}` of {} {why}", port.path, stage.id),
                        "not a workspace path a stage may use",
                        Some("paths are relative to the workspace root and stay inside it".into()),
                    ));
                }
            }
            stage
        })
        .collect();
    (stages, errors)
}

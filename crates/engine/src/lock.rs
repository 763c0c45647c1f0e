//! Lock files: `pipelines/NAME.lock`, the committed record of what the last build produced.
//!
//! One lock per pipeline file (SPEC.md, "Lock files"): `lock_version`, the toolchain that wrote it, and per
//! stage its key, the key's ingredients, its outputs with hashes, sizes and a volatile flag, and a
//! gate's verdict. Stable order (sorted maps), no timestamps, no absolute paths, so two builds of
//! the same inputs write byte-identical locks. Written atomically, and only when it changed.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::hash::Digest;
use crate::key::Ingredients;

pub const LOCK_VERSION: u32 = 1;

/// The toolchain that wrote a lock: recorded for drift reports, not part of stage keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toolchain {
    pub edgebuild: String,
    pub rustc: String,
    pub target: String,
    /// Target features enabled at compile time, comma-separated and sorted.
    #[serde(default)]
    pub target_features: String,
}

impl Toolchain {
    pub fn current() -> Toolchain {
        Toolchain {
            edgebuild: env!("CARGO_PKG_VERSION").to_string(),
            rustc: env!("EDGEBUILD_RUSTC_VERSION").to_string(),
            target: env!("EDGEBUILD_TARGET").to_string(),
            target_features: env!("EDGEBUILD_TARGET_FEATURES").to_string(),
        }
    }

    /// What differs between this toolchain and `other`, as `field: old → new` lines.
    pub fn drift(&self, now: &Toolchain) -> Vec<String> {
        let fields = [
            ("edgebuild", &self.edgebuild, &now.edgebuild),
            ("rustc", &self.rustc, &now.rustc),
            ("target", &self.target, &now.target),
            (
                "target features",
                &self.target_features,
                &now.target_features,
            ),
        ];
        fields
            .into_iter()
            .filter(|(_, old, new)| old != new)
            .map(|(name, old, new)| {
                let old = if old.is_empty() {
                    "(not recorded)"
                } else {
                    old
                };
                format!("{name}: {old} → {new}")
            })
            .collect()
    }
}

/// An output as the lock records it. A volatile output's hash and size are not recorded: they
/// change with every run, and a file meant to be committed must not (SPEC.md, "Lock files").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedOutput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub volatile: bool,
}

impl LockedOutput {
    /// The record of an output with this hash and size.
    pub fn new(hash: Digest, size: u64, volatile: bool) -> LockedOutput {
        LockedOutput {
            hash: (!volatile).then_some(hash),
            size: (!volatile).then_some(size),
            volatile,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateVerdict {
    Passed,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedStage {
    pub key: Digest,
    pub ingredients: Ingredients,
    pub outputs: BTreeMap<String, LockedOutput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateVerdict>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockFile {
    pub lock_version: u32,
    pub pipeline: String,
    pub toolchain: Toolchain,
    pub stages: BTreeMap<String, LockedStage>,
}

impl LockFile {
    pub fn new(pipeline: &str) -> LockFile {
        LockFile {
            lock_version: LOCK_VERSION,
            pipeline: pipeline.to_string(),
            toolchain: Toolchain::current(),
            stages: BTreeMap::new(),
        }
    }

    /// Reads a lock; a missing file is `Ok(None)`, an unreadable one an error message.
    pub fn read(path: &Path) -> Result<Option<LockFile>, String> {
        match std::fs::read(path) {
            Ok(bytes) => Self::parse(&bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<LockFile, String> {
        let lock: LockFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if lock.lock_version != LOCK_VERSION {
            return Err(format!("unsupported lock_version {}", lock.lock_version));
        }
        if let Some((stage, path)) = lock.stages.iter().find_map(|(name, s)| {
            s.outputs
                .iter()
                .find(|(_, o)| o.hash.is_none() && !o.volatile)
                .map(|(path, _)| (name, path))
        }) {
            return Err(format!("stage {stage}: output {path} has no hash"));
        }
        Ok(lock)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("locks serialize");
        bytes.push(b'\n');
        bytes
    }

    /// Writes the lock atomically unless the file already holds exactly these bytes.
    pub fn write_if_changed(&self, path: &Path) -> std::io::Result<bool> {
        let bytes = self.to_bytes();
        if std::fs::read(path).is_ok_and(|old| old == bytes) {
            return Ok(false);
        }
        crate::files::write_atomic(path, &bytes)?;
        Ok(true)
    }
}

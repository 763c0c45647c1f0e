//! `edgebuild verify-release MANIFEST`: the check a device makes before installing (SPEC.md,
//! "Signed releases").

use std::path::PathBuf;

use super::Session;
use crate::error::{Error, ExitCode, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    pub manifest: PathBuf,
    /// The public key (PATH.pub from `edgebuild keygen`).
    #[arg(long, value_name = "PATH")]
    pub key: PathBuf,
    /// The release the device runs now.
    #[arg(long, value_name = "N")]
    pub current: Option<u64>,
    /// A directory with the artifacts by name (default: the local cache, by hash).
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
}

pub fn run(args: Args, session: &Session) -> Result<ExitCode> {
    let Args {
        manifest,
        key,
        current,
        artifacts,
    } = args;
    let verifying = edgebuild_fleet::release::read_verifying_key(&key)?;
    let bytes = std::fs::read(&manifest).map_err(|e| {
        edgebuild_fleet::release::ReleaseError::Rejected(format!("{}: {e}", manifest.display()))
    })?;
    let signed: edgebuild_fleet::release::SignedManifest =
        serde_json::from_slice(&bytes).map_err(|e| {
            edgebuild_fleet::release::ReleaseError::Rejected(format!("not a manifest: {e}"))
        })?;
    let cache = match &artifacts {
        Some(_) => None,
        None => Some(
            session
                .cache_dir
                .clone()
                .map(|d| session.start_dir().map(|s| s.join(d)))
                .unwrap_or_else(|| {
                    edgebuild_engine::spec::Workspace::find_root(&session.start_dir()?)
                        .map(|r| r.join("cache"))
                        .map_err(Error::from)
                })?,
        ),
    };
    let lookup = |a: &edgebuild_fleet::release::Artifact| match (&artifacts, &cache) {
        (Some(dir), _) => std::fs::read(dir.join(&a.name)).ok(),
        (None, Some(cache)) => std::fs::read(
            cache
                .join("cas")
                .join(&a.sha256.hex()[..2])
                .join(a.sha256.hex()),
        )
        .ok(),
        _ => None,
    };
    signed.verify(&verifying, current, &lookup)?;
    println!(
        "ok: release {} ({} {}) signed by {}, {} artifact(s) verified",
        signed.manifest.release,
        signed.manifest.pipeline,
        signed.manifest.version,
        signed.key_id,
        signed.manifest.artifacts.len()
    );
    Ok(ExitCode::Ok)
}

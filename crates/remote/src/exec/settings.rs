//! The remote executor's settings and figures: how to reach the server (`edgebuild.yaml`'s
//! `remote_exec`, the environment, the command line), the limits it works within, and what it
//! did in a build (for `build --json`).

use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};

/// The environment variable naming the executor (`grpc://HOST:PORT` or `grpcs://`).
pub const EXEC_ENV: &str = "EDGEBUILD_REMOTE_EXEC";

/// A bearer token sent as `authorization` (never printed).
pub const TOKEN_ENV: &str = "EDGEBUILD_REMOTE_EXEC_TOKEN";

/// Other headers: `EDGEBUILD_REMOTE_EXEC_HEADER_X_API_KEY=...` sends `x-api-key`.
pub const HEADER_ENV_PREFIX: &str = "EDGEBUILD_REMOTE_EXEC_HEADER_";

/// The batch limit when the server sets none.
pub(crate) const DEFAULT_BATCH_LIMIT: usize = 4_000_000;

/// ByteStream chunk size.
pub(crate) const CHUNK: usize = 1 << 20;

/// The `PATH` remote commands get: a worker's, not this machine's, so keys match everywhere.
pub const REMOTE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The largest message edgebuild reads; batches stay well below it.
pub(crate) const MAX_MESSAGE: usize = 64 << 20;

/// Attempts of one call before giving up.
pub(crate) const ATTEMPTS: u32 = 4;

/// How to reach the executor.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteExecSettings {
    pub url: Option<String>,
    #[serde(default)]
    pub instance: String,
    /// Remote actions (uploads, executions) in flight at once.
    #[serde(default)]
    pub jobs: Option<usize>,
    /// Run a stage locally when the executor fails it for reasons of its own.
    #[serde(default)]
    pub fallback: bool,
}

/// What the remote executor did in a build, for `build --json`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RemoteStats {
    /// `Execute` calls (including retries).
    pub executions: u64,
    /// Stages served by the remote action cache without executing.
    pub action_cache_hits: u64,
    pub blobs_uploaded: u64,
    pub bytes_uploaded: u64,
    /// Blobs uploaded with ByteStream (above the batch limit).
    pub bytestream_uploads: u64,
    pub blobs_downloaded: u64,
    /// Stages run locally after the executor failed them (`--remote-exec-fallback`).
    pub fallbacks: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) executions: AtomicU64,
    pub(crate) action_cache_hits: AtomicU64,
    pub(crate) blobs_uploaded: AtomicU64,
    pub(crate) bytes_uploaded: AtomicU64,
    pub(crate) bytestream_uploads: AtomicU64,
    pub(crate) blobs_downloaded: AtomicU64,
    pub(crate) fallbacks: AtomicU64,
}

//! What the engine asks of a shared cache, as a trait the remote layer implements: whether it
//! holds an entry, fetching an entry with its blobs into the local store (verified), uploading
//! one, and single blobs for pointer files. The engine never knows how or where the remote
//! stores anything (SPEC.md, "Remote cache").

use std::fmt;

use miette::Diagnostic;

use crate::hash::Digest;
use crate::store::{ActionEntry, Store};

/// A remote cache failure, with the remote layer's own diagnostic inside.
pub struct RemoteCacheError {
    /// The remote could not be reached (as opposed to being misconfigured).
    pub unavailable: bool,
    pub diagnostic: Box<dyn Diagnostic + Send + Sync + 'static>,
}

impl fmt::Debug for RemoteCacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.diagnostic, f)
    }
}

impl fmt::Display for RemoteCacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.diagnostic, f)
    }
}

impl std::error::Error for RemoteCacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.diagnostic.source()
    }
}

impl Diagnostic for RemoteCacheError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.diagnostic.code()
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.diagnostic.help()
    }
    fn severity(&self) -> Option<miette::Severity> {
        self.diagnostic.severity()
    }
    fn url<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.diagnostic.url()
    }
}

/// A shared cache of action entries and blobs.
pub trait RemoteCache: Send + Sync {
    /// Whether the remote holds an action entry for `key` (its blobs are not checked).
    fn has_action(&self, key: &Digest) -> Result<bool, RemoteCacheError>;
    /// Downloads the entry for `key` and the blobs the local store lacks, verifying each, and
    /// records the entry locally. `Ok(None)` on a miss or a rejected entry: the stage runs.
    fn fetch_action(
        &self,
        store: &Store,
        key: &Digest,
        stage: &str,
        declared_outputs: &[&str],
    ) -> Result<Option<ActionEntry>, RemoteCacheError>;
    /// Uploads an entry of the local store and its blobs.
    fn upload_action(&self, store: &Store, entry: &ActionEntry) -> Result<(), RemoteCacheError>;
    /// One blob by hash, verified; `Ok(None)` when the remote lacks it.
    fn fetch_blob(&self, blob: &Digest) -> Result<Option<Vec<u8>>, RemoteCacheError>;
    /// Uploads one blob of the local store.
    fn upload_blob(&self, store: &Store, blob: &Digest) -> Result<(), RemoteCacheError>;
    /// Whether this build writes to the remote.
    fn uploads(&self) -> bool;
    /// Whether an unavailable remote fails the build (exit 6) instead of costing a warning.
    fn required(&self) -> bool;
}

impl RemoteCacheError {
    /// Whether this error must fail the stage: the remote is required and unavailable.
    pub fn fails(&self, remote: &dyn RemoteCache) -> bool {
        self.unavailable && remote.required()
    }
}

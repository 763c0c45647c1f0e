//! One file per subcommand. Each holds the subcommand's arguments (`Args`) and its `run`, which
//! returns an [`ExitCode`] or an [`crate::Error`] that maps to one. [`Session`] is what every
//! command shares: the global flags and the op registry, and opening the workspace with its
//! remote cache.

pub mod add;
pub mod approve;
pub mod build;
pub mod cache;
pub mod compare;
pub mod dag;
pub mod device;
pub mod doctor;
pub mod fleet;
pub mod gc;
pub mod infer;
pub mod init;
pub mod keygen;
pub mod plan;
pub mod profile_host;
pub mod pull;
pub mod release;
pub mod rollout;
pub mod run_op;
pub mod runbook;
pub mod verify_release;
pub mod verify_reproducible;

use std::path::PathBuf;
use std::sync::Arc;

use edgebuild_engine::context::{Access, Context, Options};
use edgebuild_engine::op::OpRegistry;
use edgebuild_engine::store::Store;
use edgebuild_remote::Remote;
use edgebuild_remote::config::RemoteOverrides;

use crate::error::{Error, Result};

/// The global flags of a command line and the ops stages may name.
pub struct Session {
    /// `-C DIR`: a directory inside the workspace.
    pub dir: Option<PathBuf>,
    /// `--cache-dir DIR`.
    pub cache_dir: Option<PathBuf>,
    /// The remote cache flags.
    pub remote: RemoteOverrides,
    /// The built-in ops.
    pub ops: Arc<OpRegistry>,
}

impl Session {
    /// Where to find the workspace and its cache.
    pub fn options(&self) -> Options {
        Options {
            dir: self.dir.clone(),
            cache_dir: self.cache_dir.clone(),
        }
    }

    /// The directory the command starts from: `-C DIR` or the current directory.
    pub fn start_dir(&self) -> Result<PathBuf> {
        match &self.dir {
            Some(dir) => Ok(dir.clone()),
            None => std::env::current_dir().map_err(|e| Error::io(".", e)),
        }
    }

    /// Opens the workspace with the remote cache its settings name.
    pub fn open(&self, access: Access) -> Result<Context> {
        Ok(self.open_with_remote(access)?.0)
    }

    /// Opens the workspace, and returns the remote cache too, for its figures.
    pub fn open_with_remote(&self, access: Access) -> Result<(Context, Option<Arc<Remote>>)> {
        let mut ctx = Context::open(&self.options(), access, self.ops.clone())?;
        let remote = edgebuild_remote::config::open_remote(ctx.root(), &self.remote)?;
        ctx.remote = remote
            .clone()
            .map(|r| r as Arc<dyn edgebuild_engine::remote_cache::RemoteCache>);
        Ok((ctx, remote))
    }

    /// The workspace root, its local cache, its remote and the workspace lock, without loading
    /// the pipelines.
    pub fn open_caches(&self) -> Result<(PathBuf, Store, Option<Arc<Remote>>, std::fs::File)> {
        let (root, store, lock) = edgebuild_engine::context::open_caches(&self.options())?;
        let remote = edgebuild_remote::config::open_remote(&root, &self.remote)?;
        Ok((root, store, remote, lock))
    }
}

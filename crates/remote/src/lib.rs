//! edgebuild's remote layer: the shared cache ([`cache`], any object store: HTTP with WebDAV
//! PUT, S3, GCS, Azure, a directory) and the Remote Execution API v2 executor ([`exec`]), with
//! the workspace settings that configure both ([`config`]). It implements the engine's
//! [`edgebuild_engine::remote_cache::RemoteCache`] and [`edgebuild_engine::exec::Executor`]
//! traits; the engine never calls into it.

// Errors carry their diagnostics; they are rare, so their size is fine.
#![allow(clippy::result_large_err)]

pub mod cache;
pub mod config;
pub mod exec;

pub use cache::{Remote, RemoteError, RemoteSettings};

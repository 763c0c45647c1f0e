//! edgebuild's build engine: pipelines in, built and cached stages out, with a lock that says
//! what was built from what.
//!
//! Pipelines are YAML files ([`spec`]) of [`stage`]s that form one graph ([`graph`]). Each stage
//! has a content-hashed key ([`key`], [`hash`]); [`plan`] decides what is stale and why,
//! [`exec`] runs stale stages in parallel and restores the rest from the content-addressed
//! [`store`] (or a [`remote_cache`] the caller provides), and [`lock`] records what was built.
//! [`context`] is the loaded workspace that plan and exec read.
//!
//! The engine knows nothing of what stages compute: a `cmd` stage is a shell command, an `op`
//! stage names an [`op::Op`] from the [`op::OpRegistry`] the caller passes in, and a manual
//! stage ([`manual`]) waits for a sign-off. Its dependencies are serde, petgraph, rayon, miette
//! and sha2; no ML, RPC or HTTP crate links into it (SPEC.md, "Source layout").

// Errors carry the pipeline source for their diagnostics; they are rare, so their size is fine.
#![allow(clippy::result_large_err)]

pub mod context;
pub mod error;
pub mod exec;
pub mod exit;
pub mod files;
pub mod graph;
pub mod guard;
pub mod hash;
pub mod key;
pub mod layout;
pub mod lock;
pub mod manual;
pub mod op;
pub mod plan;
pub mod pointer;
pub mod remote_cache;
pub mod sandbox;
pub mod spec;
pub mod stage;
pub mod store;
pub mod subst;

pub use error::{Error, Result};
pub use exit::ExitCode;

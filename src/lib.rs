//! edgebuild: reproducible, gated pipelines that ship ML models to edge devices.
//!
//! Pipelines are YAML files ([`spec`]) whose stages form one graph ([`graph`]). Each stage has a
//! content-hashed key ([`key`], [`hash`]); [`plan`] decides what is stale and why, [`exec`] runs
//! stale stages in parallel and restores the rest from the content-addressed [`store`], and
//! [`lock`] records what was built. Built-in ML stages are [`ops`]; the engine knows nothing of
//! what they compute. [`repro`] proves that a commit rebuilds to the artifacts its lock
//! records, reading commits through [`git`].

// Errors carry the pipeline source for their diagnostics; they are rare, so their size is fine.
#![allow(clippy::result_large_err)]

pub mod approve;
pub mod ci;
pub mod cli;
pub mod compare;
pub mod context;
pub mod data;
pub mod doctor;
pub mod error;
pub mod exec;
pub mod fleet;
pub mod git;
pub mod graph;
pub mod hash;
pub mod init;
pub mod key;
pub mod lock;
pub mod model;
pub mod ops;
pub mod plan;
pub mod pointer;
pub mod profile;
pub mod release;
pub mod remote;
pub mod remote_exec;
pub mod repro;
pub mod runbook;
pub mod sandbox;
pub mod spec;
pub mod store;
pub mod subst;

pub use error::{Error, ExitCode, Result};

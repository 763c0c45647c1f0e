//! edgebuild's ML layer: models ([`model`]: architecture files, safetensors and GGUF weights,
//! candle forward passes), data sets ([`data`]), device profiles ([`profile`]) and every built-in
//! op ([`ops`]) behind the engine's `Op` trait. The engine never calls into it: the CLI hands
//! [`ops::registry`] to the engine.

// Errors carry their diagnostics; they are rare, so their size is fine.
#![allow(clippy::result_large_err)]

pub mod board;
pub mod data;
pub mod int8;
pub mod model;
pub mod onnx;
pub mod ops;
pub mod profile;
pub mod toolchain;

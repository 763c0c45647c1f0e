//! The built-in ops, one file each, behind the engine's [`Op`] trait: `import`, `dataset`, `imatrix`, `quantize`,
//! `evaluate`, `report`, `measure`, `gate`, `package` and `prune` (SPEC.md, "Built-in ops").
//! [`registry`] is the value the CLI passes to the engine.

pub mod calibrate;
pub mod dataset;
pub mod evaluate;
pub mod firmware;
pub mod gate;
pub mod imatrix;
pub mod import;
pub mod int8;
pub mod measure;
pub mod package;
pub mod prune;
pub mod quantize;
pub mod report;
pub mod runtime;

use std::collections::BTreeMap;

use edgebuild_engine::op::{Op, OpError, OpRegistry};

/// Every built-in op, in a registry for the engine.
pub fn registry() -> OpRegistry {
    let ops: Vec<Box<dyn Op>> = vec![
        Box::new(calibrate::Calibrate),
        Box::new(dataset::Dataset),
        Box::new(evaluate::Evaluate),
        Box::new(firmware::Firmware),
        Box::new(gate::Gate),
        Box::new(imatrix::Imatrix),
        Box::new(import::Import),
        Box::new(int8::Int8),
        Box::new(measure::Measure),
        Box::new(package::Package),
        Box::new(prune::Prune),
        Box::new(quantize::Quantize),
        Box::new(report::Report),
        Box::new(runtime::Runtime),
    ];
    OpRegistry::new(ops)
}

/// A candle error as an op failure.
pub fn candle(e: candle_core::Error) -> OpError {
    OpError::Failed(candle_message(e))
}

/// A candle error's message without the backtrace candle may have captured into it.
pub fn candle_message(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => inner.to_string(),
        e => e.to_string(),
    }
}

/// What changes the numbers of ops that run candle kernels (SPEC.md, "Built-in ops"): the CPU
/// kernel level detected at run time and the environment variables candle reads.
pub fn candle_fingerprint() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let level = if candle_core::utils::with_avx() {
        "avx"
    } else if candle_core::utils::with_neon() {
        "neon"
    } else if candle_core::utils::with_simd128() {
        "simd128"
    } else {
        "scalar"
    };
    out.insert(
        "candle.kernels".into(),
        format!(
            "{level}{}",
            if candle_core::utils::with_f16c() {
                "+f16c"
            } else {
                ""
            }
        ),
    );
    for var in ["CANDLE_DEQUANTIZE_ALL", "CANDLE_DEQUANTIZE_ALL_F16"] {
        out.insert(format!("env.{var}"), std::env::var(var).unwrap_or_default());
    }
    out.insert("candle.version".into(), "0.11.1".into());
    out
}

//! Records the compiler that built edgebuild, for the toolchain section of lock files.
use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=EDGEBUILD_RUSTC_VERSION={version}");
    println!(
        "cargo:rustc-env=EDGEBUILD_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
    // Compile-time target features (SSE, AVX, FMA, NEON...) change float results of generated code.
    let mut features: Vec<String> = std::env::var("CARGO_CFG_TARGET_FEATURE")
        .unwrap_or_default()
        .split(',')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect();
    features.sort();
    println!(
        "cargo:rustc-env=EDGEBUILD_TARGET_FEATURES={}",
        features.join(",")
    );
    println!("cargo:rerun-if-changed=build.rs");
}

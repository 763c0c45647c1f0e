//! `edgebuild profile-host`: measures this host's peak f32 compute and memory bandwidth, the two
//! numbers of a roofline device profile (SPEC.md, "`report`").
//!
//! Compute: one thread running many independent multiply-add chains that the compiler keeps in
//! vector registers. Bandwidth: copying a buffer far larger than any cache. Each is the best of a
//! few repetitions. The output is a profile entry to commit in a profiles file.

use std::hint::black_box;
use std::time::Instant;

/// Independent accumulators: enough to hide FMA latency across vector lanes.
const LANES: usize = 64;

/// Best single-thread f32 multiply-add throughput, in GFLOP/s (2 FLOPs per multiply-add).
pub fn peak_gflops() -> f64 {
    let iterations = 20_000_000usize / LANES * 16;
    let mut best = 0f64;
    for _ in 0..5 {
        let mut acc = [0f32; LANES];
        let (a, b) = (black_box(0.999_999f32), black_box(1e-7f32));
        let start = Instant::now();
        for _ in 0..iterations {
            for v in acc.iter_mut() {
                *v = *v * a + b;
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        black_box(acc);
        best = best.max(2.0 * (iterations * LANES) as f64 / seconds / 1e9);
    }
    best
}

/// Best copy bandwidth over a 256 MiB buffer, in GB/s (bytes read plus bytes written).
pub fn bandwidth_gbps() -> f64 {
    let len = 256 << 20;
    let src = vec![1u8; len];
    let mut dst = vec![0u8; len];
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        dst.copy_from_slice(black_box(&src));
        let seconds = start.elapsed().as_secs_f64();
        black_box(&dst);
        best = best.max(2.0 * len as f64 / seconds / 1e9);
    }
    best
}

/// The host's CPU model, from /proc/cpuinfo where there is one.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// A profile entry in the profiles file's YAML format.
pub fn host_profile_yaml(name: &str) -> String {
    let gflops = peak_gflops();
    let gbps = bandwidth_gbps();
    let cpu = cpu_model();
    format!(
        "  {name}:\n    description: \"this host: {cpu} (one thread)\"\n    peak_gflops: {gflops:.2}\n    bandwidth_gbps: {gbps:.2}\n    storage_bytes: 1073741824\n    ram_bytes: 1073741824\n    sources:\n      peak_gflops: \"measured by `edgebuild profile-host`: {LANES} independent f32 multiply-add chains on one thread, best of 5\"\n      bandwidth_gbps: \"measured by `edgebuild profile-host`: copy of a 256 MiB buffer, read + written bytes, best of 5\"\n      storage_bytes: \"nominal: 1 GiB budget for a host-class target\"\n      ram_bytes: \"nominal: 1 GiB budget for a host-class target\"\n"
    )
}

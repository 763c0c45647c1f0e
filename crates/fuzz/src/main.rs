//! edgebuild's fuzz harness (SPEC.md, "Fuzzing"): every parser of untrusted bytes, driven on the
//! stable toolchain by random mutation of a committed corpus (`fuzz/corpus/TARGET/`).
//!
//! For each target, inputs are made from the corpus by bit flips, byte insertions, deletions,
//! duplications, splices and tokens of a per-target dictionary (`&a`, `*a`, `${`, `..`, a u64 that
//! does not fit, ...), and handed to the parser. The properties checked on every input:
//! - no panic (a panic is caught, the input saved and the run fails);
//! - no single allocation above [`BOUND_BASE`] + [`BOUND_FACTOR`] × the input's length (the
//!   global allocator checks every request; a breach saves the input and aborts);
//! - a refusal is an exit-2 diagnostic: engine and fleet errors map to exit code 2 through the
//!   CLI's one mapping and render through miette (bounded in size), ML errors are messages the
//!   ops report as bad input (exit 2), fleet HTTP bodies get a 4xx, never a 5xx.
//!
//! `edgebuild-fuzz [--seconds N] [--seed S] [TARGET...]` runs each target for N seconds;
//! `edgebuild-fuzz --replay FILE TARGET` runs one saved input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use miette::Diagnostic;

// ---------------------------------------------------------------------------------------------
// The allocation bound

/// The bound on one allocation while a target runs: `BOUND_BASE + BOUND_FACTOR × input length`.
pub const BOUND_BASE: usize = 64 << 20;
pub const BOUND_FACTOR: usize = 16;
/// The largest input the mutator makes.
const MAX_INPUT: usize = 1 << 20;

static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static INPUT_PTR: AtomicUsize = AtomicUsize::new(0);
static INPUT_LEN: AtomicUsize = AtomicUsize::new(0);
static CRASH_FD: AtomicI32 = AtomicI32::new(-1);

struct Bounded;

fn check_size(size: usize) {
    let limit = LIMIT.load(Ordering::Relaxed);
    if limit != usize::MAX {
        LARGEST.fetch_max(size, Ordering::Relaxed);
        if size > limit {
            breach(size);
        }
    }
}

/// An allocation above the bound: the input goes to the crash file and the process aborts.
/// Nothing here allocates.
fn breach(size: usize) -> ! {
    let mut digits = [0u8; 24];
    let mut at = digits.len();
    let mut n = size;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let head = b"\nedgebuild-fuzz: FAIL: an allocation of ";
    let tail = b" bytes exceeds the bound; the input is in the crash file named above\n";
    // SAFETY: writes of buffers this function owns, and of the current input, which the driver
    // keeps alive while the target runs.
    unsafe {
        libc::write(2, head.as_ptr().cast(), head.len());
        libc::write(2, digits[at..].as_ptr().cast(), digits.len() - at);
        libc::write(2, tail.as_ptr().cast(), tail.len());
        let fd = CRASH_FD.load(Ordering::Relaxed);
        if fd >= 0 {
            libc::write(
                fd,
                INPUT_PTR.load(Ordering::Relaxed) as *const libc::c_void,
                INPUT_LEN.load(Ordering::Relaxed),
            );
            libc::fsync(fd);
        }
        libc::abort();
    }
}

// SAFETY: every call is forwarded to the system allocator; the check only reads atomics.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check_size(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check_size(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check_size(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Bounded = Bounded;

// ---------------------------------------------------------------------------------------------
// Targets

/// What the targets share: a scratch workspace, the ops, a fleet server in-process.
struct Env {
    dir: tempfile::TempDir,
    ops: edgebuild_engine::op::OpRegistry,
    digits: edgebuild_ml::model::Architecture,
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
    admin: String,
    device: String,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir_all(dir.path().join("ws/pipelines")).unwrap();
        std::fs::create_dir_all(dir.path().join("ws/data")).unwrap();
        std::fs::write(dir.path().join("ws/data/src.txt"), "source\n").unwrap();
        let digits =
            edgebuild_ml::model::Architecture::load(&repo().join("examples/digits/mlp.yaml"))
                .expect("the digits architecture loads");
        let store =
            edgebuild_fleet::store::SqliteStore::open(&dir.path().join("fleet.sqlite"), true)
                .expect("a fleet database");
        use edgebuild_fleet::store::FleetStore;
        let admin = store.init_admin().expect("an admin token");
        let device = store
            .enroll(&["fuzz-device".to_string()], 0)
            .expect("a device")
            .remove(0)
            .1;
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        let app = edgebuild_fleet::server::app(std::sync::Arc::new(store), key);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        Env {
            dir,
            ops: edgebuild_ml::ops::registry(),
            digits,
            runtime,
            app,
            admin,
            device,
        }
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).expect("scratch files are writable");
        path
    }

    fn ws(&self) -> PathBuf {
        self.dir.path().join("ws")
    }
}

/// What a target returns when a property other than "no panic" fails.
type Verdict = Result<(), String>;

/// An engine or fleet error must be bad input (exit 2) and render, in bounded size.
fn diagnostic(error: impl Into<edgebuild::Error>) -> Verdict {
    let error: edgebuild::Error = error.into();
    let code = error.exit_code();
    let mut text = String::new();
    miette::GraphicalReportHandler::new()
        .render_report(&mut text, &error as &dyn Diagnostic)
        .map_err(|e| format!("the diagnostic does not render: {e}"))?;
    if code != edgebuild::ExitCode::BadInput {
        return Err(format!("exit code {code:?}, not 2, for: {text}"));
    }
    if text.len() > (1 << 20) {
        return Err(format!("a diagnostic of {} bytes", text.len()));
    }
    Ok(())
}

/// An ML parser's refusal: a message, reported by the ops as bad input (exit 2).
fn message(result: Result<(), String>) -> Verdict {
    match result {
        Err(m) if m.trim().is_empty() => Err("an empty error message".into()),
        _ => Ok(()),
    }
}

fn pipeline(env: &Env, bytes: &[u8]) -> Verdict {
    let ws = env.ws();
    std::fs::write(ws.join("pipelines/p.yaml"), bytes).unwrap();
    let _ = std::fs::remove_dir_all(ws.join(".edgebuild"));
    match edgebuild_engine::spec::Workspace::load(&ws, &env.ops) {
        Err(e) => diagnostic(e),
        Ok(loaded) => match edgebuild_engine::graph::Graph::build(&loaded) {
            Err(e) => diagnostic(e),
            Ok(_) => Ok(()),
        },
    }
}

fn architecture(env: &Env, bytes: &[u8]) -> Verdict {
    let path = env.file("arch.yaml", bytes);
    message((|| {
        let arch = edgebuild_ml::model::Architecture::load(&path)?;
        arch.layer_infos()?;
        arch.tensor_specs()?;
        arch.classes()?;
        Ok(())
    })())
}

fn dataset(env: &Env, bytes: &[u8], ext: &str) -> Verdict {
    let path = env.file(&format!("data.{ext}"), bytes);
    for shape in [&[64][..], &[2], &[1, 8, 8]] {
        message(edgebuild_ml::data::Dataset::load(&path, shape).map(drop))?;
    }
    Ok(())
}

fn safetensors(env: &Env, bytes: &[u8]) -> Verdict {
    let path = env.file("w.safetensors", bytes);
    message(edgebuild_ml::model::FloatWeights::load(&path, &env.digits).map(drop))
}

fn gguf(_: &Env, bytes: &[u8]) -> Verdict {
    message(
        edgebuild_ml::model::QuantModel::read(std::io::Cursor::new(bytes), "fuzz.gguf").map(drop),
    )
}

fn onnx(env: &Env, bytes: &[u8]) -> Verdict {
    let path = env.file("model.onnx", bytes);
    message(edgebuild_ml::onnx::import(&path, &Default::default()).map(drop))
}

fn lock(_: &Env, bytes: &[u8]) -> Verdict {
    message(edgebuild_engine::lock::LockFile::parse(bytes).map(drop))
}

fn stat_cache(env: &Env, bytes: &[u8]) -> Verdict {
    let path = env.file("stat-cache.json", bytes);
    let cache = edgebuild_engine::hash::StatCache::load(&path);
    // A lookup through whatever was loaded: the file's hash must be today's.
    let hashed = cache
        .path(&env.ws(), "data/src.txt")
        .map_err(|e| e.to_string())?;
    if hashed.hash != edgebuild_engine::hash::Digest::of_bytes(b"source\n") {
        return Err("a stat cache entry was trusted over the file".into());
    }
    Ok(())
}

fn parse_cache(env: &Env, bytes: &[u8]) -> Verdict {
    use edgebuild_engine::spec::parse_cache::{ParseCache, recheck};
    let path = env.file("spec-cache.json", bytes);
    let cache = ParseCache::load(&path, &env.ops);
    let checker = edgebuild_engine::spec::PathChecker::new(&env.ws());
    for (file, cached) in cache.files {
        let pipeline = edgebuild_engine::spec::Pipeline {
            name: "p".into(),
            file: file.clone(),
            description: cached.description.clone(),
            source: edgebuild_engine::spec::Source {
                name: file,
                text: String::from_utf8_lossy(bytes).into_owned(),
            },
        };
        let (_, errors) = recheck(&checker, &pipeline, 0, cached.stages);
        for e in errors {
            diagnostic(e)?;
        }
    }
    Ok(())
}

fn policy(_: &Env, bytes: &[u8]) -> Verdict {
    let text = String::from_utf8_lossy(bytes);
    match edgebuild_fleet::policy::parse("policy.yaml", &text) {
        Err(e) => diagnostic(e),
        Ok(_) => Ok(()),
    }
}

/// The first byte picks a route, the rest is the body.
fn fleet_body(env: &Env, bytes: &[u8]) -> Verdict {
    use tower::ServiceExt;
    let (route, body) = bytes.split_first().unwrap_or((&0, &[]));
    let (method, uri, token) = match route % 6 {
        0 => ("POST", "/v1/device/reports".to_string(), &env.device),
        1 => ("POST", "/v1/device/telemetry".to_string(), &env.device),
        2 => ("POST", "/v1/admin/devices".to_string(), &env.admin),
        3 => ("POST", "/v1/admin/rollouts".to_string(), &env.admin),
        4 => ("POST", "/v1/admin/rollouts/1/pause".to_string(), &env.admin),
        _ => (
            "PUT",
            format!(
                "/v1/admin/artifacts/{}",
                edgebuild_engine::hash::Digest::of_bytes(body).hex()
            ),
            &env.admin,
        ),
    };
    let request = axum::http::Request::builder()
        .method(method)
        .uri(&uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_vec()))
        .map_err(|e| e.to_string())?;
    let response = env
        .runtime
        .block_on(env.app.clone().oneshot(request))
        .map_err(|e| e.to_string())?;
    if response.status().is_server_error() {
        let body = env
            .runtime
            .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
            .unwrap_or_default();
        return Err(format!(
            "{method} {uri}: a server error for a bad body: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(())
}

struct Target {
    name: &'static str,
    run: fn(&Env, &[u8]) -> Verdict,
    /// Tokens the mutator inserts.
    dict: &'static [&'static [u8]],
}

const YAML: &[&[u8]] = &[
    b"&a ",
    b"*a",
    b"<<: *a",
    b"{",
    b"}",
    b"[",
    b"]",
    b": ",
    b"- ",
    b"\n",
    b"\n  ",
    b"..",
    b"../",
    b"/",
    b"${",
    b"${params.",
    b"${inputs.0}",
    b"$${",
    b"'",
    b"\"",
    b"#",
    b"!!binary ",
    b"!!str ",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"1e999",
    b".nan",
    b".inf",
    b"-1",
    b"0",
    b"stages:",
    b"op: ",
    b"cmd: ",
    b"inputs: ",
    b"outputs: ",
    b"params: ",
    b"after: ",
    b"volatile: true",
    b"version: 1",
    b"---\n",
    b"pipelines/",
    b".git/",
    b"cache/",
    b"\t",
    b"\xff",
    b"\xc3",
];
const JSON: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\"",
    b"null",
    b"true",
    b"1e999",
    b"-1",
    b"18446744073709551616",
    b"\"hash\"",
    b"\"key\"",
    b"\"volatile\": true",
    b"\\u0000",
    b"0000000000000000000000000000000000000000000000000000000000000000",
];
const BINARY: &[&[u8]] = &[
    b"\x00",
    b"\xff",
    b"\xff\xff\xff\xff",
    b"\xff\xff\xff\xff\xff\xff\xff\xff",
    b"\x00\x00\x00\x80",
    b"\xff\xff\xff\x7f",
    b"\x01\x00\x00\x00\x00\x00\x00\x00",
    b"PK\x03\x04",
    b"\x93NUMPY",
    b"GGUF",
    b"'shape': (",
    b"'descr': '<f4'",
    b"NaN",
    b"\x00\x00\xc0\x7f",
];
const CSV: &[&[u8]] = &[
    b",",
    b"\n",
    b"y",
    b"label",
    b"nan",
    b"inf",
    b"-1",
    b"1.5",
    b"1e999",
    b"\r\n",
    b" ",
    b"\"",
    b"18446744073709551616",
];

const TARGETS: &[Target] = &[
    Target {
        name: "pipeline",
        run: pipeline,
        dict: YAML,
    },
    Target {
        name: "architecture",
        run: architecture,
        dict: YAML,
    },
    Target {
        name: "graph",
        run: architecture,
        dict: YAML,
    },
    Target {
        name: "npz",
        run: |e, b| dataset(e, b, "npz"),
        dict: BINARY,
    },
    Target {
        name: "csv",
        run: |e, b| dataset(e, b, "csv"),
        dict: CSV,
    },
    Target {
        name: "safetensors",
        run: safetensors,
        dict: BINARY,
    },
    Target {
        name: "gguf",
        run: gguf,
        dict: BINARY,
    },
    Target {
        name: "onnx",
        run: onnx,
        dict: BINARY,
    },
    Target {
        name: "lock",
        run: lock,
        dict: JSON,
    },
    Target {
        name: "stat-cache",
        run: stat_cache,
        dict: JSON,
    },
    Target {
        name: "parse-cache",
        run: parse_cache,
        dict: JSON,
    },
    Target {
        name: "policy",
        run: policy,
        dict: YAML,
    },
    Target {
        name: "fleet-body",
        run: fleet_body,
        dict: JSON,
    },
];

// ---------------------------------------------------------------------------------------------
// The mutator

/// xorshift64*: small, fast and reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], dict: &[&[u8]]) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    if rng.below(16) == 0 {
        return data;
    }
    for _ in 0..1 + rng.below(8) {
        let len = data.len();
        let at = rng.below(len + 1);
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            2 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let n = 1 + rng.below((len - at).clamp(1, 64));
                data.drain(at..(at + n).min(len));
            }
            4 if len > 0 => {
                // Repeat a short range: long lines, deep nesting, many entries.
                let from = rng.below(len);
                let n = 1 + rng.below((len - from).min(32));
                let chunk = data[from..from + n].to_vec();
                let most = if rng.below(8) == 0 { 4096 } else { 8 };
                let times = 1 + rng.below(most);
                let repeated: Vec<u8> = chunk.iter().copied().cycle().take(n * times).collect();
                data.splice(at..at, repeated);
            }
            5 => {
                let token = dict[rng.below(dict.len())];
                data.splice(at..at, token.iter().copied());
            }
            6 if len > 0 => {
                let token = dict[rng.below(dict.len())];
                let end = (at + token.len()).min(len);
                data.splice(at..end, token.iter().copied());
            }
            7 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                let end = from + rng.below(other.len() - from + 1);
                data.splice(at..at, other[from..end].iter().copied());
            }
            8 if len > 0 => data.truncate(at),
            _ => {
                // An interesting integer, little-endian, over whatever is there.
                let value: u64 = match rng.below(6) {
                    0 => u64::MAX,
                    1 => u32::MAX as u64,
                    2 => 0,
                    3 => 0x7fff_ffff,
                    4 => 1 << 40,
                    _ => rng.next(),
                };
                let width = [1, 2, 4, 8][rng.below(4)];
                let end = (at + width).min(len);
                data.splice(at..end, value.to_le_bytes()[..width].iter().copied());
            }
        }
    }
    data.truncate(MAX_INPUT);
    data
}

// ---------------------------------------------------------------------------------------------
// The driver

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = repo().join("fuzz/corpus").join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

thread_local! {
    static PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs one input under the bound; `Err` is the property it broke.
fn run_one(env: &Env, target: &Target, input: &[u8]) -> Result<(), String> {
    INPUT_PTR.store(input.as_ptr() as usize, Ordering::Relaxed);
    INPUT_LEN.store(input.len(), Ordering::Relaxed);
    LIMIT.store(
        BOUND_BASE.saturating_add(BOUND_FACTOR.saturating_mul(input.len())),
        Ordering::Relaxed,
    );
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (target.run)(env, input)));
    LIMIT.store(usize::MAX, Ordering::Relaxed);
    match outcome {
        Ok(verdict) => verdict,
        Err(_) => Err(PANIC
            .with(|p| p.borrow_mut().take())
            .unwrap_or_else(|| "a panic".into())),
    }
}

fn failures_dir() -> PathBuf {
    std::env::temp_dir().join("edgebuild-fuzz-failures")
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let mut seconds = 15.0;
    let mut seed: u64 = 1;
    let mut names = Vec::new();
    let mut replay = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds N")
            }
            "--seed" => seed = args.next().and_then(|s| s.parse().ok()).expect("--seed N"),
            "--replay" => replay = Some(PathBuf::from(args.next().expect("--replay FILE"))),
            "--list" => {
                for t in TARGETS {
                    println!("{}", t.name);
                }
                return std::process::ExitCode::SUCCESS;
            }
            name => names.push(name.to_string()),
        }
    }
    for name in &names {
        if !TARGETS.iter().any(|t| t.name == name) {
            eprintln!(
                "unknown target `{name}`; targets: {}",
                TARGETS
                    .iter()
                    .map(|t| t.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return std::process::ExitCode::from(2);
        }
    }
    let verbose = std::env::var_os("EDGEBUILD_FUZZ_VERBOSE").is_some();
    std::panic::set_hook(Box::new(move |info| {
        let message = format!("panic: {info}");
        if verbose {
            eprintln!("{message}");
        }
        PANIC.with(|p| *p.borrow_mut() = Some(message));
    }));
    // Stage ops may read these; a fuzz run must not depend on the caller's environment.
    let env = Env::new();
    if let Some(file) = replay {
        let target = TARGETS
            .iter()
            .find(|t| Some(t.name) == names.first().map(String::as_str))
            .expect("--replay FILE TARGET");
        let input = std::fs::read(&file).expect("the input to replay");
        return match run_one(&env, target, &input) {
            Ok(()) => {
                println!("{}: passes", file.display());
                std::process::ExitCode::SUCCESS
            }
            Err(why) => {
                println!("{}: FAIL: {why}", file.display());
                std::process::ExitCode::FAILURE
            }
        };
    }
    std::fs::create_dir_all(failures_dir()).expect("a directory for failing inputs");
    let mut failed = 0;
    let started = Instant::now();
    for (index, target) in TARGETS.iter().enumerate() {
        if !names.is_empty() && !names.iter().any(|n| n == target.name) {
            continue;
        }
        let seeds = corpus(target.name);
        let crash = failures_dir().join(format!("{}-allocation.bin", target.name));
        let fd = std::fs::File::create(&crash).expect("the crash file");
        CRASH_FD.store(std::os::fd::AsRawFd::as_raw_fd(&fd), Ordering::Relaxed);
        eprintln!("{}: crash file {}", target.name, crash.display());
        let mut rng = Rng(seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        LARGEST.store(0, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let mut runs = 0u64;
        let mut target_failures = 0;
        // Every seed as it is first, then mutations until the time is up.
        let mut pending: Vec<Vec<u8>> = seeds.clone();
        while Instant::now() < deadline {
            let input = pending
                .pop()
                .unwrap_or_else(|| mutate(&mut rng, &seeds, target.dict));
            runs += 1;
            if let Err(why) = run_one(&env, target, &input) {
                target_failures += 1;
                let saved = failures_dir().join(format!("{}-{runs}.bin", target.name));
                let _ = std::fs::write(&saved, &input);
                let why: String = why.chars().take(2000).collect();
                eprintln!(
                    "{}: FAIL: {why}\n  input saved to {} (replay: edgebuild-fuzz --replay {} {})",
                    target.name,
                    saved.display(),
                    saved.display(),
                    target.name
                );
                if target_failures >= 5 {
                    break;
                }
            }
        }
        drop(fd);
        let _ = std::fs::remove_file(&crash);
        failed += target_failures;
        println!(
            "{:12} {:>8} runs in {:>5.1} s, {} seeds, largest allocation {} KiB, {} failure(s)",
            target.name,
            runs,
            seconds,
            seeds.len(),
            LARGEST.load(Ordering::Relaxed) >> 10,
            target_failures
        );
    }
    println!(
        "fuzz: {} failure(s) in {:.0} s (bound per allocation: {} MiB + {} x the input)",
        failed,
        started.elapsed().as_secs_f64(),
        BOUND_BASE >> 20,
        BOUND_FACTOR
    );
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

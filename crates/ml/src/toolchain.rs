//! The C toolchains the `runtime` and `firmware` ops call (SPEC.md, "`runtime`", "`firmware`"):
//! finding a compiler or emulator on `PATH`, its version line (part of the op's fingerprint),
//! running it with a time limit, and the install hint when it is missing. Nothing here knows
//! about models.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Debian packages that provide each tool, for the hint when one is missing.
pub fn install_hint(tool: &str) -> &'static str {
    match tool {
        "arm-none-eabi-gcc" => {
            "install it: `apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi` (Debian/Ubuntu)"
        }
        "qemu-system-arm" => "install it: `apt-get install qemu-system-arm` (Debian/Ubuntu)",
        "cc" => "install a C compiler: `apt-get install gcc` (Debian/Ubuntu)",
        _ => "install it and put it on PATH",
    }
}

/// The first line `TOOL --version` prints, or `None` when the tool cannot be run.
pub fn version_line(tool: &str) -> Option<String> {
    let out = Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

/// The fingerprint entry of a tool: its version line, or `missing`.
pub fn fingerprint(tool: &str) -> String {
    version_line(tool).unwrap_or_else(|| "missing".to_string())
}

/// The SHA-256 of source files an op compiles, names and contents (for its fingerprint: an
/// edit to the C runtime or the board support rebuilds what was built from them).
pub fn sources_digest(files: &[(&str, &str)]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, text) in files {
        for part in [name.as_bytes(), text.as_bytes()] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    hex::encode(h.finalize())
}

/// Why a tool run did not succeed.
#[derive(Debug)]
pub enum RunError {
    /// The tool is not installed (the message has the install hint).
    Missing(String),
    /// It ran past its time limit and was killed.
    Timeout(Duration),
    /// It exited unsuccessfully; its combined output (cut to 4 KiB).
    Failed { code: Option<i32>, output: String },
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Missing(m) => f.write_str(m),
            RunError::Timeout(d) => write!(f, "no result after {} s: stopped", d.as_secs()),
            RunError::Failed { code, output } => {
                match code {
                    Some(c) => write!(f, "exit code {c}")?,
                    None => f.write_str("killed by a signal")?,
                }
                if !output.trim().is_empty() {
                    write!(f, ":\n{}", output.trim_end())?;
                }
                Ok(())
            }
        }
    }
}

/// The most output of a failed tool kept for its message.
const OUTPUT_LIMIT: usize = 4096;

/// Runs `tool args` in `dir` with no input, killing it after `limit`. Its output is read in
/// full (the tools are ours, their output small) and cut for the message.
pub fn run(tool: &str, args: &[String], dir: &Path, limit: Duration) -> Result<String, RunError> {
    let mut child = match Command::new(tool)
        .args(args)
        .current_dir(dir)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RunError::Missing(format!(
                "`{tool}` is not installed; {}",
                install_hint(tool)
            )));
        }
        Err(e) => {
            return Err(RunError::Failed {
                code: None,
                output: format!("cannot start `{tool}`: {e}"),
            });
        }
    };
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(RunError::Timeout(limit));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                return Err(RunError::Failed {
                    code: None,
                    output: e.to_string(),
                });
            }
        }
    };
    let mut text = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    text.push_str(&String::from_utf8_lossy(
        &err_reader.join().unwrap_or_default(),
    ));
    if status.success() {
        Ok(text)
    } else {
        let mut cut = text.len().min(OUTPUT_LIMIT);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        Err(RunError::Failed {
            code: status.code(),
            output: text,
        })
    }
}

/// The warning flags every runtime build uses (SPEC.md, "`runtime`").
pub const STRICT_FLAGS: &[&str] = &["-std=c99", "-Wall", "-Wextra", "-Werror"];

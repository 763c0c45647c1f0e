//! Deployment end to end on loopback: a real `edgebuild fleet serve` (SQLite), operators through
//! `edgebuild rollout`, and `edgebuild device simulate` devices that verify and run the released
//! GGUF. Releases: the digits model, a q5_k variant, and a pruned model whose field confidence
//! is genuinely lower (its looser KL gate let it through).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::{Workspace, digits, stderr, stdout};
use serde_json::Value;

/// All devices at once: for a first release.
const ALL_AT_ONCE: &str = "version: 1
stages:
  - {percent: 100}
abort:
  min_reports: 5
  max_failure_rate: 0.2
  confirm_timeout: 60s
  max_confidence_drop: 0.01
";

/// 10% -> 50% -> 100%, judged once 3 devices reported.
const STAGED: &str = "version: 1
stages:
  - {percent: 10, soak: 300ms}
  - {percent: 50, soak: 300ms}
  - {percent: 100}
abort:
  min_reports: 3
  max_failure_rate: 0.2
  confirm_timeout: 60s
  max_confidence_drop: 0.01
";

/// The running fleet server, killed on drop.
struct Server {
    child: Option<Child>,
    url: String,
    db: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// A fresh database (returning the admin token) and a server on a free port.
    fn start(key: &Path) -> (Server, String) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("fleet.sqlite");
        let out = Command::new(bin())
            .args(["fleet", "init", "--db"])
            .arg(&db)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let token = stdout(&out).trim().to_string();
        assert_eq!(token.len(), 64);
        let mut server = Server {
            child: None,
            url: String::new(),
            db,
            key: key.to_path_buf(),
            _dir: dir,
        };
        server.spawn("127.0.0.1:0");
        (server, token)
    }

    fn spawn(&mut self, listen: &str) {
        let mut child = Command::new(bin())
            .args([
                "fleet", "serve", "--tick", "100ms", "--listen", listen, "--db",
            ])
            .arg(&self.db)
            .arg("--key")
            .arg(&self.key)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.is_empty() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("the server did not start: {err}");
        }
        self.url = line.trim().rsplit(' ').next().unwrap().to_string();
        self.child = Some(child);
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        let listen = self.url.trim_start_matches("http://").to_string();
        self.spawn(&listen);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn bin() -> PathBuf {
    PathBuf::from(assert_cmd::cargo::cargo_bin!("edgebuild"))
}

/// A digits workspace, built and released as 1.0.0, with a key pair and the policies.
struct Setup {
    ws: Workspace,
    private: String,
    public: String,
    _keys: tempfile::TempDir,
}

fn setup() -> Setup {
    let ws = digits();
    let keys = tempfile::tempdir().unwrap();
    let private = keys.path().join("release.key").display().to_string();
    let public = format!("{private}.pub");
    assert_eq!(ws.run(&["keygen", &private]).status.code(), Some(0));
    ws.write("deploy/all.yaml", ALL_AT_ONCE);
    ws.write("deploy/staged.yaml", STAGED);
    let setup = Setup {
        ws,
        private,
        public,
        _keys: keys,
    };
    setup.release("1.0.0");
    setup
}

impl Setup {
    fn release(&self, version: &str) {
        self.ws.build(&[], 0);
        let out = self.ws.run(&[
            "release",
            "digits",
            "--version",
            version,
            "--key",
            &self.private,
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }

    /// The pipeline changed to ship a q5_k model: a good release.
    fn q5_k(&self) {
        let yaml = self
            .ws
            .read("pipelines/digits.yaml")
            .replace("type: q4_k", "type: q5_k");
        self.ws.write("pipelines/digits.yaml", &yaml);
    }

    /// Back to the committed pipeline with q5_k (after `pruned`).
    fn q5_k_only(&self) {
        let original =
            std::fs::read_to_string(Path::new(common::REPO).join("pipelines/digits.yaml")).unwrap();
        self.ws.write(
            "pipelines/digits.yaml",
            &original.replace("type: q4_k", "type: q5_k"),
        );
    }

    /// The pipeline changed to ship a magnitude-pruned model (70% of the weights gone) under a
    /// KL gate loosened to let it through: a genuinely worse model in the field.
    fn pruned(&self) {
        let yaml = self
            .ws
            .read("pipelines/digits.yaml")
            .replacen(
                "stages:\n",
                "stages:\n  prune:\n    op: prune\n    inputs:\n      weights: examples/digits/mlp.safetensors\n      architecture: examples/digits/mlp.yaml\n    outputs: {weights: out/digits/pruned.safetensors}\n    params: {sparsity: 0.7, scope: global}\n\n",
                1,
            )
            .replace(
                "    op: quantize\n    inputs:\n      weights: examples/digits/mlp.safetensors",
                "    op: quantize\n    inputs:\n      weights: out/digits/pruned.safetensors",
            )
            .replace("path: kld.p99, max: 0.5", "path: kld.p99, max: 1.0");
        assert!(
            yaml.contains("pruned.safetensors\n      architecture"),
            "quantize reads the pruned weights"
        );
        self.ws.write("pipelines/digits.yaml", &yaml);
    }

    fn edgebuild(&self, server: &Server, token: &str, args: &[&str]) -> std::process::Output {
        self.ws
            .command()
            .env("EDGEBUILD_FLEET_SERVER", &server.url)
            .env("EDGEBUILD_FLEET_TOKEN", token)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, server: &Server, token: &str, args: &[&str]) -> String {
        let out = self.edgebuild(server, token, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        stdout(&out)
    }

    /// `rollout start digits --release N --policy deploy/POLICY.yaml`.
    fn try_start(&self, server: &Server, token: &str, release: u64, policy: &str) -> Output {
        let release = release.to_string();
        let policy = format!("deploy/{policy}.yaml");
        let args = [
            "rollout",
            "start",
            "digits",
            "--release",
            &release,
            "--policy",
            &policy,
        ];
        self.edgebuild(server, token, &args)
    }

    fn start(&self, server: &Server, token: &str, release: u64, policy: &str) {
        let out = self.try_start(server, token, release, policy);
        assert_eq!(
            out.status.code(),
            Some(0),
            "start {release}: {}",
            stderr(&out)
        );
    }

    fn simulate_command(
        &self,
        server: &Server,
        token: &str,
        devices: usize,
        extra: &[&str],
    ) -> Command {
        let mut cmd = self.ws.command();
        cmd.env("EDGEBUILD_FLEET_SERVER", &server.url)
            .env("EDGEBUILD_FLEET_TOKEN", token)
            .args([
                "device",
                "simulate",
                "--json",
                "--until-settled",
                "--poll",
                "50ms",
            ])
            .args(if extra.contains(&"--timeout") {
                &[][..]
            } else {
                &["--timeout", "120s"][..]
            })
            .args(["--devices", &devices.to_string(), "--key", &self.public])
            .args([
                "--data",
                "examples/digits/heldout.npz",
                "--state",
                "sim.json",
            ])
            .args(extra);
        cmd
    }

    /// Runs the simulated fleet until the newest rollout is over; returns its summary.
    fn simulate(&self, server: &Server, token: &str, devices: usize, extra: &[&str]) -> Value {
        let out = self
            .simulate_command(server, token, devices, extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn status(&self, server: &Server, token: &str, id: u64) -> Value {
        let out = self.ok(
            server,
            token,
            &["rollout", "status", &id.to_string(), "--json"],
        );
        serde_json::from_str(&out).unwrap()
    }

    /// Each simulated device's (release, model hash).
    fn devices(&self) -> Vec<(u64, String)> {
        let state: Value = serde_json::from_str(&self.ws.read("sim.json")).unwrap();
        state["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["release"].as_u64().unwrap_or(0),
                    d["model"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    fn model_of(&self, release: u64) -> String {
        let manifest: Value =
            serde_json::from_str(&self.ws.read(&format!("releases/digits/{release}.json")))
                .unwrap();
        manifest["manifest"]["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"].as_str().unwrap().ends_with(".gguf"))
            .unwrap()["sha256"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// A diagnostic's text with miette's line wrapping undone.
fn flat(text: &str) -> String {
    text.lines()
        .map(|l| l.trim_start_matches([' ', '│']).trim_end())
        .collect::<Vec<_>>()
        .join(" ")
}

fn events(status: &Value) -> Vec<String> {
    status["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["event"].as_str().unwrap().to_string())
        .collect()
}

/// How many reports the server holds: compared with what the devices had acknowledged.
fn server_stats(setup: &Setup, server: &Server, token: &str) -> Value {
    let out = setup.edgebuild(server, token, &["rollout", "status", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    http(server, "GET", "/v1/admin/stats", token).1
}

/// A raw HTTP/1.1 request: (status, JSON body or null).
fn http(server: &Server, method: &str, path: &str, token: &str) -> (u16, Value) {
    let address = server.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[test]
fn a_confidence_drop_aborts_and_rolls_every_device_back() {
    let setup = setup();
    let (server, token) = Server::start(Path::new(&setup.public));
    let devices = 40;

    // Every report the devices saw acknowledged, over every run.
    let mut acknowledged = 0;
    let mut run = |extra: &[&str]| {
        let summary = setup.simulate(&server, &token, devices, extra);
        acknowledged += summary["reports_acknowledged"].as_u64().unwrap();
        summary
    };

    // Release 1 to the whole fleet.
    setup.start(&server, &token, 1, "all");
    let summary = run(&[]);
    assert_eq!(summary["running"]["1"], devices);
    assert_eq!(setup.status(&server, &token, 1)["state"], "completed");

    // Release 2 (q5_k) goes through 10%, 50% and 100%.
    setup.q5_k();
    setup.release("2.0.0");
    setup.start(&server, &token, 2, "staged");
    let summary = run(&[]);
    assert_eq!(summary["running"]["2"], devices);
    let status = setup.status(&server, &token, 2);
    assert_eq!(status["state"], "completed");
    assert_eq!(events(&status), ["start", "advance", "advance", "complete"]);
    let stages = status["stages"].as_array().unwrap();
    let targeted: Vec<u64> = stages
        .iter()
        .map(|s| s["targeted"].as_u64().unwrap())
        .collect();
    assert_eq!(targeted.iter().sum::<u64>(), devices as u64);
    assert!(
        targeted.iter().all(|&t| t > 0),
        "every stage reached devices: {targeted:?}"
    );
    assert!(targeted[0] < 10, "10% of 40: {targeted:?}");
    // q5_k keeps the confidence: measured on the devices, not assumed.
    for s in stages {
        let (before, after) = (
            s["baseline_confidence"].as_f64().unwrap(),
            s["new_confidence"].as_f64().unwrap(),
        );
        assert!((before - after).abs() < 0.005, "{s}");
    }

    // Release 4 (pruned; 3 is the rollback of 2) reports lower confidence in its first cohort.
    setup.pruned();
    setup.release("3.0.0");
    assert_eq!(
        serde_json::from_str::<Value>(&setup.ws.read("releases/digits/5.json")).unwrap()["manifest"]
            ["rollback_to"],
        2
    );
    setup.start(&server, &token, 4, "staged");
    let summary = run(&[]);
    let status = setup.status(&server, &token, 3);
    assert_eq!(status["state"], "rolled_back", "{status:#}");
    assert_eq!(events(&status), ["start", "abort"]);
    let reason = status["audit"][1]["reason"].as_str().unwrap();
    assert!(reason.contains("mean confidence dropped from"), "{reason}");
    assert!(
        reason.contains("devices reached are sent rollback release 5"),
        "{reason}"
    );
    let first = &status["stages"][0];
    let drop =
        first["baseline_confidence"].as_f64().unwrap() - first["new_confidence"].as_f64().unwrap();
    assert!(
        drop > 0.01,
        "the pruned model is less confident on the same devices: {first}"
    );
    assert_eq!(
        status["stages"][1]["targeted"], 0,
        "the abort came before stage 2"
    );
    assert_eq!(status["rollback_confirmed"], status["rolled_back"]);
    assert_eq!(status["rolled_back"], first["targeted"]);

    // Every device runs release 2's model again: the ones reached through rollback release 5.
    let good = setup.model_of(2);
    let reached = first["targeted"].as_u64().unwrap();
    let on_devices = setup.devices();
    assert!(
        on_devices.iter().all(|(_, model)| *model == good),
        "{on_devices:?}"
    );
    assert_eq!(
        on_devices.iter().filter(|(r, _)| *r == 5).count() as u64,
        reached
    );
    assert_eq!(summary["running"]["5"], reached);

    // The text operators read.
    let text = setup.ok(&server, &token, &["rollout", "status", "3"]);
    assert!(
        text.contains("rolled_back at stage 1 of 3; rollback release 5"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "rollback: {reached} device(s) sent release 5, {reached} confirmed it"
        )),
        "{text}"
    );

    // A new release's default rollback would return to the release just rolled back: the
    // server refuses it, and the operator names release 2 instead.
    setup.q5_k_only();
    setup.release("4.0.0");
    let out = setup.try_start(&server, &token, 6, "all");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        flat(&stderr(&out)).contains("returns to release 4, which rollout 3 stopped (rolled_back)"),
        "{}",
        stderr(&out)
    );
    let out = setup.ws.run(&[
        "release",
        "digits",
        "--version",
        "4.0.1",
        "--key",
        &setup.private,
        "--rollback-to",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    setup.start(&server, &token, 8, "all");
    run(&[]);
    assert_eq!(setup.status(&server, &token, 4)["state"], "completed");
    // Rolling back a completed rollout reaches every device.
    setup.ok(
        &server,
        &token,
        &["rollout", "rollback", "4", "--reason", "field reports"],
    );
    let summary = run(&[]);
    assert_eq!(summary["running"]["9"], devices);
    assert!(setup.devices().iter().all(|(_, model)| *model == good));

    // No report was lost: the server holds one row per report the devices saw acknowledged.
    let stats = server_stats(&setup, &server, &token);
    assert_eq!(stats["reports"], acknowledged);
    assert!(acknowledged >= 3 * (devices as u64 * 4 + reached));
}

#[test]
fn devices_refuse_tampered_artifacts_and_older_releases_and_the_server_unsigned_ones() {
    let setup = setup();
    let (server, token) = Server::start(Path::new(&setup.public));
    setup.start(&server, &token, 1, "all");
    setup.simulate(&server, &token, 10, &[]);
    setup.q5_k();
    setup.release("2.0.0");

    // A manifest not signed by the trusted key never reaches a device.
    let original = setup.ws.read("releases/digits/2.json");
    setup.ws.write(
        "releases/digits/2.json",
        &original.replace("2.0.0", "2.0.1"),
    );
    let out = setup.try_start(&server, &token, 2, "all");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("the signature does not match"),
        "{}",
        stderr(&out)
    );
    setup.ws.write("releases/digits/2.json", &original);

    // An artifact altered on the server: every device refuses it, and the rollout aborts.
    setup.start(&server, &token, 2, "all");
    let model = setup.model_of(2);
    let db = rusqlite::Connection::open(&server.db).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let changed = db
        .execute(
            "UPDATE blobs SET bytes = CAST('not the model' AS BLOB) WHERE sha256 = ?1",
            [&model],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let summary = setup.simulate(&server, &token, 10, &[]);
    let refusals = summary["refused"].as_object().unwrap();
    assert!(
        refusals
            .keys()
            .any(|r| r.contains("artifact digits.gguf does not match its hash")),
        "{summary:#}"
    );
    let status = setup.status(&server, &token, 2);
    assert_eq!(status["state"], "rolled_back");
    assert!(
        status["audit"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("failure rate 100.0%"),
        "{status:#}"
    );
    // Nothing was installed: the devices that got the rollback run release 1's model under 3.
    let on_devices = setup.devices();
    assert!(
        on_devices.iter().all(|(_, m)| *m == setup.model_of(1)),
        "{on_devices:?}"
    );

    // The operator repairs the server: the altered blob goes, and is uploaded again when needed.
    db.execute("DELETE FROM blobs WHERE sha256 = ?1", [&model])
        .unwrap();

    // An older release is refused by the server...
    let out = setup.try_start(&server, &token, 1, "all");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("release 1 of digits is not newer than release 3"),
        "{}",
        stderr(&out)
    );
    // ... and by devices that run a newer one (say, flashed on the bench).
    let state = setup
        .ws
        .read("sim.json")
        .replace("\"release\": 3", "\"release\": 9");
    setup.ws.write("sim.json", &state);
    setup.pruned();
    setup.ws.build(&[], 0);
    let out = setup.ws.run(&[
        "release",
        "digits",
        "--version",
        "3.0.0",
        "--key",
        &setup.private,
        "--rollback-to",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    setup.start(&server, &token, 4, "all");
    let summary = setup.simulate(&server, &token, 10, &[]);
    let refusals = summary["refused"].as_object().unwrap();
    assert!(
        refusals
            .keys()
            .any(|r| r.contains("release 4 is not newer than the running release 9")),
        "{summary:#}"
    );
    assert_eq!(setup.status(&server, &token, 3)["state"], "rolled_back");
    assert!(
        setup
            .devices()
            .iter()
            .all(|(r, m)| *r == 9 && *m == setup.model_of(1))
    );
}

#[test]
fn a_server_killed_mid_rollout_resumes_from_its_database() {
    let setup = setup();
    let (mut server, token) = Server::start(Path::new(&setup.public));
    setup.write_slow_policy();
    setup.start(&server, &token, 1, "all");
    setup.simulate(&server, &token, 30, &[]);
    setup.q5_k();
    setup.release("2.0.0");
    setup.start(&server, &token, 2, "slow");

    let fleet = setup
        .simulate_command(&server, &token, 30, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the rollout is in its second stage, then crash the server.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while setup.status(&server, &token, 2)["stage"] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the rollout never reached stage 2"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    server.kill();
    std::thread::sleep(std::time::Duration::from_millis(500));
    server.restart();

    let out = fleet.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        summary["retried"].as_u64().unwrap() > 0,
        "the devices saw the server go: {summary:#}"
    );
    assert_eq!(summary["running"]["2"], 30);
    let status = setup.status(&server, &token, 2);
    assert_eq!(status["state"], "completed");
    assert_eq!(events(&status), ["start", "advance", "advance", "complete"]);
    // Reports sent while the server was down were kept and sent again: none is missing.
    assert_eq!(server_stats(&setup, &server, &token)["reports"], 3 * 30 * 2);
}

impl Setup {
    fn write_slow_policy(&self) {
        self.ws.write(
            "deploy/slow.yaml",
            &STAGED.replace("soak: 300ms", "soak: 1s"),
        );
    }
}

#[test]
fn operators_pause_resume_and_abort_and_tokens_guard_the_api() {
    let setup = setup();
    let (server, token) = Server::start(Path::new(&setup.public));
    let assignment = |token: &str| {
        http(
            &server,
            "GET",
            "/v1/device/assignment?pipeline=digits",
            token,
        )
        .0
    };
    // Tokens: nothing without one; the admin token is not a device token.
    assert_eq!(http(&server, "GET", "/v1/admin/stats", "wrong").0, 401);
    assert_eq!(assignment(&token), 401);
    let out = setup.edgebuild(&server, "wrong", &["rollout", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("an admin token is required"),
        "{}",
        stderr(&out)
    );

    let enrolled = setup.ok(&server, &token, &["fleet", "enroll", "bench-1", "bench-2"]);
    let tokens: Vec<&str> = enrolled
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap())
        .collect();
    assert_eq!(assignment(tokens[0]), 204);
    let out = setup.edgebuild(&server, &token, &["fleet", "enroll", "bench-1"]);
    assert_eq!(out.status.code(), Some(2), "enrolled once");
    setup.ok(&server, &token, &["fleet", "revoke", "bench-1"]);
    assert_eq!(assignment(tokens[0]), 401);
    assert_eq!(assignment(tokens[1]), 204);
    // Stored hashed: no token is in the database or its write-ahead log.
    for file in ["fleet.sqlite", "fleet.sqlite-wal"] {
        let bytes = std::fs::read(server.db.with_file_name(file)).unwrap_or_default();
        for secret in tokens.iter().copied().chain([token.as_str()]) {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{file}"
            );
        }
    }
    assert!(
        std::fs::metadata(server.db.with_file_name("fleet.sqlite-wal")).is_ok(),
        "WAL mode"
    );
    // bench-2 would never report: the rollouts below would wait for its timeout.
    setup.ok(&server, &token, &["fleet", "revoke", "bench-2"]);

    // The simulated devices enroll (nothing to run yet: one quiet round).
    let out = setup
        .ws
        .command()
        .env("EDGEBUILD_FLEET_SERVER", &server.url)
        .env("EDGEBUILD_FLEET_TOKEN", &token)
        .args([
            "device",
            "simulate",
            "--devices",
            "20",
            "--key",
            &setup.public,
            "--data",
            "examples/digits/heldout.npz",
            "--state",
            "sim.json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Pause holds the rollout at its stage; resume lets it finish; pausing it then is refused.
    setup.start(&server, &token, 1, "staged");
    let first = wait_for_targets(&setup, &server, &token, 1);
    setup.ok(
        &server,
        &token,
        &[
            "rollout",
            "pause",
            "1",
            "--reason",
            "checking the bench board",
        ],
    );
    let summary = setup
        .simulate_command(&server, &token, 20, &["--timeout", "2s"])
        .output()
        .unwrap();
    assert_eq!(
        summary.status.code(),
        Some(4),
        "a paused rollout does not settle: {}",
        stderr(&summary)
    );
    let status = setup.status(&server, &token, 1);
    assert_eq!(status["state"], "paused");
    assert_eq!(status["stage"], 0);
    let reached = status["stages"][0]["targeted"].as_u64().unwrap();
    assert_eq!(reached, first, "no device targeted while paused");
    assert_eq!(
        status["stages"][0]["confirmed"].as_u64().unwrap(),
        first,
        "those reached installed it"
    );
    assert_eq!(status["stages"][1]["targeted"], 0);
    setup.ok(&server, &token, &["rollout", "resume", "1"]);
    setup.simulate(&server, &token, 20, &[]);
    let status = setup.status(&server, &token, 1);
    assert_eq!(status["state"], "completed");
    assert_eq!(
        events(&status),
        ["start", "pause", "resume", "advance", "advance", "complete"]
    );
    assert!(
        status["audit"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("operator: checking the bench board")
    );
    let out = setup.edgebuild(&server, &token, &["rollout", "pause", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot pause rollout 1: it is completed"),
        "{}",
        stderr(&out)
    );

    // An operator abort rolls back the devices reached.
    setup.q5_k();
    setup.release("2.0.0");
    setup.start(&server, &token, 2, "staged");
    let first = wait_for_targets(&setup, &server, &token, 2);
    setup.ok(&server, &token, &["rollout", "pause", "2"]);
    setup
        .simulate_command(&server, &token, 20, &["--timeout", "1s"])
        .output()
        .unwrap();
    setup.ok(
        &server,
        &token,
        &["rollout", "abort", "2", "--reason", "bad batch of boards"],
    );
    setup.simulate(&server, &token, 20, &[]);
    let status = setup.status(&server, &token, 2);
    assert_eq!(status["state"], "rolled_back");
    assert_eq!(status["stages"][0]["targeted"], first);
    assert_eq!(status["rollback_confirmed"], first);
    let on_devices = setup.devices();
    assert_eq!(
        on_devices.iter().filter(|(r, _)| *r == 3).count() as u64,
        first
    );
    assert!(on_devices.iter().all(|(_, m)| *m == setup.model_of(1)));
    // A completed rollout without a rollback manifest cannot be rolled back.
    let out = setup.edgebuild(&server, &token, &["rollout", "rollback", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        flat(&stderr(&out)).contains("it is completed and has no rollback manifest"),
        "{}",
        stderr(&out)
    );
}

/// Waits until the rollout's first stage targeted devices; returns how many.
fn wait_for_targets(setup: &Setup, server: &Server, token: &str, id: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let targeted = setup.status(server, token, id)["stages"][0]["targeted"]
            .as_u64()
            .unwrap();
        if targeted > 0 {
            return targeted;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollout {id} targeted nobody"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_bad_policy_points_at_its_line() {
    let setup = setup();
    let (server, token) = Server::start(Path::new(&setup.public));
    setup.ws.write(
        "deploy/bad.yaml",
        &STAGED.replace("percent: 50", "percent: 5"),
    );
    let out = setup.try_start(&server, &token, 1, "bad");
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!(stderr(&out));
    assert!(server_stats(&setup, &server, &token)["devices"] == 0);
    assert_eq!(
        http(&server, "GET", "/v1/admin/rollouts", &token).1,
        serde_json::json!([])
    );
}

#[test]
fn a_load_run_loses_no_report() {
    let setup = setup();
    let (server, token) = Server::start(Path::new(&setup.public));
    setup.start(&server, &token, 1, "all");
    let devices = 300;
    let summary = setup.simulate(&server, &token, devices, &["--concurrency", "64"]);
    assert_eq!(summary["running"]["1"], devices);
    let stats = server_stats(&setup, &server, &token);
    assert_eq!(stats["reports"], summary["reports_acknowledged"]);
    assert_eq!(stats["reports"], 3 * devices as u64);
    assert_eq!(stats["telemetry"], devices as u64);
    assert!(summary["latency_p99_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_device_that_never_confirms_counts_as_failed_after_the_timeout() {
    let setup = setup();
    let (server, token) = Server::start(Path::new(&setup.public));
    setup.ws.write(
        "deploy/short.yaml",
        &ALL_AT_ONCE
            .replace("confirm_timeout: 60s", "confirm_timeout: 3s")
            .replace("min_reports: 5", "min_reports: 2")
            .replace("max_failure_rate: 0.2", "max_failure_rate: 0.3"),
    );
    // Enrolled, but switched off on the shelf.
    setup.ok(&server, &token, &["fleet", "enroll", "shelf-1"]);
    setup.start(&server, &token, 1, "short");
    setup.simulate(&server, &token, 3, &[]);
    let status = setup.status(&server, &token, 1);
    assert_eq!(status["state"], "completed", "{status:#}");
    let stage = &status["stages"][0];
    assert_eq!(
        (stage["confirmed"].as_u64(), stage["timed_out"].as_u64()),
        (Some(3), Some(1))
    );
    assert!(
        status["audit"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("3 confirmed, 0 failed, 1 timed out")
    );

    // Two silent devices of four are above the 30% allowed: the next rollout aborts.
    setup.ok(&server, &token, &["fleet", "enroll", "shelf-2"]);
    setup.q5_k();
    setup.release("2.0.0");
    setup.start(&server, &token, 2, "short");
    setup.simulate(&server, &token, 3, &[]);
    let status = setup.status(&server, &token, 2);
    assert_eq!(status["state"], "rolled_back", "{status:#}");
    let reason = status["audit"][1]["reason"].as_str().unwrap();
    assert!(
        reason.contains("failure rate 40.0% (2 of 5 reported: 0 failed, 2 timed out)"),
        "{reason}"
    );
}

#[test]
fn a_share_of_devices_failing_to_install_aborts_a_first_release() {
    let setup = setup();
    let (server, token) = Server::start(Path::new(&setup.public));
    setup.start(&server, &token, 1, "all");
    let summary = setup.simulate(&server, &token, 20, &["--fail-install", "0.5"]);
    let failures = summary["install_failures"].as_u64().unwrap();
    assert!((4..=16).contains(&failures), "about half of 20: {failures}");
    let status = setup.status(&server, &token, 1);
    assert_eq!(
        status["state"], "aborted",
        "a first release has no rollback: {status:#}"
    );
    let reason = status["audit"][1]["reason"].as_str().unwrap();
    assert!(
        reason.contains("failure rate") && reason.contains("is above 20.0%"),
        "{reason}"
    );
    assert!(reason.contains("no rollback manifest"), "{reason}");
    // The devices that failed still run nothing, nor do those the rollout stopped before they
    // installed (on a loaded machine, some); the others kept release 1.
    let running = setup.devices();
    let installed = summary["installs"].as_u64().unwrap();
    assert_eq!(
        running.iter().filter(|(r, _)| *r == 1).count() as u64,
        installed
    );
    assert!(running.iter().filter(|(r, _)| *r == 0).count() as u64 >= failures);
}

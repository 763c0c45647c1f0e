//! `edgebuild device simulate`: a fleet of simulated devices speaking the device API as a real
//! agent would, for tests, demos and load runs.
//!
//! Each device polls for its assignment; a manifest numbered above the one it runs is checked
//! (signature and number) before anything is downloaded, then every artifact is checked against
//! its hash before "installing". The health check loads the released GGUF and runs it on the
//! device's own slice of held-out inputs (SPEC.md, "Devices"): the mean top-1 probability is the
//! confidence it reports, so a worse model reports a genuinely lower one. A share of devices can
//! be told to fail their install. Reports wait in an outbox until the server acknowledged them,
//! so an unreachable or restarted server loses none. Every request's latency is recorded for the
//! load run's throughput and percentiles.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::{Device as CandleDevice, Tensor};
use ed25519_dalek::VerifyingKey;
use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::client::Client;
use super::{Assignment, DeviceState, FleetError, Report, RolloutStatus, Telemetry};
use crate::release::SignedManifest;
use edgebuild_engine::hash::Digest;
use edgebuild_ml::model::QuantModel;

/// What to simulate (the flags of `edgebuild device simulate`).
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// The fleet server's URL.
    #[arg(long, env = super::SERVER_ENV, value_name = "URL")]
    pub server: String,
    #[arg(long, default_value_t = 10)]
    pub devices: usize,
    #[arg(long, default_value = "digits")]
    pub pipeline: String,
    /// The release public key devices trust.
    #[arg(long, value_name = "PATH")]
    pub key: PathBuf,
    /// Held-out inputs (npz or csv) the devices run the model on.
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,
    #[arg(long, default_value_t = 32)]
    pub samples_per_device: usize,
    /// Share (0..1) of devices whose install of a release fails (a stable hash picks them).
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub fail_install: f64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = super::parse_duration)]
    pub poll: Duration,
    /// The devices' ids, tokens and releases, kept between runs (mode 0600).
    #[arg(long, value_name = "PATH", default_value = "fleet-sim.json")]
    pub state: PathBuf,
    /// Keep polling until the newest rollout is over and every device runs its assignment
    /// (needs the admin token); without it, stop at the first quiet round.
    #[arg(long)]
    pub until_settled: bool,
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = super::parse_duration)]
    pub timeout: Duration,
}

fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{text}` is not a share between 0 and 1")),
    }
}

/// One simulated device as the state file keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeviceRecord {
    id: String,
    token: String,
    /// The release it runs, and that release's model artifact.
    release: Option<u64>,
    model: Option<Digest>,
    /// Reports not acknowledged yet: kept across runs, so none is lost.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    outbox: Vec<Message>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    devices: Vec<DeviceRecord>,
}

/// What a run did, and how the server answered.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub devices: usize,
    pub rounds: u64,
    pub requests: u64,
    /// Status reports and telemetry messages acknowledged by the server.
    pub reports_acknowledged: u64,
    pub telemetry_acknowledged: u64,
    /// Requests that failed and were retried (server unreachable).
    pub retried: u64,
    pub installs: u64,
    pub refused: BTreeMap<String, u64>,
    pub install_failures: u64,
    /// Devices by the release they run.
    pub running: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub requests_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub settled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Message {
    Report(Report),
    Telemetry(Telemetry),
}

/// Shared by every device of the run.
struct Fleet {
    client: Client,
    options: SimulateArgs,
    /// The release key the devices trust.
    key: VerifyingKey,
    models: Mutex<HashMap<Digest, Arc<QuantModel>>>,
    /// The held-out inputs, loaded once the first model tells their shape.
    data: Mutex<Option<Tensor>>,
    latencies: Mutex<Vec<u32>>,
    counters: Mutex<Summary>,
}

/// A device's life in this run.
struct Device {
    record: DeviceRecord,
    client: Client,
    /// Releases it refused or failed: not tried again.
    given_up: BTreeSet<u64>,
    telemetry_sent: Option<u64>,
}

fn unit_hash(text: &str) -> f64 {
    let hex = Digest::of_bytes(text.as_bytes()).hex();
    u64::from_str_radix(&hex[..13], 16).expect("hex") as f64 / (1u64 << 52) as f64
}

impl Fleet {
    async fn timed(
        &self,
        client: &Client,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, FleetError> {
        let start = Instant::now();
        let result = client.send(method, path, body).await;
        let micros = start.elapsed().as_micros().min(u32::MAX as u128) as u32;
        self.latencies.lock().expect("latencies").push(micros);
        self.counters.lock().expect("counters").requests += 1;
        result
    }

    fn count(&self, f: impl FnOnce(&mut Summary)) {
        f(&mut self.counters.lock().expect("counters"));
    }

    async fn model(&self, device: &Device, sha: Digest) -> Result<Arc<QuantModel>, String> {
        if let Some(model) = self.models.lock().expect("models").get(&sha) {
            return Ok(model.clone());
        }
        let bytes = self
            .timed(
                &device.client,
                Method::GET,
                &format!("/v1/artifacts/{}", sha.hex()),
                None,
            )
            .await
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        if Digest::of_bytes(&bytes) != sha {
            return Err("the model does not match its hash".into());
        }
        let model = tokio::task::spawn_blocking(move || {
            QuantModel::read(std::io::Cursor::new(bytes), "the released model")
        })
        .await
        .map_err(|e| e.to_string())??;
        let model = Arc::new(model);
        self.models
            .lock()
            .expect("models")
            .insert(sha, model.clone());
        Ok(model)
    }

    /// The health check: the device's samples through the model; the mean top-1 probability.
    async fn confidence(
        &self,
        device: &Device,
        model: Arc<QuantModel>,
    ) -> Result<(u64, f64), String> {
        let (indices, x) = {
            let mut data = self.data.lock().expect("data");
            if data.is_none() {
                let set =
                    edgebuild_ml::data::Dataset::load(&self.options.data, &model.arch.input_shape)?;
                *data = Some(set.x);
            }
            let x = data.as_ref().expect("loaded");
            let n = x.dims().first().copied().unwrap_or(0).max(1);
            let k = self.options.samples_per_device.min(n).max(1);
            let start = (unit_hash(&device.record.id) * n as f64) as usize;
            let picked: Vec<u32> = (0..k).map(|i| ((start + i * 7) % n) as u32).collect();
            (picked, x.clone())
        };
        tokio::task::spawn_blocking(move || {
            let run = || -> candle_core::Result<f64> {
                let index = Tensor::new(indices.as_slice(), &CandleDevice::Cpu)?;
                let batch = x.index_select(&index, 0)?;
                let probabilities =
                    edgebuild_ml::model::probabilities(&model.arch, &model.forward(&batch)?)?;
                let top1 = probabilities.max(1)?.to_vec1::<f32>()?;
                Ok(top1.iter().map(|&p| p as f64).sum::<f64>() / top1.len() as f64)
            };
            run()
                .map(|c| (indices.len() as u64, c))
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Sends the outbox; keeps what the server did not acknowledge.
    async fn flush(&self, device: &mut Device) -> bool {
        let mut kept = Vec::new();
        let mut ok = true;
        for message in std::mem::take(&mut device.record.outbox) {
            let (path, body) = match &message {
                Message::Report(r) => ("/v1/device/reports", serde_json::to_vec(r)),
                Message::Telemetry(t) => ("/v1/device/telemetry", serde_json::to_vec(t)),
            };
            if !ok {
                kept.push(message);
                continue;
            }
            let body = body.expect("messages serialize");
            match self
                .timed(&device.client, Method::POST, path, Some(body))
                .await
            {
                Ok(_) => self.count(|s| match message {
                    Message::Report(_) => s.reports_acknowledged += 1,
                    Message::Telemetry(_) => s.telemetry_acknowledged += 1,
                }),
                Err(FleetError::Unreachable { .. })
                | Err(FleetError::Refused {
                    status: 500..=599, ..
                }) => {
                    self.count(|s| s.retried += 1);
                    ok = false;
                    kept.push(message);
                }
                // Refused for good (say, the release is unknown): nothing to retry.
                Err(_) => {}
            }
        }
        device.record.outbox = kept;
        ok
    }

    fn report(
        &self,
        device: &mut Device,
        release: u64,
        state: DeviceState,
        detail: Option<String>,
    ) {
        device.record.outbox.push(Message::Report(Report {
            pipeline: self.options.pipeline.clone(),
            release,
            state,
            detail,
        }));
    }

    /// Queues the confidence measured for a release: (samples, mean top-1 probability).
    fn telemetry(&self, device: &mut Device, release: u64, (samples, mean): (u64, f64)) {
        device.record.outbox.push(Message::Telemetry(Telemetry {
            pipeline: self.options.pipeline.clone(),
            release,
            samples,
            mean_confidence: mean,
        }));
        device.telemetry_sent = Some(release);
    }

    fn give_up(&self, device: &mut Device, release: u64, reason: String) {
        self.count(|s| *s.refused.entry(reason.clone()).or_default() += 1);
        self.report(device, release, DeviceState::Failed, Some(reason));
        device.given_up.insert(release);
    }

    /// One poll of one device. Returns whether it did anything.
    async fn step(&self, device: &mut Device) -> bool {
        let mut acted = !device.record.outbox.is_empty();
        if !self.flush(device).await {
            return true;
        }
        let path = format!(
            "/v1/device/assignment?pipeline={}",
            super::encode(&self.options.pipeline)
        );
        let assignment = match self.timed(&device.client, Method::GET, &path, None).await {
            Ok(Some(bytes)) => match serde_json::from_slice::<Assignment>(&bytes) {
                Ok(a) => Some(a.manifest),
                Err(_) => None,
            },
            Ok(None) => None,
            Err(_) => {
                self.count(|s| s.retried += 1);
                return true;
            }
        };
        if let Some(manifest) = assignment
            && Some(manifest.manifest.release) != device.record.release
            && !device.given_up.contains(&manifest.manifest.release)
        {
            self.install(device, &manifest).await;
            acted = true;
        } else if let (Some(release), Some(model)) = (device.record.release, device.record.model)
            && device.telemetry_sent != Some(release)
        {
            // The baseline: what the running release scores on this device.
            match self.model(device, model).await {
                Ok(m) => {
                    if let Ok(measured) = self.confidence(device, m).await {
                        self.telemetry(device, release, measured);
                        acted = true;
                    }
                }
                Err(_) => return true,
            }
        }
        if !device.record.outbox.is_empty() {
            self.flush(device).await;
        }
        acted
    }

    async fn install(&self, device: &mut Device, signed: &SignedManifest) {
        let release = signed.manifest.release;
        // Signature, number and pipeline first: nothing is downloaded for a manifest the device
        // refuses.
        if let Err(e) = signed.verify_signature(&self.key, device.record.release) {
            return self.give_up(device, release, e.to_string());
        }
        if signed.manifest.pipeline != self.options.pipeline {
            return self.give_up(
                device,
                release,
                format!(
                    "manifest rejected: it is for pipeline {}, this device runs {}",
                    signed.manifest.pipeline, self.options.pipeline
                ),
            );
        }
        let mut downloaded = BTreeMap::new();
        for artifact in &signed.manifest.artifacts {
            let path = format!("/v1/artifacts/{}", artifact.sha256.hex());
            match self.timed(&device.client, Method::GET, &path, None).await {
                Ok(Some(bytes)) => {
                    downloaded.insert(artifact.name.clone(), bytes);
                }
                Ok(None) | Err(FleetError::Refused { .. }) => {
                    return self.give_up(
                        device,
                        release,
                        format!("artifact {} is missing", artifact.name),
                    );
                }
                Err(_) => {
                    self.count(|s| s.retried += 1);
                    return;
                }
            }
        }
        if let Err(e) = signed.verify_artifacts(&|a| downloaded.get(&a.name).cloned()) {
            return self.give_up(device, release, e.to_string());
        }
        self.report(device, release, DeviceState::Downloaded, None);
        if unit_hash(&format!("{}\0{release}", device.record.id)) < self.options.fail_install {
            self.count(|s| s.install_failures += 1);
            device.given_up.insert(release);
            return self.report(
                device,
                release,
                DeviceState::Failed,
                Some("simulated install failure".into()),
            );
        }
        let Some(model) = signed
            .manifest
            .artifacts
            .iter()
            .find(|a| a.name.ends_with(".gguf"))
        else {
            return self.give_up(device, release, "the release has no .gguf model".into());
        };
        let sha = model.sha256;
        let bytes = downloaded.remove(&model.name).expect("downloaded");
        let loaded = match self.models.lock().expect("models").get(&sha) {
            Some(m) => Ok(m.clone()),
            None => QuantModel::read(std::io::Cursor::new(bytes), &model.name).map(Arc::new),
        };
        self.report(device, release, DeviceState::Installed, None);
        // Confirmed only once the new model runs: the health check.
        let health = match loaded {
            Ok(m) => {
                self.models.lock().expect("models").insert(sha, m.clone());
                self.confidence(device, m).await
            }
            Err(e) => Err(e),
        };
        match health {
            Ok(measured) => {
                device.record.release = Some(release);
                device.record.model = Some(sha);
                self.telemetry(device, release, measured);
                self.report(device, release, DeviceState::Confirmed, None);
                self.count(|s| s.installs += 1);
            }
            Err(e) => self.give_up(device, release, format!("health check failed: {e}")),
        }
    }
}

fn load_state(path: &Path) -> Result<StateFile, FleetError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            FleetError::Usage(
                format!("{}: not a simulation state file: {e}", path.display()),
                None,
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
        Err(e) => Err(FleetError::Usage(format!("{}: {e}", path.display()), None)),
    }
}

fn save_state(path: &Path, state: &StateFile) -> Result<(), FleetError> {
    let mut bytes = serde_json::to_vec_pretty(state).expect("state serializes");
    bytes.push(b'\n');
    edgebuild_engine::files::write_atomic(path, &bytes)
        .map_err(|e| FleetError::Usage(format!("{}: {e}", path.display()), None))?;
    use std::os::unix::fs::PermissionsExt;
    // It holds device tokens.
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    Ok(())
}

/// Whether the newest rollout of the pipeline is over (None without an admin token).
async fn rollout_over(admin: &Client, pipeline: &str) -> Result<Option<RolloutStatus>, FleetError> {
    let list: Vec<RolloutStatus> = admin
        .get(&format!(
            "/v1/admin/rollouts?pipeline={}",
            super::encode(pipeline)
        ))
        .await?
        .unwrap_or_default();
    Ok(list.into_iter().next().filter(|r| !r.state.is_active()))
}

/// Runs the simulation: `key` is the release key devices trust; `admin_token` enrolls devices
/// and tells when the fleet settled.
pub fn simulate(
    options: &SimulateArgs,
    key: VerifyingKey,
    admin_token: Option<String>,
) -> Result<Summary, FleetError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| FleetError::Simulation(format!("cannot start: {e}")))?;
    runtime.block_on(run(options, key, admin_token))
}

async fn run(
    options: &SimulateArgs,
    key: VerifyingKey,
    admin_token: Option<String>,
) -> Result<Summary, FleetError> {
    let admin = Client::new(&options.server, admin_token.as_deref().unwrap_or(""))?;
    let mut state = load_state(&options.state)?;
    if state.devices.len() < options.devices {
        let Some(_) = &admin_token else {
            return Err(FleetError::Usage(
                format!(
                    "{} has {} device(s); enrolling more needs the admin token",
                    options.state.display(),
                    state.devices.len()
                ),
                Some(format!("set {}", super::TOKEN_ENV)),
            ));
        };
        let ids: Vec<String> = (state.devices.len()..options.devices)
            .map(|i| format!("sim-{i:05}"))
            .collect();
        for chunk in ids.chunks(1000) {
            #[derive(Deserialize)]
            struct Tokens {
                tokens: BTreeMap<String, String>,
            }
            let answer: Tokens = admin
                .post(
                    "/v1/admin/devices",
                    &serde_json::json!({ "devices": chunk }),
                )
                .await?;
            for id in chunk {
                state.devices.push(DeviceRecord {
                    id: id.clone(),
                    token: answer.tokens[id].clone(),
                    release: None,
                    model: None,
                    outbox: Vec::new(),
                });
            }
            save_state(&options.state, &state)?;
        }
    }
    let fleet = Arc::new(Fleet {
        client: admin.clone(),
        options: options.clone(),
        key,
        models: Mutex::default(),
        data: Mutex::default(),
        latencies: Mutex::default(),
        counters: Mutex::default(),
    });
    let mut devices: Vec<Device> = state
        .devices
        .iter()
        .take(options.devices)
        .map(|record| Device {
            client: fleet.client.with_token(&record.token),
            record: record.clone(),
            given_up: BTreeSet::new(),
            telemetry_sent: None,
        })
        .collect();
    let started = Instant::now();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(options.concurrency.max(1)));
    let mut settled = false;
    let mut rounds = 0;
    loop {
        rounds += 1;
        // Settled means: the rollout was over before a round in which no device had anything
        // to do (checked after the round, a rollback decided meanwhile would be missed).
        let over_before = match (options.until_settled, &admin_token) {
            (true, Some(_)) => match rollout_over(&admin, &options.pipeline).await {
                Ok(over) => over.is_some(),
                Err(FleetError::Unreachable { .. }) => false,
                Err(e) => return Err(e),
            },
            _ => false,
        };
        let mut tasks = tokio::task::JoinSet::new();
        for (index, mut device) in devices.drain(..).enumerate() {
            let fleet = fleet.clone();
            let permit = semaphore
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore open");
            tasks.spawn(async move {
                let acted = fleet.step(&mut device).await;
                drop(permit);
                (index, device, acted)
            });
        }
        let mut back = Vec::new();
        let mut acted = false;
        while let Some(joined) = tasks.join_next().await {
            let (index, device, did) =
                joined.map_err(|e| FleetError::Simulation(format!("a device task failed: {e}")))?;
            acted |= did;
            back.push((index, device));
        }
        back.sort_by_key(|(i, _)| *i);
        devices = back.into_iter().map(|(_, d)| d).collect();
        // A quiet round changed no device: nothing to write.
        if acted {
            for (record, device) in state.devices.iter_mut().zip(&devices) {
                *record = device.record.clone();
            }
            save_state(&options.state, &state)?;
        }
        if over_before && !acted {
            settled = true;
            break;
        }
        if !options.until_settled && rounds > 0 && !acted {
            settled = true;
            break;
        }
        if started.elapsed() >= options.timeout {
            break;
        }
        tokio::time::sleep(options.poll).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut summary = fleet.counters.lock().expect("counters").clone();
    let mut latencies = std::mem::take(&mut *fleet.latencies.lock().expect("latencies"));
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let at = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[at] as f64 / 1000.0
    };
    summary.devices = devices.len();
    summary.rounds = rounds;
    summary.elapsed_s = elapsed;
    summary.requests_per_s = summary.requests as f64 / elapsed.max(1e-9);
    summary.latency_p50_ms = percentile(0.50);
    summary.latency_p99_ms = percentile(0.99);
    summary.latency_max_ms = percentile(1.0);
    summary.settled = settled;
    for device in &devices {
        let key = device
            .record
            .release
            .map_or("none".to_string(), |r| r.to_string());
        *summary.running.entry(key).or_default() += 1;
    }
    if options.until_settled && !settled {
        return Err(FleetError::Simulation(format!(
            "the fleet did not settle within {:?}: devices by release {:?}",
            options.timeout, summary.running
        )));
    }
    Ok(summary)
}

/// The summary as text.
pub fn render(summary: &Summary) -> String {
    let running: Vec<String> = summary
        .running
        .iter()
        .map(|(release, n)| format!("{n} on release {release}"))
        .collect();
    let mut out = format!(
        "{} device(s): {}; {} install(s), {} install failure(s), {} refusal(s)\n",
        summary.devices,
        running.join(", "),
        summary.installs,
        summary.install_failures,
        summary.refused.values().sum::<u64>()
    );
    for (reason, n) in &summary.refused {
        out.push_str(&format!("  refused {n}x: {reason}\n"));
    }
    out.push_str(&format!(
        "{} request(s) in {:.2}s ({:.0}/s), latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} report(s) and {} telemetry message(s) acknowledged, {} retried\n",
        summary.requests,
        summary.elapsed_s,
        summary.requests_per_s,
        summary.latency_p50_ms,
        summary.latency_p99_ms,
        summary.latency_max_ms,
        summary.reports_acknowledged,
        summary.telemetry_acknowledged,
        summary.retried
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unacknowledged_reports_survive_in_the_state_file() {
        let record = DeviceRecord {
            id: "sim-00001".into(),
            token: "t".into(),
            release: Some(2),
            model: None,
            outbox: vec![
                Message::Report(Report {
                    pipeline: "digits".into(),
                    release: 2,
                    state: DeviceState::Confirmed,
                    detail: None,
                }),
                Message::Telemetry(Telemetry {
                    pipeline: "digits".into(),
                    release: 2,
                    samples: 32,
                    mean_confidence: 0.98,
                }),
            ],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sim.json");
        save_state(
            &path,
            &StateFile {
                devices: vec![record],
            },
        )
        .unwrap();
        let back = load_state(&path).unwrap();
        assert_eq!(back.devices[0].outbox.len(), 2);
        assert!(
            matches!(&back.devices[0].outbox[0], Message::Report(r) if r.state == DeviceState::Confirmed)
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "it holds tokens");
    }
}

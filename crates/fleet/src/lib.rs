//! edgebuild's deployment layer: [`release`]s signed from a gated build, and their staged
//! rollout to a device fleet with abort conditions and automatic rollback (SPEC.md, "Signed
//! releases" and "Fleet").
//!
//! The [`server`] (`edgebuild fleet serve`) keeps its state in a [`store`] (SQLite by default)
//! and runs the [`controller`], which advances a rollout through the stages of its [`policy`],
//! aborts it when a condition fails and rolls the affected devices back with the pre-signed
//! rollback manifest (SPEC.md, "Signed releases"). The [`client`] speaks the HTTP API for operators
//! (`edgebuild rollout ...`) and devices; [`simulate`] is a fleet of simulated devices that run
//! the released GGUF for real (SPEC.md, "Devices"). This module holds what they share: the API's
//! messages, tokens and cohorts.

// Errors carry their diagnostics; they are rare, so their size is fine.
#![allow(clippy::result_large_err)]

pub mod client;
pub mod controller;
pub mod policy;
pub mod release;
pub mod server;
pub mod simulate;
pub mod store;

use miette::Diagnostic;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::release::SignedManifest;
use edgebuild_engine::hash::Digest;

/// The environment variable holding an operator's admin token.
pub const TOKEN_ENV: &str = "EDGEBUILD_FLEET_TOKEN";
/// The environment variable naming the fleet server.
pub const SERVER_ENV: &str = "EDGEBUILD_FLEET_SERVER";

#[derive(Debug, Error, Diagnostic)]
pub enum FleetError {
    #[error("the fleet server at {url} is unreachable: {message}")]
    #[diagnostic(
        code(edgebuild::fleet::unreachable),
        help("start it with `edgebuild fleet serve`, or check --server / EDGEBUILD_FLEET_SERVER")
    )]
    Unreachable { url: String, message: String },

    #[error("the fleet server refused: {message} (HTTP {status})")]
    #[diagnostic(code(edgebuild::fleet::refused))]
    Refused {
        status: u16,
        message: String,
        #[help]
        help: Option<String>,
    },

    #[error("{0}")]
    #[diagnostic(code(edgebuild::fleet::usage))]
    Usage(String, #[help] Option<String>),

    #[error("fleet database {path}: {message}")]
    #[diagnostic(code(edgebuild::fleet::database))]
    Database { path: String, message: String },

    #[error("{path} is not a usable fleet database: {message}")]
    #[diagnostic(
        code(edgebuild::fleet::bad_database),
        help(
            "it is corrupt or not a fleet database: restore it from a backup, or make a new one with `edgebuild fleet init`"
        )
    )]
    BadDatabase { path: String, message: String },

    #[error("the rollout controller stopped: {0}")]
    #[diagnostic(
        code(edgebuild::fleet::controller),
        help(
            "the server stops with its controller, so that rollouts are never left unwatched; restart it (rollouts resume from the database)"
        )
    )]
    ControllerDied(String),

    #[error("{0}")]
    #[diagnostic(code(edgebuild::fleet::simulation))]
    Simulation(String),
}

/// `text` for a URL's path segment or query value.
pub fn encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A fresh secret token: 32 random bytes in hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    let mut urandom = std::fs::File::open("/dev/urandom").expect("/dev/urandom is readable");
    std::io::Read::read_exact(&mut urandom, &mut bytes).expect("/dev/urandom gives bytes");
    hex::encode(bytes)
}

/// How a token is stored: its SHA-256, never the token.
pub fn token_hash(token: &str) -> String {
    Digest::of_bytes(token.as_bytes()).hex()
}

/// A device's place in a rollout, 0..10000: a stable hash of rollout and device, so each
/// rollout spreads its risk over different devices and a cohort only grows as the share does.
pub fn cohort_bucket(rollout: i64, device: &str) -> u32 {
    let digest = Digest::of_bytes(format!("{rollout}\0{device}").as_bytes());
    let bytes = digest.hex();
    (u64::from_str_radix(&bytes[..16], 16).expect("hex digest") % 10_000) as u32
}

/// Whether a bucket falls in a share of the fleet given in percent.
pub fn in_share(bucket: u32, percent: f64) -> bool {
    (bucket as f64) < percent * 100.0
}

/// What a device reports about a release, in the order they happen. `failed` is final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    Downloaded,
    Installed,
    /// Running the release after its health check passed.
    Confirmed,
    Failed,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Downloaded => "downloaded",
            DeviceState::Installed => "installed",
            DeviceState::Confirmed => "confirmed",
            DeviceState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<DeviceState> {
        [
            DeviceState::Downloaded,
            DeviceState::Installed,
            DeviceState::Confirmed,
            DeviceState::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// `POST /v1/device/reports`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub pipeline: String,
    pub release: u64,
    pub state: DeviceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `POST /v1/device/telemetry`: the model's confidence (mean top-1 probability) on the device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    pub pipeline: String,
    pub release: u64,
    pub samples: u64,
    pub mean_confidence: f64,
}

/// `GET /v1/device/assignment`: the manifest the device should run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    pub manifest: SignedManifest,
}

/// `POST /v1/admin/rollouts`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRollout {
    pub manifest: SignedManifest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<SignedManifest>,
    /// The rollout policy file's text (YAML); the server checks it as the CLI does.
    pub policy: String,
}

/// The lifecycle of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    Paused,
    Completed,
    /// Stopped; the devices it reached were sent the pre-signed rollback.
    RolledBack,
    /// Stopped with no way back (a first release has no rollback manifest).
    Aborted,
}

impl RolloutState {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Completed => "completed",
            RolloutState::RolledBack => "rolled_back",
            RolloutState::Aborted => "aborted",
        }
    }

    pub fn parse(text: &str) -> Option<RolloutState> {
        [
            RolloutState::Running,
            RolloutState::Paused,
            RolloutState::Completed,
            RolloutState::RolledBack,
            RolloutState::Aborted,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    pub fn is_active(self) -> bool {
        matches!(self, RolloutState::Running | RolloutState::Paused)
    }
}

/// Per stage of a rollout: its devices and what they reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageStatus {
    pub percent: f64,
    pub targeted: u64,
    pub confirmed: u64,
    pub failed: u64,
    /// Not confirmed within the policy's timeout: counted as failed.
    pub timed_out: u64,
    pub pending: u64,
    /// Devices that reported confidence for both the previous and the new release.
    pub paired: u64,
    /// Their mean confidence on the previous release (the baseline) and on the new one.
    pub baseline_confidence: Option<f64>,
    pub new_confidence: Option<f64>,
}

/// One transition of a rollout, with its reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    pub rollout: i64,
    pub event: String,
    pub reason: String,
}

/// `GET /v1/admin/rollouts/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub id: i64,
    pub pipeline: String,
    pub release: u64,
    pub version: String,
    pub rollback: Option<u64>,
    pub state: RolloutState,
    /// The stage the rollout is in (0-based).
    pub stage: usize,
    pub stages: Vec<StageStatus>,
    /// Devices sent the rollback, and how many confirmed it.
    pub rolled_back: u64,
    pub rollback_confirmed: u64,
    pub audit: Vec<AuditEntry>,
}

/// `GET /v1/admin/stats`: totals, for checking that no report was lost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub devices: u64,
    pub revoked: u64,
    pub reports: u64,
    pub telemetry: u64,
}

/// `rollout status` as text: per stage the devices and the confidence comparison, then the
/// audit log with times relative to the rollout's start.
pub fn render_status(status: &RolloutStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rollout {}: {} release {} ({}), {} at stage {} of {}{}",
        status.id,
        status.pipeline,
        status.release,
        status.version,
        status.state.as_str(),
        status.stage + 1,
        status.stages.len(),
        status
            .rollback
            .map_or(String::new(), |r| format!("; rollback release {r}"))
    );
    let _ = writeln!(
        out,
        "  {:<5} {:>6} {:>8} {:>9} {:>6} {:>9} {:>7}  confidence before -> after (devices)",
        "stage", "share", "targeted", "confirmed", "failed", "timed out", "pending"
    );
    for (i, s) in status.stages.iter().enumerate() {
        let confidence = match (s.baseline_confidence, s.new_confidence) {
            (Some(b), Some(a)) => format!("{b:.4} -> {a:.4} ({})", s.paired),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "  {:<5} {:>5}% {:>8} {:>9} {:>6} {:>9} {:>7}  {confidence}",
            i + 1,
            s.percent,
            s.targeted,
            s.confirmed,
            s.failed,
            s.timed_out,
            s.pending
        );
    }
    if status.state == RolloutState::RolledBack {
        let _ = writeln!(
            out,
            "  rollback: {} device(s) sent release {}, {} confirmed it",
            status.rolled_back,
            status.rollback.unwrap_or_default(),
            status.rollback_confirmed
        );
    }
    let start = status.audit.first().map_or(0, |a| a.at_ms);
    for entry in &status.audit {
        let _ = writeln!(
            out,
            "  {:>9} {:<8} {}",
            format!("+{:.1}s", (entry.at_ms - start) as f64 / 1000.0),
            entry.event,
            entry.reason
        );
    }
    out
}

/// Milliseconds since the epoch: the server's clock for soak times and timeouts.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Parses `250ms`, `30s`, `10m`, `2h` (or a bare number of seconds).
/// `fleet serve --tick`: a duration (as [`parse_duration`]) of at least one millisecond.
pub fn parse_tick(text: &str) -> Result<std::time::Duration, String> {
    let tick = parse_duration(text)?;
    if tick < std::time::Duration::from_millis(1) {
        return Err(format!(
            "`{text}` is too short: the controller's tick is at least 1ms"
        ));
    }
    Ok(tick)
}

pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (say 500ms, 30s, 10m or 2h)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use ms, s, m, h or d)"
            ));
        }
    };
    // Ten years: beyond it, a soak or a timeout is a typo (and milliseconds would overflow).
    if !seconds.is_finite() || !(0.0..=3.2e8).contains(&seconds) {
        return Err(format!("`{text}` is not a duration of at most ten years"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cohorts_are_stable_spread_and_grow() {
        assert_eq!(cohort_bucket(7, "dev-1"), cohort_bucket(7, "dev-1"));
        let buckets: Vec<u32> = (0..10_000)
            .map(|i| cohort_bucket(1, &format!("dev-{i}")))
            .collect();
        let share = |p: f64| buckets.iter().filter(|&&b| in_share(b, p)).count();
        // About 1%, 10% and 50% of 10,000, and a device in a share is in every larger one.
        assert!((60..=140).contains(&share(1.0)), "{}", share(1.0));
        assert!((900..=1100).contains(&share(10.0)), "{}", share(10.0));
        assert!((4800..=5200).contains(&share(50.0)), "{}", share(50.0));
        assert_eq!(share(100.0), 10_000);
        assert!(
            buckets
                .iter()
                .all(|&b| !in_share(b, 1.0) || in_share(b, 10.0))
        );
        // Another rollout picks other devices first.
        let other: Vec<bool> = (0..10_000)
            .map(|i| in_share(cohort_bucket(2, &format!("dev-{i}")), 10.0))
            .collect();
        let same = buckets
            .iter()
            .zip(&other)
            .filter(|(b, o)| in_share(**b, 10.0) && **o)
            .count();
        assert!(same < 300, "{same}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert_eq!(parse_duration("30s").unwrap().as_secs(), 30);
        assert_eq!(parse_duration("10m").unwrap().as_secs(), 600);
        assert_eq!(parse_duration("1.5h").unwrap().as_secs(), 5400);
        assert_eq!(parse_duration("5").unwrap().as_secs(), 5);
        assert!(
            parse_duration("5 weeks")
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("1e300h").is_err());
        assert!(parse_duration("99999999999d").is_err());
    }
}

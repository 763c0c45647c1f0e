//! The fleet server's state behind one small interface, [`FleetStore`], so that a PostgreSQL
//! backend can follow the embedded default, [`SqliteStore`] (SQLite in WAL mode).
//!
//! Everything the controller decides from is here, so a restarted server resumes a rollout where
//! it was. Tokens are stored as SHA-256 hashes. Reports are keyed by device, release and state,
//! so a repeated or reordered report changes nothing.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::policy::Policy;
use super::{AuditEntry, DeviceState, FleetError, Report, RolloutState, Stats, Telemetry};
use crate::release::SignedManifest;

/// A rollout as stored.
#[derive(Debug, Clone)]
pub struct RolloutRow {
    pub id: i64,
    pub pipeline: String,
    pub release: u64,
    pub rollback: Option<u64>,
    pub policy: Policy,
    pub state: RolloutState,
    pub stage: usize,
    pub stage_started_ms: i64,
}

/// A device a rollout targeted, with what it reported.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRow {
    pub device: String,
    pub stage: usize,
    pub targeted_ms: i64,
    /// The furthest state reported for the rollout's release, and for its rollback.
    pub state: Option<DeviceState>,
    pub rollback_state: Option<DeviceState>,
    /// Mean confidence on the release the device ran before, and on the new one.
    pub baseline_confidence: Option<f64>,
    pub new_confidence: Option<f64>,
}

/// A rollout moving from one state (and stage) to another, with the audit log's event and
/// reason.
#[derive(Debug, Clone)]
pub struct Transition<'a> {
    pub id: i64,
    /// The state and stage the rollout must still be in: a transition decided on an old view
    /// (an operator's action racing the controller) changes nothing.
    pub from: RolloutState,
    pub from_stage: usize,
    pub to: RolloutState,
    pub stage: usize,
    /// Start the stage's soak time now (a new stage, or resuming after a pause).
    pub restart_clock: bool,
    pub event: &'a str,
    pub reason: &'a str,
}

/// What the fleet server stores. Every method is one transaction.
pub trait FleetStore: Send + Sync {
    /// Makes the admin token (returned once, stored hashed); refuses when one exists.
    fn init_admin(&self) -> Result<String, FleetError>;
    fn is_admin(&self, token_hash: &str) -> Result<bool, FleetError>;
    /// The enrolled, unrevoked device a token belongs to.
    fn device_for(&self, token_hash: &str) -> Result<Option<String>, FleetError>;
    /// Enrolls devices and returns their tokens; refuses ids already enrolled.
    fn enroll(&self, ids: &[String], now: i64) -> Result<Vec<(String, String)>, FleetError>;
    fn revoke(&self, id: &str) -> Result<bool, FleetError>;
    fn put_blob(&self, sha256: &str, bytes: &[u8]) -> Result<(), FleetError>;
    /// Stores `len` bytes read from `reader` (already checked against `sha256`), in pieces.
    fn put_blob_from(
        &self,
        sha256: &str,
        reader: &mut dyn std::io::Read,
        len: u64,
    ) -> Result<(), FleetError> {
        let mut bytes = Vec::with_capacity(len.min(1 << 20) as usize);
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| FleetError::Simulation(format!("cannot read the artifact: {e}")))?;
        self.put_blob(sha256, &bytes)
    }
    fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, FleetError>;
    fn has_blob(&self, sha256: &str) -> Result<bool, FleetError>;
    /// Stores a manifest; the same number with other content is refused.
    fn put_manifest(&self, signed: &SignedManifest) -> Result<(), FleetError>;
    fn manifest(&self, pipeline: &str, release: u64) -> Result<Option<SignedManifest>, FleetError>;
    /// Starts a rollout unless one of the pipeline is active; records `start` in the audit log.
    fn create_rollout(
        &self,
        pipeline: &str,
        release: u64,
        rollback: Option<u64>,
        policy: &Policy,
        now: i64,
        reason: &str,
    ) -> Result<i64, FleetError>;
    fn rollout(&self, id: i64) -> Result<Option<RolloutRow>, FleetError>;
    /// Rollouts, newest first; of one pipeline when given.
    fn rollouts(&self, pipeline: Option<&str>) -> Result<Vec<RolloutRow>, FleetError>;
    /// Applies a transition and records it in the audit log, in one transaction. Refuses
    /// (returns false) when the rollout is no longer in `from`.
    fn transition(&self, t: &Transition, now: i64) -> Result<bool, FleetError>;
    fn audit(&self, rollout: Option<i64>) -> Result<Vec<AuditEntry>, FleetError>;
    /// Enrolled, unrevoked devices the rollout has not targeted yet.
    fn untargeted(&self, rollout: i64) -> Result<Vec<String>, FleetError>;
    fn add_targets(
        &self,
        rollout: i64,
        stage: usize,
        devices: &[String],
        now: i64,
    ) -> Result<(), FleetError>;
    fn is_targeted(&self, rollout: i64, device: &str) -> Result<bool, FleetError>;
    fn targets(&self, rollout: &RolloutRow) -> Result<Vec<TargetRow>, FleetError>;
    /// Records a report; false when it was already recorded.
    fn record_report(&self, device: &str, report: &Report, now: i64) -> Result<bool, FleetError>;
    fn record_telemetry(&self, device: &str, telemetry: &Telemetry) -> Result<(), FleetError>;
    fn stats(&self) -> Result<Stats, FleetError>;
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE,
    enrolled_ms INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS blobs (sha256 TEXT PRIMARY KEY, bytes BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS manifests (
    pipeline TEXT NOT NULL, release INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (pipeline, release));
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pipeline TEXT NOT NULL, release INTEGER NOT NULL,
    rollback INTEGER, policy TEXT NOT NULL, state TEXT NOT NULL, stage INTEGER NOT NULL,
    stage_started_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS targets (
    rollout INTEGER NOT NULL, device TEXT NOT NULL, stage INTEGER NOT NULL,
    targeted_ms INTEGER NOT NULL, PRIMARY KEY (rollout, device));
CREATE TABLE IF NOT EXISTS reports (
    device TEXT NOT NULL, pipeline TEXT NOT NULL, release INTEGER NOT NULL, rank INTEGER NOT NULL,
    at_ms INTEGER NOT NULL, detail TEXT, PRIMARY KEY (device, pipeline, release, rank));
CREATE TABLE IF NOT EXISTS telemetry (
    device TEXT NOT NULL, pipeline TEXT NOT NULL, release INTEGER NOT NULL,
    samples INTEGER NOT NULL, mean_confidence REAL NOT NULL,
    PRIMARY KEY (device, pipeline, release));
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, rollout INTEGER NOT NULL,
    event TEXT NOT NULL, reason TEXT NOT NULL);
";

fn rank(state: DeviceState) -> i64 {
    match state {
        DeviceState::Downloaded => 1,
        DeviceState::Installed => 2,
        DeviceState::Confirmed => 3,
        DeviceState::Failed => 4,
    }
}

fn state_of_rank(rank: Option<i64>) -> Option<DeviceState> {
    match rank? {
        1 => Some(DeviceState::Downloaded),
        2 => Some(DeviceState::Installed),
        3 => Some(DeviceState::Confirmed),
        4 => Some(DeviceState::Failed),
        _ => None,
    }
}

/// SQLite in WAL mode, one connection behind a mutex (SQLite writes one transaction at a time).
pub struct SqliteStore {
    path: String,
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating when `create`) the database at `path`.
    pub fn open(path: &Path, create: bool) -> Result<SqliteStore, FleetError> {
        let name = path.display().to_string();
        // A file that does not open as a fleet database is bad input (exit 2), not a failure
        // of the server (SPEC.md, "Server").
        let db_err = |e: rusqlite::Error| FleetError::BadDatabase {
            path: name.clone(),
            message: e.to_string(),
        };
        if !create && !path.exists() {
            return Err(FleetError::Usage(
                format!("no fleet database at {name}"),
                Some("create it with `edgebuild fleet init --db PATH`".into()),
            ));
        }
        let conn = Connection::open(path).map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        Ok(SqliteStore {
            path: name,
            conn: Mutex::new(conn),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> FleetError {
        FleetError::Database {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, FleetError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut conn).map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
                FleetError::BadDatabase {
                    path: self.path.clone(),
                    message: e.to_string(),
                }
            }
            _ => self.err(e),
        })
    }

    fn row_to_rollout(&self, row: &rusqlite::Row) -> rusqlite::Result<RolloutRow> {
        let policy: String = row.get(4)?;
        let state: String = row.get(5)?;
        let bad = |m: String| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, m.into())
        };
        Ok(RolloutRow {
            id: row.get(0)?,
            pipeline: row.get(1)?,
            release: row.get::<_, i64>(2)? as u64,
            rollback: row.get::<_, Option<i64>>(3)?.map(|r| r as u64),
            policy: serde_json::from_str(&policy).map_err(|e| bad(e.to_string()))?,
            state: RolloutState::parse(&state).ok_or_else(|| bad(format!("state {state}")))?,
            stage: row.get::<_, i64>(6)? as usize,
            stage_started_ms: row.get(7)?,
        })
    }
}

const ROLLOUT_COLUMNS: &str =
    "id, pipeline, release, rollback, policy, state, stage, stage_started_ms";

fn audit_insert(
    tx: &rusqlite::Transaction,
    now: i64,
    rollout: i64,
    event: &str,
    reason: &str,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO audit (at_ms, rollout, event, reason) VALUES (?1, ?2, ?3, ?4)",
        params![now, rollout, event, reason],
    )
    .map(drop)
}

impl FleetStore for SqliteStore {
    fn init_admin(&self) -> Result<String, FleetError> {
        let token = super::new_token();
        let inserted = self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('admin_token_hash', ?1)",
                params![super::token_hash(&token)],
            )
        })?;
        if inserted == 0 {
            return Err(FleetError::Usage(
                format!("{} already has an admin token", self.path),
                Some(
                    "the token was printed when the database was made; it is stored only hashed"
                        .into(),
                ),
            ));
        }
        Ok(token)
    }

    fn is_admin(&self, token_hash: &str) -> Result<bool, FleetError> {
        self.with(|c| {
            c.query_row(
                "SELECT 1 FROM meta WHERE key = 'admin_token_hash' AND value = ?1",
                params![token_hash],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
        })
    }

    fn device_for(&self, token_hash: &str) -> Result<Option<String>, FleetError> {
        self.with(|c| {
            c.prepare_cached("SELECT id FROM devices WHERE token_hash = ?1 AND revoked = 0")?
                .query_row(params![token_hash], |r| r.get(0))
                .optional()
        })
    }

    fn enroll(&self, ids: &[String], now: i64) -> Result<Vec<(String, String)>, FleetError> {
        let mut tokens = Vec::new();
        let taken = self.with(|c| {
            let tx = c.transaction()?;
            let mut taken = Vec::new();
            for id in ids {
                let exists = tx
                    .query_row("SELECT 1 FROM devices WHERE id = ?1", params![id], |_| {
                        Ok(())
                    })
                    .optional()?
                    .is_some();
                if exists {
                    taken.push(id.clone());
                    continue;
                }
                let token = super::new_token();
                tx.execute(
                    "INSERT INTO devices (id, token_hash, enrolled_ms) VALUES (?1, ?2, ?3)",
                    params![id, super::token_hash(&token), now],
                )?;
                tokens.push((id.clone(), token));
            }
            if taken.is_empty() {
                tx.commit()?;
            }
            Ok(taken)
        })?;
        if !taken.is_empty() {
            return Err(FleetError::Refused {
                status: 409,
                message: format!("already enrolled: {}", taken.join(", ")),
                help: Some(
                    "a device is enrolled once; revoke it and enroll it under a new id".into(),
                ),
            });
        }
        Ok(tokens)
    }

    fn revoke(&self, id: &str) -> Result<bool, FleetError> {
        self.with(|c| {
            c.execute("UPDATE devices SET revoked = 1 WHERE id = ?1", params![id])
                .map(|n| n > 0)
        })
    }

    fn put_blob(&self, sha256: &str, bytes: &[u8]) -> Result<(), FleetError> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO blobs (sha256, bytes) VALUES (?1, ?2)",
                params![sha256, bytes],
            )
            .map(drop)
        })
    }

    fn put_blob_from(
        &self,
        sha256: &str,
        reader: &mut dyn std::io::Read,
        len: u64,
    ) -> Result<(), FleetError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let exists = tx
                .query_row(
                    "SELECT 1 FROM blobs WHERE sha256 = ?1",
                    params![sha256],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !exists {
                tx.execute(
                    "INSERT INTO blobs (sha256, bytes) VALUES (?1, zeroblob(?2))",
                    params![sha256, len as i64],
                )?;
                let row = tx.last_insert_rowid();
                let mut blob = tx.blob_open(rusqlite::MAIN_DB, "blobs", "bytes", row, false)?;
                std::io::copy(reader, &mut blob)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
                drop(blob);
            }
            tx.commit()
        })
    }

    fn blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, FleetError> {
        self.with(|c| {
            c.prepare_cached("SELECT bytes FROM blobs WHERE sha256 = ?1")?
                .query_row(params![sha256], |r| r.get(0))
                .optional()
        })
    }

    fn has_blob(&self, sha256: &str) -> Result<bool, FleetError> {
        self.with(|c| {
            c.prepare_cached("SELECT 1 FROM blobs WHERE sha256 = ?1")?
                .query_row(params![sha256], |_| Ok(()))
                .optional()
                .map(|r| r.is_some())
        })
    }

    fn put_manifest(&self, signed: &SignedManifest) -> Result<(), FleetError> {
        let body = serde_json::to_string(signed).expect("manifests serialize");
        let m = &signed.manifest;
        let existing: Option<String> = self.with(|c| {
            let tx = c.transaction()?;
            let existing: Option<String> = tx
                .query_row(
                    "SELECT body FROM manifests WHERE pipeline = ?1 AND release = ?2",
                    params![m.pipeline, m.release as i64],
                    |r| r.get(0),
                )
                .optional()?;
            if existing.is_none() {
                tx.execute(
                    "INSERT INTO manifests (pipeline, release, body) VALUES (?1, ?2, ?3)",
                    params![m.pipeline, m.release as i64, body],
                )?;
                tx.commit()?;
            }
            Ok(existing)
        })?;
        match existing {
            Some(stored) if stored != body => Err(FleetError::Refused {
                status: 409,
                message: format!(
                    "release {} of {} is already on the server with other content",
                    m.release, m.pipeline
                ),
                help: Some("release numbers are never reused; make a new release".into()),
            }),
            _ => Ok(()),
        }
    }

    fn manifest(&self, pipeline: &str, release: u64) -> Result<Option<SignedManifest>, FleetError> {
        let body: Option<String> = self.with(|c| {
            c.prepare_cached("SELECT body FROM manifests WHERE pipeline = ?1 AND release = ?2")?
                .query_row(params![pipeline, release as i64], |r| r.get(0))
                .optional()
        })?;
        body.map(|b| serde_json::from_str(&b).map_err(|e| self.err(e)))
            .transpose()
    }

    fn create_rollout(
        &self,
        pipeline: &str,
        release: u64,
        rollback: Option<u64>,
        policy: &Policy,
        now: i64,
        reason: &str,
    ) -> Result<i64, FleetError> {
        let policy = serde_json::to_string(policy).expect("policies serialize");
        let created = self.with(|c| {
            let tx = c.transaction()?;
            let active: Option<i64> = tx
                .query_row(
                    "SELECT id FROM rollouts WHERE pipeline = ?1 AND state IN ('running', 'paused')",
                    params![pipeline],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(active) = active {
                return Ok(Err(active));
            }
            tx.execute(
                "INSERT INTO rollouts (pipeline, release, rollback, policy, state, stage, stage_started_ms)
                 VALUES (?1, ?2, ?3, ?4, 'running', 0, ?5)",
                params![pipeline, release as i64, rollback.map(|r| r as i64), policy, now],
            )?;
            let id = tx.last_insert_rowid();
            audit_insert(&tx, now, id, "start", reason)?;
            tx.commit()?;
            Ok(Ok(id))
        })?;
        created.map_err(|active| FleetError::Refused {
            status: 409,
            message: format!("rollout {active} of {pipeline} is still active"),
            help: Some(format!(
                "finish it, or stop it with `edgebuild rollout abort {active}`"
            )),
        })
    }

    fn rollout(&self, id: i64) -> Result<Option<RolloutRow>, FleetError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let conn = &mut *conn;
        conn.query_row(
            &format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?1"),
            params![id],
            |r| self.row_to_rollout(r),
        )
        .optional()
        .map_err(|e| self.err(e))
    }

    fn rollouts(&self, pipeline: Option<&str>) -> Result<Vec<RolloutRow>, FleetError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut statement = conn
            .prepare_cached(&format!(
                "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE ?1 IS NULL OR pipeline = ?1 ORDER BY id DESC"
            ))
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map(params![pipeline], |r| self.row_to_rollout(r))
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.err(e))
    }

    fn transition(&self, t: &Transition, now: i64) -> Result<bool, FleetError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let changed = tx.execute(
                "UPDATE rollouts SET state = ?1, stage = ?2,
                     stage_started_ms = CASE WHEN ?3 THEN ?4 ELSE stage_started_ms END
                 WHERE id = ?5 AND state = ?6 AND stage = ?7",
                params![
                    t.to.as_str(),
                    t.stage as i64,
                    t.restart_clock,
                    now,
                    t.id,
                    t.from.as_str(),
                    t.from_stage as i64
                ],
            )?;
            if changed == 0 {
                return Ok(false);
            }
            audit_insert(&tx, now, t.id, t.event, t.reason)?;
            tx.commit()?;
            Ok(true)
        })
    }

    fn audit(&self, rollout: Option<i64>) -> Result<Vec<AuditEntry>, FleetError> {
        self.with(|c| {
            let mut statement = c.prepare_cached(
                "SELECT at_ms, rollout, event, reason FROM audit
                 WHERE ?1 IS NULL OR rollout = ?1 ORDER BY id",
            )?;
            let rows = statement.query_map(params![rollout], |r| {
                Ok(AuditEntry {
                    at_ms: r.get(0)?,
                    rollout: r.get(1)?,
                    event: r.get(2)?,
                    reason: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    fn untargeted(&self, rollout: i64) -> Result<Vec<String>, FleetError> {
        self.with(|c| {
            let mut statement = c.prepare_cached(
                "SELECT id FROM devices WHERE revoked = 0 AND id NOT IN
                     (SELECT device FROM targets WHERE rollout = ?1) ORDER BY id",
            )?;
            let rows = statement.query_map(params![rollout], |r| r.get(0))?;
            rows.collect()
        })
    }

    fn add_targets(
        &self,
        rollout: i64,
        stage: usize,
        devices: &[String],
        now: i64,
    ) -> Result<(), FleetError> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO targets (rollout, device, stage, targeted_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for device in devices {
                    insert.execute(params![rollout, device, stage as i64, now])?;
                }
            }
            tx.commit()
        })
    }

    fn is_targeted(&self, rollout: i64, device: &str) -> Result<bool, FleetError> {
        self.with(|c| {
            c.prepare_cached("SELECT 1 FROM targets WHERE rollout = ?1 AND device = ?2")?
                .query_row(params![rollout, device], |_| Ok(()))
                .optional()
                .map(|r| r.is_some())
        })
    }

    fn targets(&self, rollout: &RolloutRow) -> Result<Vec<TargetRow>, FleetError> {
        let release = rollout.release as i64;
        let rollback = rollout.rollback.map(|r| r as i64);
        self.with(|c| {
            let mut statement = c.prepare_cached(
                "SELECT t.device, t.stage, t.targeted_ms,
                    (SELECT MAX(rank) FROM reports r
                       WHERE r.device = t.device AND r.pipeline = ?2 AND r.release = ?3),
                    (SELECT MAX(rank) FROM reports r
                       WHERE r.device = t.device AND r.pipeline = ?2 AND r.release = ?4),
                    (SELECT mean_confidence FROM telemetry m
                       WHERE m.device = t.device AND m.pipeline = ?2 AND m.release < ?3
                       ORDER BY m.release DESC LIMIT 1),
                    (SELECT mean_confidence FROM telemetry m
                       WHERE m.device = t.device AND m.pipeline = ?2 AND m.release = ?3)
                 FROM targets t JOIN devices d ON d.id = t.device
                 WHERE t.rollout = ?1 AND d.revoked = 0 ORDER BY t.device",
            )?;
            let rows = statement.query_map(
                params![rollout.id, rollout.pipeline, release, rollback],
                |r| {
                    Ok(TargetRow {
                        device: r.get(0)?,
                        stage: r.get::<_, i64>(1)? as usize,
                        targeted_ms: r.get(2)?,
                        state: state_of_rank(r.get(3)?),
                        rollback_state: state_of_rank(r.get(4)?),
                        baseline_confidence: r.get(5)?,
                        new_confidence: r.get(6)?,
                    })
                },
            )?;
            rows.collect()
        })
    }

    fn record_report(&self, device: &str, report: &Report, now: i64) -> Result<bool, FleetError> {
        self.with(|c| {
            c.prepare_cached(
                "INSERT OR IGNORE INTO reports (device, pipeline, release, rank, at_ms, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                device,
                report.pipeline,
                report.release as i64,
                rank(report.state),
                now,
                report.detail
            ])
            .map(|n| n > 0)
        })
    }

    fn record_telemetry(&self, device: &str, telemetry: &Telemetry) -> Result<(), FleetError> {
        self.with(|c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO telemetry (device, pipeline, release, samples, mean_confidence)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                device,
                telemetry.pipeline,
                telemetry.release as i64,
                telemetry.samples as i64,
                telemetry.mean_confidence
            ])
            .map(drop)
        })
    }

    fn stats(&self) -> Result<Stats, FleetError> {
        self.with(|c| {
            let count = |sql: &str| {
                c.query_row(sql, [], |r| r.get::<_, i64>(0))
                    .map(|n| n as u64)
            };
            Ok(Stats {
                devices: count("SELECT COUNT(*) FROM devices")?,
                revoked: count("SELECT COUNT(*) FROM devices WHERE revoked = 1")?,
                reports: count("SELECT COUNT(*) FROM reports")?,
                telemetry: count("SELECT COUNT(*) FROM telemetry")?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(release: u64, state: DeviceState) -> Report {
        Report {
            pipeline: "p".into(),
            release,
            state,
            detail: None,
        }
    }

    #[test]
    fn reports_are_idempotent_and_reordering_keeps_the_furthest_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("f.sqlite"), true).unwrap();
        let tokens = store.enroll(&["d1".into()], 0).unwrap();
        assert_eq!(
            store
                .device_for(&super::super::token_hash(&tokens[0].1))
                .unwrap(),
            Some("d1".into())
        );
        assert!(store.enroll(&["d1".into()], 0).is_err(), "enrolled once");
        let policy = super::super::policy::parse(
            "p",
            "version: 1\nstages: [{percent: 100}]\nabort: {min_reports: 1, max_failure_rate: 0.5, confirm_timeout: 1m, max_confidence_drop: 0.1}\n",
        )
        .unwrap();
        let id = store
            .create_rollout("p", 2, None, &policy, 0, "test")
            .unwrap();
        assert!(
            store
                .create_rollout("p", 2, None, &policy, 0, "again")
                .is_err()
        );
        store.add_targets(id, 0, &["d1".into()], 0).unwrap();
        // Confirmed arrives before installed, and twice.
        assert!(
            store
                .record_report("d1", &report(2, DeviceState::Confirmed), 1)
                .unwrap()
        );
        assert!(
            !store
                .record_report("d1", &report(2, DeviceState::Confirmed), 2)
                .unwrap()
        );
        assert!(
            store
                .record_report("d1", &report(2, DeviceState::Installed), 3)
                .unwrap()
        );
        let row = store.rollout(id).unwrap().unwrap();
        let targets = store.targets(&row).unwrap();
        assert_eq!(targets[0].state, Some(DeviceState::Confirmed));
        assert_eq!(store.stats().unwrap().reports, 2);
        // A transition decided on an old view (another stage, another state) changes nothing.
        let stale = Transition {
            id,
            from: RolloutState::Running,
            from_stage: 1,
            to: RolloutState::Paused,
            stage: 1,
            restart_clock: false,
            event: "pause",
            reason: "late",
        };
        assert!(!store.transition(&stale, 5).unwrap());
        assert!(
            store
                .transition(
                    &Transition {
                        from_stage: 0,
                        stage: 0,
                        ..stale.clone()
                    },
                    5
                )
                .unwrap()
        );
        assert!(
            !store
                .transition(
                    &Transition {
                        from_stage: 0,
                        stage: 0,
                        ..stale
                    },
                    6
                )
                .unwrap()
        );
        assert_eq!(
            store.audit(Some(id)).unwrap().len(),
            2,
            "start and one pause"
        );
        // A revoked device's token opens nothing, and it leaves the rollout's counts.
        assert!(store.revoke("d1").unwrap());
        assert!(store.targets(&row).unwrap().is_empty());
        assert_eq!(
            store
                .device_for(&super::super::token_hash(&tokens[0].1))
                .unwrap(),
            None
        );
    }
}

//! `edgebuild fleet serve`: the fleet's HTTP API (documented in `docs/fleet-openapi.yaml`) and
//! the controller loop, over a [`FleetStore`].
//!
//! Devices authenticate with their own token, operators with the admin token; both travel as
//! `Authorization: Bearer` and are compared by hash. An unknown or revoked device gets nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use ed25519_dalek::VerifyingKey;
use serde::Deserialize;

use super::store::{FleetStore, Transition};
use super::{FleetError, Report, StartRollout, Telemetry, controller, now_ms, token_hash};
use crate::release::SignedManifest;
use edgebuild_engine::hash::Digest;

/// Every route: method and path, as `docs/fleet-openapi.yaml` documents them (a test checks).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/v1/device/assignment"),
    ("post", "/v1/device/reports"),
    ("post", "/v1/device/telemetry"),
    ("get", "/v1/artifacts/{sha256}"),
    ("put", "/v1/admin/artifacts/{sha256}"),
    ("post", "/v1/admin/devices"),
    ("delete", "/v1/admin/devices/{id}"),
    ("post", "/v1/admin/rollouts"),
    ("get", "/v1/admin/rollouts"),
    ("get", "/v1/admin/rollouts/{id}"),
    ("post", "/v1/admin/rollouts/{id}/{action}"),
    ("get", "/v1/admin/stats"),
];

struct AppState {
    store: Arc<dyn FleetStore>,
    key: VerifyingKey,
}

type Shared = State<Arc<AppState>>;

/// An HTTP error with a JSON body `{"error": ...}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.1 }).to_string();
        (self.0, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        match e {
            FleetError::Refused {
                status, message, ..
            } => ApiError(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                message,
            ),
            FleetError::Usage(message, _) => ApiError(StatusCode::BAD_REQUEST, message),
            other => ApiError(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

fn json(value: &impl serde::Serialize) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(value).expect("responses serialize"),
    )
        .into_response()
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid request body: {e}")))
}

/// Runs store work off the async threads.
async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    work: impl FnOnce(&dyn FleetStore) -> Result<T, FleetError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || work(&*store))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_string())
}

/// Who made a request, as the auth layer found it.
#[derive(Clone)]
enum Caller {
    Admin,
    Device(String),
}

/// Which tokens a group of routes takes.
#[derive(Clone, Copy, PartialEq)]
enum Needs {
    Admin,
    Device,
    Either,
}

/// Checks the token before anything else of the request (its body above all) is read.
async fn authenticate(
    State((state, needs)): State<(Arc<AppState>, Needs)>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    let token = bearer(request.headers());
    let caller = blocking(&state, move |store| {
        let Some(token) = token else {
            return Ok(None);
        };
        let hash = token_hash(&token);
        if needs != Needs::Device && store.is_admin(&hash)? {
            return Ok(Some(Caller::Admin));
        }
        if needs != Needs::Admin {
            return Ok(store.device_for(&hash)?.map(Caller::Device));
        }
        Ok(None)
    })
    .await?;
    let Some(caller) = caller else {
        let message = match needs {
            Needs::Admin => "an admin token is required",
            _ => "unknown, revoked or missing token",
        };
        return Err(ApiError(StatusCode::UNAUTHORIZED, message.into()));
    };
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// The device a request comes from (routes behind the device layer admit devices only).
fn device_of(caller: &Caller) -> String {
    match caller {
        Caller::Device(id) => id.clone(),
        Caller::Admin => String::new(),
    }
}

/// The router, for `serve` and for tests.
/// The HTTP API over `store`, without the controller: what [`serve`] serves, and what the fuzz
/// harness sends request bodies to (SPEC.md, "Fuzzing").
pub fn app(store: Arc<dyn FleetStore>, key: VerifyingKey) -> Router {
    router(Arc::new(AppState { store, key }))
}

fn router(state: Arc<AppState>) -> Router {
    let layer = |needs| axum::middleware::from_fn_with_state((state.clone(), needs), authenticate);
    let device = Router::new()
        .route("/v1/device/assignment", get(assignment))
        .route("/v1/device/reports", post(report))
        .route("/v1/device/telemetry", post(telemetry))
        .route_layer(layer(Needs::Device));
    let either = Router::new()
        .route("/v1/artifacts/{sha256}", get(artifact))
        .route_layer(layer(Needs::Either));
    let admin = Router::new()
        .route("/v1/admin/artifacts/{sha256}", put(upload_artifact))
        .route("/v1/admin/devices", post(enroll))
        .route("/v1/admin/devices/{id}", delete(revoke))
        .route("/v1/admin/rollouts", post(start).get(list))
        .route("/v1/admin/rollouts/{id}", get(rollout_status))
        .route("/v1/admin/rollouts/{id}/{action}", post(rollout_action))
        .route("/v1/admin/stats", get(stats))
        .route_layer(layer(Needs::Admin));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(device)
        .merge(either)
        .merge(admin)
        .with_state(state)
}

#[derive(Deserialize)]
struct PipelineQuery {
    pipeline: String,
}

async fn assignment(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    Query(query): Query<PipelineQuery>,
) -> Result<Response, ApiError> {
    let device = device_of(&caller);
    let manifest = blocking(&state, move |store| {
        controller::assignment(store, &device, &query.pipeline)
    })
    .await?;
    Ok(match manifest {
        Some(manifest) => json(&super::Assignment { manifest }),
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

async fn report(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let device = device_of(&caller);
    let report: Report = parse_json(&body)?;
    let recorded = blocking(&state, move |store| {
        if store.manifest(&report.pipeline, report.release)?.is_none() {
            return Err(FleetError::Refused {
                status: 404,
                message: format!("no release {} of {}", report.release, report.pipeline),
                help: None,
            });
        }
        store.record_report(&device, &report, now_ms())
    })
    .await?;
    Ok(json(&serde_json::json!({ "recorded": recorded })))
}

async fn telemetry(
    State(state): Shared,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let device = device_of(&caller);
    let telemetry: Telemetry = parse_json(&body)?;
    if !(0.0..=1.0).contains(&telemetry.mean_confidence) || telemetry.samples == 0 {
        return Err(bad_request(
            "mean_confidence is a probability over at least one sample",
        ));
    }
    blocking(&state, move |store| {
        if store
            .manifest(&telemetry.pipeline, telemetry.release)?
            .is_none()
        {
            return Err(FleetError::Refused {
                status: 404,
                message: format!("no release {} of {}", telemetry.release, telemetry.pipeline),
                help: None,
            });
        }
        store.record_telemetry(&device, &telemetry)
    })
    .await?;
    Ok(json(&serde_json::json!({ "recorded": true })))
}

async fn artifact(State(state): Shared, Path(sha256): Path<String>) -> Result<Response, ApiError> {
    let bytes = blocking(&state, move |store| store.blob(&sha256)).await?;
    match bytes {
        Some(bytes) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        None => Err(ApiError(StatusCode::NOT_FOUND, "no such artifact".into())),
    }
}

/// The largest artifact the server accepts (SPEC.md, "Limits").
pub const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// An artifact upload, streamed: the body goes to a temporary file as it arrives, hashed on the
/// way, and only bytes that hash to the artifact's name reach the database, in pieces. Memory
/// stays bounded by one network frame whatever the artifact's size.
async fn upload_artifact(
    State(state): Shared,
    Path(sha256): Path<String>,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    use axum::body::HttpBody;
    use sha2::Digest as _;
    use std::io::{Seek, Write};
    if Digest::parse(&sha256).is_none() {
        return Err(bad_request(
            "an artifact is named by its SHA-256 (64 hex digits)",
        ));
    }
    let internal = |e: std::io::Error| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let mut file = tempfile::tempfile().map_err(internal)?;
    let mut hasher = sha2::Sha256::new();
    let mut len: u64 = 0;
    let mut body = std::pin::pin!(body);
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| bad_request(format!("cannot read the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len() as u64;
        if len > MAX_ARTIFACT_BYTES {
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("an artifact may hold at most {MAX_ARTIFACT_BYTES} bytes"),
            ));
        }
        hasher.update(&data);
        file.write_all(&data).map_err(internal)?;
    }
    if hex::encode(hasher.finalize()) != sha256 {
        return Err(bad_request("the artifact's bytes do not hash to its name"));
    }
    file.rewind().map_err(internal)?;
    blocking(&state, move |store| {
        store.put_blob_from(&sha256, &mut file, len)
    })
    .await?;
    Ok(StatusCode::CREATED.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Enroll {
    devices: Vec<String>,
}

async fn enroll(State(state): Shared, body: Bytes) -> Result<Response, ApiError> {
    let request: Enroll = parse_json(&body)?;
    if let Some(bad) = request.devices.iter().find(|d| {
        d.is_empty()
            || d.len() > 128
            || d.chars().all(|c| c == '.')
            || !d
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    }) {
        return Err(bad_request(format!(
            "device id `{bad}`: use 1 to 128 letters, digits, `-`, `_`, `.` or `:`, not only dots"
        )));
    }
    let tokens = blocking(&state, move |store| {
        store.enroll(&request.devices, now_ms())
    })
    .await?;
    let tokens: std::collections::BTreeMap<String, String> = tokens.into_iter().collect();
    Ok(json(&serde_json::json!({ "tokens": tokens })))
}

async fn revoke(State(state): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let found = blocking(&state, move |store| store.revoke(&id)).await?;
    if !found {
        return Err(ApiError(StatusCode::NOT_FOUND, "no such device".into()));
    }
    Ok(json(&serde_json::json!({ "revoked": true })))
}

/// The server's checks of a manifest it is given: signed by the release key, and every artifact
/// on the server with its hash.
fn check_manifest(
    store: &dyn FleetStore,
    key: &VerifyingKey,
    signed: &SignedManifest,
) -> Result<(), FleetError> {
    let blobs = |a: &crate::release::Artifact| store.blob(&a.sha256.hex()).ok().flatten();
    signed
        .verify(key, None, &blobs)
        .map_err(|e| FleetError::Refused {
            status: 400,
            message: format!("release {}: {e}", signed.manifest.release),
            help: Some(
                "upload the artifacts first, and sign with the key the server trusts".into(),
            ),
        })
}

async fn start(State(state): Shared, body: Bytes) -> Result<Response, ApiError> {
    let request: StartRollout = parse_json(&body)?;
    let key = state.key;
    let id = blocking(&state, move |store| {
        let refuse = |message: String| FleetError::Refused {
            status: 400,
            message,
            help: None,
        };
        let manifest = &request.manifest.manifest;
        if manifest.kind != "release" {
            return Err(refuse(format!(
                "release {} is a {}, not a release",
                manifest.release, manifest.kind
            )));
        }
        check_manifest(store, &key, &request.manifest)?;
        if let Some(back) = &request.rollback {
            let b = &back.manifest;
            if b.kind != "rollback"
                || b.pipeline != manifest.pipeline
                || b.release != manifest.release + 1
            {
                return Err(refuse(format!(
                    "release {} of {} is not the rollback of release {}",
                    b.release, b.pipeline, manifest.release
                )));
            }
            check_manifest(store, &key, back)?;
            let target = b.rollback_to.unwrap_or_default();
            if let Some(bad) = store
                .rollouts(Some(&manifest.pipeline))?
                .into_iter()
                .find(|r| {
                    r.release == target
                        && matches!(
                            r.state,
                            super::RolloutState::RolledBack | super::RolloutState::Aborted
                        )
                })
            {
                return Err(FleetError::Refused {
                    status: 400,
                    message: format!(
                        "the rollback of release {} returns to release {target}, which rollout {} stopped ({})",
                        manifest.release,
                        bad.id,
                        bad.state.as_str()
                    ),
                    help: Some(format!(
                        "make the release again with `edgebuild release {} --version V --rollback-to N`, N a release that completed",
                        manifest.pipeline
                    )),
                });
            }
        }
        // Rollback protection on the server too: releases only move forward.
        if let Some(newest) = store
            .rollouts(Some(&manifest.pipeline))?
            .iter()
            .map(|r| r.rollback.unwrap_or(r.release).max(r.release))
            .max()
            && manifest.release <= newest
        {
            return Err(FleetError::Refused {
                status: 409,
                message: format!(
                    "release {} of {} is not newer than release {newest}, already sent to devices",
                    manifest.release, manifest.pipeline
                ),
                help: Some("devices refuse older releases; to go back, roll back (`edgebuild rollout rollback ID`) or release the old model under a new number".into()),
            });
        }
        let policy = super::policy::parse("policy", &request.policy)
            .map_err(|e| refuse(format!("rollout policy: {e}")))?;
        store.put_manifest(&request.manifest)?;
        if let Some(back) = &request.rollback {
            store.put_manifest(back)?;
        }
        store.create_rollout(
            &manifest.pipeline,
            manifest.release,
            request.rollback.as_ref().map(|b| b.manifest.release),
            &policy,
            now_ms(),
            &format!(
                "release {} ({} {}) in {} stage(s): {}",
                manifest.release,
                manifest.pipeline,
                manifest.version,
                policy.stages.len(),
                policy
                    .stages
                    .iter()
                    .map(|s| format!("{}%", s.percent))
                    .collect::<Vec<_>>()
                    .join(" -> ")
            ),
        )
    })
    .await?;
    Ok((StatusCode::CREATED, json(&serde_json::json!({ "id": id }))).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    pipeline: Option<String>,
}

async fn list(State(state): Shared, Query(query): Query<ListQuery>) -> Result<Response, ApiError> {
    let statuses = blocking(&state, move |store| {
        let now = now_ms();
        store
            .rollouts(query.pipeline.as_deref())?
            .iter()
            .map(|r| controller::status(store, r, now))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(json(&statuses))
}

fn find(store: &dyn FleetStore, id: i64) -> Result<super::store::RolloutRow, FleetError> {
    store.rollout(id)?.ok_or(FleetError::Refused {
        status: 404,
        message: format!("no rollout {id}"),
        help: None,
    })
}

async fn rollout_status(State(state): Shared, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let status = blocking(&state, move |store| {
        controller::status(store, &find(store, id)?, now_ms())
    })
    .await?;
    Ok(json(&status))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn rollout_action(
    State(state): Shared,
    Path((id, action)): Path<(i64, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    use super::RolloutState::*;
    let request: ActionBody = if body.is_empty() {
        ActionBody::default()
    } else {
        parse_json(&body)?
    };
    let status = blocking(&state, move |store| {
        let rollout = find(store, id)?;
        let reason = format!(
            "operator: {}",
            request.reason.as_deref().unwrap_or("no reason given")
        );
        let now = now_ms();
        let done = match (action.as_str(), rollout.state) {
                        ("pause", Running) | ("resume", Paused) => {
                let to = if rollout.state == Running { Paused } else { Running };
                let change = Transition {
                    id,
                    from: rollout.state,
                    from_stage: rollout.stage,
                    to,
                    stage: rollout.stage,
                    // Time spent paused is not soak time.
                                        restart_clock: to == Running,
                    event: &action,
                    reason: &reason,
                };
                store.transition(&change, now)?
            }
            ("abort", Running | Paused) => controller::stop(store, &rollout, now, &reason)?,
            ("rollback", Completed) if rollout.rollback.is_some() => {
                let newest = store.rollouts(Some(&rollout.pipeline))?.first().map(|r| r.id);
                if newest != Some(id) {
                    return Err(FleetError::Refused {
                        status: 409,
                        message: format!(
                            "rollout {id} is not the newest of {}: rollout {} decides what devices run",
                            rollout.pipeline,
                            newest.unwrap_or_default()
                        ),
                        help: Some("roll back the newest rollout".into()),
                    });
                }
                // Every device runs the release now, those enrolled since included.
                store.add_targets(id, rollout.stage, &store.untargeted(id)?, now)?;
                controller::stop(store, &rollout, now, &reason)?
            }
            ("pause" | "resume" | "abort" | "rollback", state) => {
                return Err(FleetError::Refused {
                    status: 409,
                    message: format!(
                        "cannot {action} rollout {id}: it is {}{}",
                        state.as_str(),
                        if action == "rollback" && rollout.rollback.is_none() {
                            " and has no rollback manifest"
                        } else {
                            ""
                        }
                    ),
                    help: Some("pause a running rollout, resume a paused one, abort an active one, roll back a completed one".into()),
                });
            }
            _ => {
                return Err(FleetError::Refused {
                    status: 404,
                    message: format!("unknown action `{action}`"),
                    help: None,
                });
            }
        };
        if !done {
            return Err(FleetError::Refused {
                status: 409,
                message: format!("rollout {id} changed meanwhile; look at its status"),
                help: None,
            });
        }
        controller::status(store, &find(store, id)?, now)
    })
    .await?;
    Ok(json(&status))
}

async fn stats(State(state): Shared) -> Result<Response, ApiError> {
    let stats = blocking(&state, move |store| store.stats()).await?;
    Ok(json(&stats))
}

/// Serves until Ctrl-C or SIGTERM, running the controller every `tick`. Prints the address it
/// listens on (useful with port 0).
pub fn serve(
    store: Arc<dyn FleetStore>,
    key: VerifyingKey,
    listen: SocketAddr,
    tick: Duration,
) -> Result<(), FleetError> {
    serve_with(store, key, listen, tick, controller::tick)
}

/// What the controller runs at each tick.
pub type TickFn = fn(&dyn FleetStore, i64) -> Result<(), FleetError>;

/// [`serve`] with the controller's tick function given: a controller that dies (a panic) takes
/// the server down with it, so no rollout is ever left unwatched behind a healthy `/healthz`.
pub fn serve_with(
    store: Arc<dyn FleetStore>,
    key: VerifyingKey,
    listen: SocketAddr,
    tick: Duration,
    tick_fn: TickFn,
) -> Result<(), FleetError> {
    if tick.is_zero() {
        return Err(FleetError::Usage(
            "the controller's tick must be at least 1ms".into(),
            None,
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| FleetError::Usage(format!("cannot start the server: {e}"), None))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| FleetError::Usage(format!("cannot listen on {listen}: {e}"), None))?;
        let address = listener
            .local_addr()
            .map_err(|e| FleetError::Usage(format!("cannot listen on {listen}: {e}"), None))?;
        println!("edgebuild fleet server listening on http://{address}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let state = Arc::new(AppState {
            store: store.clone(),
            key,
        });
        let mut controller = tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let store = store.clone();
                let result = tokio::task::spawn_blocking(move || tick_fn(&*store, now_ms())).await;
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => eprintln!("controller: {e}"),
                    Err(e) => return e.to_string(),
                }
            }
        });
        let died = Arc::new(std::sync::Mutex::new(None));
        let died_in = died.clone();
        let shutdown = async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler installs");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                ended = &mut controller => {
                    let why = match ended {
                        Ok(why) => why,
                        Err(e) => e.to_string(),
                    };
                    eprintln!("controller: {why}; the server stops");
                    *died_in.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                }
            }
            controller.abort();
        };
        let served = axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown)
            .await;
        if let Some(why) = died.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(FleetError::ControllerDied(why));
        }
        served.map_err(|e| FleetError::Usage(format!("server error: {e}"), None))
    })
}

#[cfg(test)]
mod tests {
    use super::ROUTES;

    #[test]
    fn a_dead_controller_takes_the_server_down() {
        use super::*;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SqliteStore::open(&dir.path().join("f.sqlite"), true).unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        fn broken(_: &dyn FleetStore, _: i64) -> Result<(), FleetError> {
            panic!("a controller bug")
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let listen = "127.0.0.1:0".parse().unwrap();
            let _ = tx.send(serve_with(
                Arc::new(store),
                key,
                listen,
                Duration::from_millis(10),
                broken,
            ));
        });
        let served = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the server stops when its controller dies");
        assert!(
            matches!(served, Err(FleetError::ControllerDied(_))),
            "{served:?}"
        );
    }

    #[test]
    fn the_openapi_document_names_every_route_and_no_other() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/fleet-openapi.yaml");
        let doc: serde_json::Value =
            serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut documented = Vec::new();
        for (route, methods) in doc["paths"].as_object().unwrap() {
            for method in methods.as_object().unwrap().keys() {
                documented.push((method.as_str(), route.as_str()));
            }
        }
        documented.sort();
        let mut served = ROUTES.to_vec();
        served.sort();
        assert_eq!(documented, served);
    }
}

//! The remote executor: stages run on a Remote Execution API v2 server (NativeLink, Buildbarn,
//! BuildGrid, BuildBuddy, buildbox-casd), through the `bazel-remote-apis` crate's gRPC stubs.
//!
//! A stage becomes a `Command` (`sh -c` and its expanded command, or the edgebuild binary running
//! the op from a serialized description), an input root of canonical `Directory` messages made
//! of its declared inputs only (SHA-256, the digests of the local store), and an `Action` with
//! its platform properties. The sequence: `GetCapabilities` once; `GetActionResult` (the remote
//! action cache); `FindMissingBlobs`; `BatchUpdateBlobs` for small blobs and ByteStream writes for
//! those above the batch limit; `Execute`, resumed with `WaitExecution` when its stream drops;
//! outputs downloaded with `BatchReadBlobs` or ByteStream, checked against their digests and only
//! then written into the workspace, where the scheduler stores them as for a local run. Transient
//! faults are retried with backoff; what still fails names the stage and the server's status, or
//! runs locally with `--remote-exec-fallback`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream;
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::Channel;

use crate::exec::{ExecFailure, ExecSuccess, Executor, Job, RemoteRun};
use crate::hash::Digest;
use crate::ops::OpOutcome;
use crate::spec::Action;

/// The environment variable naming the executor (`grpc://HOST:PORT` or `grpcs://`).
pub const EXEC_ENV: &str = "EDGEBUILD_REMOTE_EXEC";
/// A bearer token sent as `authorization` (never printed).
pub const TOKEN_ENV: &str = "EDGEBUILD_REMOTE_EXEC_TOKEN";
/// Other headers: `EDGEBUILD_REMOTE_EXEC_HEADER_X_API_KEY=...` sends `x-api-key`.
pub const HEADER_ENV_PREFIX: &str = "EDGEBUILD_REMOTE_EXEC_HEADER_";
/// The batch limit when the server sets none.
const DEFAULT_BATCH_LIMIT: usize = 4_000_000;
/// ByteStream chunk size.
const CHUNK: usize = 1 << 20;
/// The `PATH` remote commands get: a worker's, not this machine's, so keys match everywhere.
pub const REMOTE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The largest message edgebuild reads; batches stay well below it.
const MAX_MESSAGE: usize = 64 << 20;
/// Attempts of one call before giving up.
const ATTEMPTS: u32 = 4;

/// How to reach the executor.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteExecSettings {
    pub url: Option<String>,
    #[serde(default)]
    pub instance: String,
    /// Remote actions (uploads, executions) in flight at once.
    #[serde(default)]
    pub jobs: Option<usize>,
    /// Run a stage locally when the executor fails it for reasons of its own.
    #[serde(default)]
    pub fallback: bool,
}

/// What the remote executor did in a build, for `build --json`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RemoteStats {
    /// `Execute` calls (including retries).
    pub executions: u64,
    /// Stages served by the remote action cache without executing.
    pub action_cache_hits: u64,
    pub blobs_uploaded: u64,
    pub bytes_uploaded: u64,
    /// Blobs uploaded with ByteStream (above the batch limit).
    pub bytestream_uploads: u64,
    pub blobs_downloaded: u64,
    /// Stages run locally after the executor failed them (`--remote-exec-fallback`).
    pub fallbacks: u64,
}

#[derive(Default)]
struct Counters {
    executions: AtomicU64,
    action_cache_hits: AtomicU64,
    blobs_uploaded: AtomicU64,
    bytes_uploaded: AtomicU64,
    bytestream_uploads: AtomicU64,
    blobs_downloaded: AtomicU64,
    fallbacks: AtomicU64,
}

/// An op as the worker runs it: `edgebuild run-op .edgebuild/stage.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct OpDescription {
    pub stage: String,
    pub op: String,
    pub inputs: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, String>,
    pub params: serde_json::Value,
}

/// Where the edgebuild binary and an op's description sit in the input root.
const TOOL_DIR: &str = ".edgebuild-remote";

/// An error of the executor (not of the stage): the server's status, after retries.
#[derive(Debug)]
struct Fault(String);

impl From<tonic::Status> for Fault {
    fn from(s: tonic::Status) -> Self {
        Fault(format!("{:?}: {}", s.code(), s.message()))
    }
}

fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        status.code(),
        Unavailable | ResourceExhausted | Aborted | Internal | Unknown | DeadlineExceeded
    )
}

#[derive(Clone)]
struct Headers(Arc<Vec<(AsciiMetadataKey, AsciiMetadataValue)>>);

impl tonic::service::Interceptor for Headers {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        for (key, value) in self.0.iter() {
            request.metadata_mut().insert(key.clone(), value.clone());
        }
        Ok(request)
    }
}

type Intercepted = tonic::service::interceptor::InterceptedService<Channel, Headers>;

/// A blob to upload: bytes in memory or a file.
#[derive(Clone)]
enum Blob {
    Bytes(Arc<Vec<u8>>),
    File(PathBuf),
}

impl Blob {
    fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Blob::Bytes(b) => Ok(b.as_ref().clone()),
            Blob::File(p) => std::fs::read(p),
        }
    }
}

fn digest_of(hash: &Digest, size: u64) -> re::Digest {
    re::Digest {
        hash: hash.hex(),
        size_bytes: size as i64,
    }
}

fn message_digest(message: &impl Message) -> (re::Digest, Vec<u8>) {
    let bytes = message.encode_to_vec();
    (
        digest_of(&Digest::of_bytes(&bytes), bytes.len() as u64),
        bytes,
    )
}

/// A blob's bytes in chunks of [`CHUNK`], as (offset, bytes); a file is read as it goes.
enum Chunks {
    Bytes(Arc<Vec<u8>>, usize),
    File(std::fs::File, usize, usize),
}

impl Chunks {
    fn new(blob: Blob, total: usize) -> std::io::Result<Chunks> {
        Ok(match blob {
            Blob::Bytes(bytes) => Chunks::Bytes(bytes, 0),
            Blob::File(path) => Chunks::File(std::fs::File::open(path)?, 0, total),
        })
    }
}

impl Iterator for Chunks {
    type Item = (usize, Vec<u8>);

    fn next(&mut self) -> Option<(usize, Vec<u8>)> {
        match self {
            Chunks::Bytes(bytes, offset) => {
                // An empty blob is one empty chunk that finishes the write.
                if *offset > bytes.len() || (*offset == bytes.len() && *offset > 0) {
                    return None;
                }
                let end = (*offset + CHUNK).min(bytes.len());
                let item = (*offset, bytes[*offset..end].to_vec());
                *offset = if end == *offset { end + 1 } else { end };
                Some(item)
            }
            Chunks::File(file, offset, total) => {
                if *offset >= *total && *offset > 0 {
                    return None;
                }
                let want = CHUNK.min(*total - *offset);
                let mut data = vec![0; want];
                // A short read (the file shrank) ends the stream; the server then refuses it.
                let read = std::io::Read::read(file, &mut data).ok()?;
                if read == 0 && want > 0 {
                    return None;
                }
                data.truncate(read);
                let item = (*offset, data);
                *offset = if read == 0 { 1 } else { *offset + read };
                Some(item)
            }
        }
    }
}

/// A stage as REAPI messages, with every blob they name.
struct Prepared {
    action: re::Digest,
    blobs: HashMap<String, (re::Digest, Blob)>,
    outputs: Vec<String>,
}

#[derive(Default)]
struct DirBuilder {
    files: BTreeMap<String, re::FileNode>,
    dirs: std::collections::BTreeSet<String>,
}

/// The input root: directories by workspace-relative path ("" is the root).
#[derive(Default)]
struct InputRoot {
    dirs: BTreeMap<String, DirBuilder>,
    blobs: HashMap<String, (re::Digest, Blob)>,
}

impl InputRoot {
    fn ensure_dir(&mut self, rel: &str) {
        if self.dirs.contains_key(rel) {
            return;
        }
        self.dirs.insert(rel.to_string(), DirBuilder::default());
        if !rel.is_empty() {
            let (parent, name) = match rel.rsplit_once('/') {
                Some((p, n)) => (p, n),
                None => ("", rel),
            };
            self.ensure_dir(parent);
            self.dirs
                .get_mut(parent)
                .expect("made above")
                .dirs
                .insert(name.to_string());
        }
    }

    fn add_file(&mut self, rel: &str, blob: Blob, hash: Digest, size: u64, executable: bool) {
        let (parent, name) = match rel.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", rel),
        };
        self.ensure_dir(parent);
        let digest = digest_of(&hash, size);
        self.blobs.insert(hash.hex(), (digest.clone(), blob));
        self.dirs.get_mut(parent).expect("made above").files.insert(
            name.to_string(),
            re::FileNode {
                name: name.to_string(),
                digest: Some(digest),
                is_executable: executable,
                node_properties: None,
            },
        );
    }

    /// Adds a declared input, a file or a whole directory, from the workspace.
    fn add_path(&mut self, root: &Path, rel: &str) -> std::io::Result<()> {
        let path = root.join(rel);
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            self.ensure_dir(rel);
            for entry in walkdir::WalkDir::new(&path).sort_by_file_name() {
                let entry = entry.map_err(std::io::Error::other)?;
                let inner = entry
                    .path()
                    .strip_prefix(root)
                    .expect("under the root")
                    .to_string_lossy()
                    .into_owned();
                if entry.file_type().is_dir() {
                    self.ensure_dir(&inner);
                } else {
                    self.add_workspace_file(root, &inner)?;
                }
            }
            Ok(())
        } else {
            self.add_workspace_file(root, rel)
        }
    }

    fn add_workspace_file(&mut self, root: &Path, rel: &str) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = root.join(rel);
        let (hash, size) = crate::hash::hash_file(&path)?;
        let executable = std::fs::metadata(&path)?.permissions().mode() & 0o111 != 0;
        self.add_file(rel, Blob::File(path), hash, size, executable);
        Ok(())
    }

    /// The canonical `Directory` messages, deepest first; returns the root's digest.
    fn finish(mut self) -> (re::Digest, HashMap<String, (re::Digest, Blob)>) {
        self.ensure_dir("");
        let mut digests: HashMap<String, re::Digest> = HashMap::new();
        let mut paths: Vec<String> = self.dirs.keys().cloned().collect();
        paths.sort_by_key(|p| {
            std::cmp::Reverse(if p.is_empty() {
                0
            } else {
                p.matches('/').count() + 1
            })
        });
        for path in paths {
            let builder = &self.dirs[&path];
            let directory = re::Directory {
                files: builder.files.values().cloned().collect(),
                directories: builder
                    .dirs
                    .iter()
                    .map(|name| {
                        let child = if path.is_empty() {
                            name.clone()
                        } else {
                            format!("{path}/{name}")
                        };
                        re::DirectoryNode {
                            name: name.clone(),
                            digest: Some(digests[&child].clone()),
                        }
                    })
                    .collect(),
                symlinks: Vec::new(),
                node_properties: None,
            };
            let (digest, bytes) = message_digest(&directory);
            self.blobs.insert(
                digest.hash.clone(),
                (digest.clone(), Blob::Bytes(Arc::new(bytes))),
            );
            digests.insert(path, digest);
        }
        (digests.remove("").expect("the root"), self.blobs)
    }
}

/// Runs stages on a REAPI server.
pub struct RemoteExecutor {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    headers: Headers,
    instance: String,
    url: String,
    jobs: Arc<tokio::sync::Semaphore>,
    batch_limit: OnceLock<Result<usize, String>>,
    /// Used for stages with `remote: false`, and with `--remote-exec-fallback`.
    local: Box<dyn Executor + Send>,
    fallback: bool,
    counters: Counters,
    /// The edgebuild binary (for ops), hashed once.
    binary: OnceLock<Result<(PathBuf, Digest, u64), String>>,
    /// Blobs known to be on the server already in this build.
    present: Mutex<std::collections::HashSet<String>>,
    /// Operations running on the server, cancelled on Ctrl-C.
    in_flight: Arc<Mutex<std::collections::BTreeSet<String>>>,
}

impl RemoteExecutor {
    /// Connects lazily to `url` (`grpc://HOST:PORT`, `grpcs://HOST:PORT`).
    pub fn new(
        settings: &RemoteExecSettings,
        local: Box<dyn Executor + Send>,
    ) -> Result<RemoteExecutor, String> {
        let url = settings.url.clone().ok_or("no remote executor URL")?;
        let endpoint_url = if let Some(rest) = url.strip_prefix("grpc://") {
            format!("http://{rest}")
        } else if let Some(rest) = url.strip_prefix("grpcs://") {
            format!("https://{rest}")
        } else {
            return Err(format!(
                "`{}`: the remote executor URL starts with grpc:// or grpcs://",
                crate::remote::redact(&url)
            ));
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the gRPC runtime: {e}"))?;
        let mut endpoint = Channel::from_shared(endpoint_url)
            .map_err(|e| format!("`{}`: {e}", crate::remote::redact(&url)))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if url.starts_with("grpcs://") {
            endpoint = endpoint
                .tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots())
                .map_err(|e| format!("TLS: {e}"))?;
        }
        let channel = {
            let _guard = runtime.enter();
            endpoint.connect_lazy()
        };
        let mut headers = Vec::new();
        if let Ok(token) = std::env::var(TOKEN_ENV) {
            let mut value = AsciiMetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| format!("{TOKEN_ENV} is not a valid header value"))?;
            value.set_sensitive(true);
            headers.push((AsciiMetadataKey::from_static("authorization"), value));
        }
        for (name, value) in std::env::vars() {
            if let Some(header) = name.strip_prefix(HEADER_ENV_PREFIX) {
                let key = AsciiMetadataKey::from_bytes(
                    header.to_lowercase().replace('_', "-").as_bytes(),
                )
                .map_err(|_| format!("{name}: not a valid header name"))?;
                let mut value = AsciiMetadataValue::try_from(value)
                    .map_err(|_| format!("{name}: not a valid header value"))?;
                value.set_sensitive(true);
                headers.push((key, value));
            }
        }
        let jobs = settings.jobs.unwrap_or(8).max(1);
        // Ctrl-C cancels what runs on the server before edgebuild exits.
        let in_flight: Arc<Mutex<std::collections::BTreeSet<String>>> = Arc::default();
        {
            let in_flight = in_flight.clone();
            let channel = channel.clone();
            let headers = Headers(Arc::new(headers.clone()));
            runtime.spawn(async move {
                if tokio::signal::ctrl_c().await.is_err() {
                    return;
                }
                                // A second Ctrl-C does not wait for the cancellations.
                tokio::spawn(async {
                    let _ = tokio::signal::ctrl_c().await;
                    std::process::exit(130);
                });
                let names: Vec<String> = in_flight.lock().expect("in flight").iter().cloned().collect();
                let mut cancels = tokio::task::JoinSet::new();
                for name in names.clone() {
                    let mut client = bazel_remote_apis::google::longrunning::operations_client::OperationsClient::with_interceptor(
                        channel.clone(),
                        headers.clone(),
                    );
                    let request = bazel_remote_apis::google::longrunning::CancelOperationRequest { name };
                    cancels.spawn(async move { client.cancel_operation(request).await.is_ok() });
                }
                let mut cancelled = 0;
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Some(done) = cancels.join_next().await {
                        cancelled += usize::from(matches!(done, Ok(true)));
                    }
                })
                .await;
                eprintln!("interrupted: cancelled {cancelled} of {} remote operation(s)", names.len());
                std::process::exit(130);
            });
        }
        Ok(RemoteExecutor {
            runtime,
            channel,
            headers: Headers(Arc::new(headers)),
            instance: settings.instance.clone(),
            url: crate::remote::redact(&url),
            jobs: Arc::new(tokio::sync::Semaphore::new(jobs)),
            batch_limit: OnceLock::new(),
            local,
            fallback: settings.fallback,
            counters: Counters::default(),
            binary: OnceLock::new(),
            present: Mutex::default(),
            in_flight,
        })
    }

    /// `GetCapabilities`, for `doctor`: what the server offers, or why it cannot be used.
    pub fn probe(&self) -> Result<String, String> {
        self.runtime
            .block_on(self.batch_limit())
            .map(|limit| format!("executes actions, SHA-256, batch limit {limit} bytes"))
            .map_err(|Fault(status)| status)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn stats(&self) -> RemoteStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RemoteStats {
            executions: get(&c.executions),
            action_cache_hits: get(&c.action_cache_hits),
            blobs_uploaded: get(&c.blobs_uploaded),
            bytes_uploaded: get(&c.bytes_uploaded),
            bytestream_uploads: get(&c.bytestream_uploads),
            blobs_downloaded: get(&c.blobs_downloaded),
            fallbacks: get(&c.fallbacks),
        }
    }

    fn cas(
        &self,
    ) -> re::content_addressable_storage_client::ContentAddressableStorageClient<Intercepted> {
        re::content_addressable_storage_client::ContentAddressableStorageClient::with_interceptor(
            self.channel.clone(),
            self.headers.clone(),
        )
        .max_decoding_message_size(MAX_MESSAGE)
    }

    fn action_cache(&self) -> re::action_cache_client::ActionCacheClient<Intercepted> {
        re::action_cache_client::ActionCacheClient::with_interceptor(
            self.channel.clone(),
            self.headers.clone(),
        )
        .max_decoding_message_size(MAX_MESSAGE)
    }

    fn execution(&self) -> re::execution_client::ExecutionClient<Intercepted> {
        re::execution_client::ExecutionClient::with_interceptor(
            self.channel.clone(),
            self.headers.clone(),
        )
        .max_decoding_message_size(MAX_MESSAGE)
    }

    fn bytestream(&self) -> bytestream::byte_stream_client::ByteStreamClient<Intercepted> {
        bytestream::byte_stream_client::ByteStreamClient::with_interceptor(
            self.channel.clone(),
            self.headers.clone(),
        )
        .max_decoding_message_size(MAX_MESSAGE)
    }

    /// Retries a call on transient statuses, with backoff.
    async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match call().await {
                Err(status) if retryable(&status) && attempt < ATTEMPTS => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// `GetCapabilities`, once: SHA-256 and execution must be supported.
    async fn batch_limit(&self) -> Result<usize, Fault> {
        if let Some(known) = self.batch_limit.get() {
            return known.clone().map_err(Fault);
        }
        let instance = self.instance.clone();
        let answer = self
            .retry(|| {
                let mut client = re::capabilities_client::CapabilitiesClient::with_interceptor(
                    self.channel.clone(),
                    self.headers.clone(),
                );
                let instance = instance.clone();
                async move {
                    client
                        .get_capabilities(re::GetCapabilitiesRequest {
                            instance_name: instance,
                        })
                        .await
                }
            })
            .await;
        let result = match answer {
            Err(status) => return Err(Fault::from(status)),
            Ok(response) => {
                let caps = response.into_inner();
                let sha256 = re::digest_function::Value::Sha256 as i32;
                let cache = caps.cache_capabilities.unwrap_or_default();
                let exec = caps.execution_capabilities.unwrap_or_default();
                if !cache.digest_functions.is_empty() && !cache.digest_functions.contains(&sha256) {
                    Err("the server's CAS does not support SHA-256".to_string())
                } else if !exec.exec_enabled {
                    Err("the server does not execute actions (exec_enabled is false)".to_string())
                } else {
                    Ok(match cache.max_batch_total_size_bytes {
                        n if n > 0 => (n as usize).min(MAX_MESSAGE / 2),
                        _ => DEFAULT_BATCH_LIMIT,
                    })
                }
            }
        };
        let _ = self.batch_limit.set(result.clone());
        result.map_err(Fault)
    }

    fn binary(&self) -> Result<(PathBuf, Digest, u64), String> {
        self.binary
            .get_or_init(|| {
                let path = std::env::current_exe()
                    .map_err(|e| format!("cannot find edgebuild itself: {e}"))?;
                let (hash, size) = crate::hash::hash_file(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok((path, hash, size))
            })
            .clone()
    }

    /// The stage as Command, input root and Action.
    fn prepare(&self, job: &Job) -> Result<Prepared, String> {
        let stage = job.stage;
        let mut root = InputRoot::default();
        for input in &stage.inputs {
            root.add_path(job.root, &input.path)
                .map_err(|e| format!("input {}: {e}", input.path))?;
        }
        let arguments = match &stage.action {
            Action::Manual(_) => return Err("a manual stage is signed off, never executed".into()),
            Action::Cmd(_) => vec![
                "sh".to_string(),
                "-c".to_string(),
                job.command.clone().unwrap_or_default(),
            ],
            Action::Op { name, .. } => {
                let (path, hash, size) = self.binary()?;
                root.add_file(
                    &format!("{TOOL_DIR}/edgebuild"),
                    Blob::File(path),
                    hash,
                    size,
                    true,
                );
                let ports = |ports: &[crate::spec::Port]| -> BTreeMap<String, String> {
                    ports
                        .iter()
                        .map(|p| (p.name.clone(), p.path.clone()))
                        .collect()
                };
                let description = OpDescription {
                    stage: stage.id.clone(),
                    op: name.clone(),
                    inputs: ports(&stage.inputs),
                    outputs: ports(&stage.outputs),
                    params: stage.params.clone(),
                };
                let bytes = serde_json::to_vec(&description).expect("descriptions serialize");
                let hash = Digest::of_bytes(&bytes);
                let size = bytes.len() as u64;
                root.add_file(
                    &format!("{TOOL_DIR}/stage.json"),
                    Blob::Bytes(Arc::new(bytes)),
                    hash,
                    size,
                    false,
                );
                vec![
                    format!("{TOOL_DIR}/edgebuild"),
                    "run-op".to_string(),
                    format!("{TOOL_DIR}/stage.json"),
                ]
            }
        };
        let mut environment: BTreeMap<String, String> = job
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string_lossy().into_owned()))
            .collect();
        // A stage that declares PATH gets its value, as locally.
        environment
            .entry("PATH".into())
            .or_insert_with(|| REMOTE_PATH.into());
        let mut outputs: Vec<String> = stage.outputs.iter().map(|p| p.path.clone()).collect();
        outputs.sort();
        let mut properties = stage.platform.clone();
        if matches!(stage.action, Action::Op { .. }) {
            // The op runs this very binary: the worker must be of its OS and architecture.
            for (name, value) in binary_platform() {
                properties
                    .entry(name.to_string())
                    .or_insert_with(|| value.to_string());
            }
        }
        let platform = re::Platform {
            properties: properties
                .into_iter()
                .map(|(name, value)| re::platform::Property { name, value })
                .collect(),
        };
        // `Command.platform` is deprecated for `Action.platform`; older servers still read it.
        #[allow(deprecated)]
        let command = re::Command {
            arguments,
            environment_variables: environment
                .into_iter()
                .map(|(name, value)| re::command::EnvironmentVariable { name, value })
                .collect(),
            output_paths: outputs.clone(),
            platform: Some(platform.clone()),
            ..Default::default()
        };
        let (input_root, mut blobs) = root.finish();
        let (command_digest, command_bytes) = message_digest(&command);
        blobs.insert(
            command_digest.hash.clone(),
            (command_digest.clone(), Blob::Bytes(Arc::new(command_bytes))),
        );
        let action = re::Action {
            command_digest: Some(command_digest),
            input_root_digest: Some(input_root),
            timeout: Some(bazel_remote_apis::google::protobuf::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            // A measurement is taken anew each time: never served from a cache.
            do_not_cache: stage.volatile,
            salt: Vec::new(),
            platform: Some(platform),
        };
        let (action_digest, action_bytes) = message_digest(&action);
        blobs.insert(
            action_digest.hash.clone(),
            (action_digest.clone(), Blob::Bytes(Arc::new(action_bytes))),
        );
        Ok(Prepared {
            action: action_digest,
            blobs,
            outputs,
        })
    }

    /// `FindMissingBlobs`, then uploads what is missing.
    /// With `again`, every blob is sent whatever the server says it has: after an execution
    /// failed on inputs the server could not stage, its own index is not to be trusted.
    async fn upload(
        &self,
        blobs: &HashMap<String, (re::Digest, Blob)>,
        again: bool,
    ) -> Result<(), Fault> {
        let limit = self.batch_limit().await?;
        let wanted: Vec<re::Digest> = {
            let present = self.present.lock().expect("present");
            blobs
                .values()
                .filter(|(d, _)| !present.contains(&d.hash))
                .map(|(d, _)| d.clone())
                .collect()
        };
        if wanted.is_empty() {
            return Ok(());
        }
        let instance = self.instance.clone();
        let missing = match again {
            true => wanted.clone(),
            false => {
                self.retry(|| {
                    let mut cas = self.cas();
                    let request = re::FindMissingBlobsRequest {
                        instance_name: instance.clone(),
                        blob_digests: wanted.clone(),
                        digest_function: re::digest_function::Value::Sha256 as i32,
                    };
                    async move { cas.find_missing_blobs(request).await }
                })
                .await?
                .into_inner()
                .missing_blob_digests
            }
        };
        // Batches for the small blobs; ByteStream for the large ones.
        let mut batch: Vec<re::batch_update_blobs_request::Request> = Vec::new();
        let mut batch_bytes = 0;
        for reported in &missing {
            // Only what was asked about, at the size we know.
            let Some((digest, blob)) = blobs.get(&reported.hash) else {
                continue;
            };
            let size = digest.size_bytes as usize;
            if size + 1024 > limit {
                self.write_bytestream(digest, blob).await?;
                continue;
            }
            if batch_bytes + size + 1024 > limit {
                self.batch_update(std::mem::take(&mut batch)).await?;
                batch_bytes = 0;
            }
            let data = blob
                .read()
                .map_err(|e| Fault(format!("reading an input: {e}")))?;
            batch_bytes += size + 1024;
            batch.push(re::batch_update_blobs_request::Request {
                digest: Some(digest.clone()),
                data,
                compressor: 0,
            });
        }
        self.batch_update(batch).await?;
        let mut present = self.present.lock().expect("present");
        present.extend(wanted.into_iter().map(|d| d.hash));
        Ok(())
    }

    async fn batch_update(
        &self,
        requests: Vec<re::batch_update_blobs_request::Request>,
    ) -> Result<(), Fault> {
        if requests.is_empty() {
            return Ok(());
        }
        let count = requests.len() as u64;
        let bytes: u64 = requests.iter().map(|r| r.data.len() as u64).sum();
        let instance = self.instance.clone();
        let response = self
            .retry(|| {
                let mut cas = self.cas();
                let request = re::BatchUpdateBlobsRequest {
                    instance_name: instance.clone(),
                    requests: requests.clone(),
                    digest_function: re::digest_function::Value::Sha256 as i32,
                };
                async move { cas.batch_update_blobs(request).await }
            })
            .await?
            .into_inner();
        if let Some(bad) = response
            .responses
            .iter()
            .find(|r| r.status.as_ref().is_some_and(|s| s.code != 0))
        {
            let status = bad.status.as_ref().expect("checked");
            return Err(Fault(format!(
                "upload of {} refused: code {} {}",
                bad.digest.as_ref().map_or("?", |d| d.hash.as_str()),
                status.code,
                status.message
            )));
        }
        self.counters
            .blobs_uploaded
            .fetch_add(count, Ordering::Relaxed);
        self.counters
            .bytes_uploaded
            .fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// A ByteStream upload in 1 MiB chunks, read from the file as they are sent (weights are
    /// never held whole in memory).
    async fn write_bytestream(&self, digest: &re::Digest, blob: &Blob) -> Result<(), Fault> {
        let prefix = if self.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.instance)
        };
        let total = digest.size_bytes.max(0) as usize;
        self.retry(|| {
            let resource = format!(
                "{prefix}uploads/{}/blobs/{}/{}",
                uuid(),
                digest.hash,
                digest.size_bytes
            );
            let mut client = self.bytestream();
            let chunks = Chunks::new(blob.clone(), total);
            async move {
                let chunks = chunks
                    .map_err(|e| tonic::Status::internal(format!("reading an input: {e}")))?;
                let requests = chunks.map(move |(offset, data)| bytestream::WriteRequest {
                    resource_name: if offset == 0 {
                        resource.clone()
                    } else {
                        String::new()
                    },
                    write_offset: offset as i64,
                    finish_write: offset + data.len() >= total,
                    data,
                });
                let response = client
                    .write(tokio_stream::iter(requests))
                    .await?
                    .into_inner();
                if response.committed_size != total as i64 && response.committed_size != -1 {
                    return Err(tonic::Status::data_loss(format!(
                        "the server committed {} of {total} bytes",
                        response.committed_size
                    )));
                }
                Ok(())
            }
        })
        .await?;
        self.counters
            .bytestream_uploads
            .fetch_add(1, Ordering::Relaxed);
        self.counters.blobs_uploaded.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_uploaded
            .fetch_add(digest.size_bytes as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Reads blobs by digest, each checked against its hash.
    async fn read_blobs(&self, digests: &[re::Digest]) -> Result<HashMap<String, Vec<u8>>, Fault> {
        let limit = self.batch_limit().await?;
        let mut found = HashMap::new();
        let mut small = Vec::new();
        if let Some(bad) = digests.iter().find(|d| d.size_bytes < 0) {
            return Err(Fault(format!("blob {} has a negative size", bad.hash)));
        }
        for digest in digests {
            if found.contains_key(&digest.hash) {
                continue;
            }
            if digest.size_bytes as usize + 1024 > limit {
                let bytes = self.read_bytestream(digest).await?;
                found.insert(digest.hash.clone(), bytes);
            } else {
                small.push(digest.clone());
            }
        }
        let mut start = 0;
        while start < small.len() {
            let mut end = start;
            let mut total = 0;
            while end < small.len() && total + small[end].size_bytes as usize + 1024 <= limit {
                total += small[end].size_bytes as usize + 1024;
                end += 1;
            }
            let chunk = small[start..end.max(start + 1)].to_vec();
            start = end.max(start + 1);
            let instance = self.instance.clone();
            let response = self
                .retry(|| {
                    let mut cas = self.cas();
                    let request = re::BatchReadBlobsRequest {
                        instance_name: instance.clone(),
                        digests: chunk.clone(),
                        acceptable_compressors: Vec::new(),
                        digest_function: re::digest_function::Value::Sha256 as i32,
                    };
                    async move { cas.batch_read_blobs(request).await }
                })
                .await?
                .into_inner();
            for r in response.responses {
                let digest = r.digest.unwrap_or_default();
                if r.status.as_ref().is_some_and(|s| s.code != 0) {
                    return Err(Fault(format!("blob {} is not on the server", digest.hash)));
                }
                found.insert(digest.hash, r.data);
            }
        }
        for digest in digests {
            let bytes = found
                .get(&digest.hash)
                .ok_or_else(|| Fault(format!("the server did not send blob {}", digest.hash)))?;
            if bytes.len() as i64 != digest.size_bytes
                || Digest::of_bytes(bytes).hex() != digest.hash
            {
                return Err(Fault(format!(
                    "blob {} from the server does not match its digest",
                    digest.hash
                )));
            }
        }
        self.counters
            .blobs_downloaded
            .fetch_add(found.len() as u64, Ordering::Relaxed);
        Ok(found)
    }

    async fn read_bytestream(&self, digest: &re::Digest) -> Result<Vec<u8>, Fault> {
        let prefix = if self.instance.is_empty() {
            String::new()
        } else {
            format!("{}/", self.instance)
        };
        let resource = format!("{prefix}blobs/{}/{}", digest.hash, digest.size_bytes);
        Ok(self
            .retry(|| {
                let mut client = self.bytestream();
                let resource = resource.clone();
                async move {
                    let mut stream = client
                        .read(bytestream::ReadRequest {
                            resource_name: resource,
                            read_offset: 0,
                            read_limit: 0,
                        })
                        .await?
                        .into_inner();
                    let size = digest.size_bytes.max(0) as usize;
                    let mut bytes = Vec::with_capacity(size);
                    while let Some(chunk) = stream.message().await? {
                        bytes.extend_from_slice(&chunk.data);
                        if bytes.len() > size {
                            return Err(tonic::Status::out_of_range(
                                "the server sent more bytes than the blob has",
                            ));
                        }
                    }
                    Ok(bytes)
                }
            })
            .await?)
    }

    /// `Execute`, following its operation stream; `WaitExecution` when the stream drops. A stream
    /// that fails before naming its operation is re-issued (an execution is idempotent by its
    /// action digest).
    async fn execute_action(
        &self,
        action: &re::Digest,
        skip_cache: bool,
    ) -> Result<re::ExecuteResponse, Fault> {
        let instance = self.instance.clone();
        let mut attempt = 0;
        'execute: loop {
            attempt += 1;
            self.counters.executions.fetch_add(1, Ordering::Relaxed);
            let mut stream = self
                .retry(|| {
                    let mut client = self.execution();
                    let request = re::ExecuteRequest {
                        instance_name: instance.clone(),
                        skip_cache_lookup: skip_cache,
                        action_digest: Some(action.clone()),
                        digest_function: re::digest_function::Value::Sha256 as i32,
                        ..Default::default()
                    };
                    async move { client.execute(request).await }
                })
                .await?
                .into_inner();
            let mut name = String::new();
            let mut waits = 0;
            loop {
                match stream.message().await {
                    Ok(Some(operation)) => {
                        // Any progress restores the budget of resumptions.
                        waits = 0;
                        if name.is_empty() && !operation.name.is_empty() {
                            self.in_flight
                                .lock()
                                .expect("in flight")
                                .insert(operation.name.clone());
                        }
                        name = operation.name.clone();
                        if operation.done {
                            self.in_flight.lock().expect("in flight").remove(&name);
                            return finished(operation);
                        }
                    }
                    Err(status) if name.is_empty() && retryable(&status) && attempt < ATTEMPTS => {
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                        continue 'execute;
                    }
                    Ok(None) | Err(_) if !name.is_empty() && waits < ATTEMPTS => {
                        waits += 1;
                        tokio::time::sleep(Duration::from_millis(100 << waits)).await;
                        let mut client = self.execution();
                        match client
                            .wait_execution(re::WaitExecutionRequest { name: name.clone() })
                            .await
                        {
                            Ok(response) => stream = response.into_inner(),
                            Err(status) if retryable(&status) => continue,
                            Err(status) => {
                                return Err(self.abandon(&name, Fault::from(status)).await);
                            }
                        }
                    }
                    Ok(None) if name.is_empty() => {
                        return Err(Fault(
                            "the operation stream ended before naming its operation".into(),
                        ));
                    }
                    Ok(None) => {
                        let fault = Fault(
                            "the operation stream kept dropping before the action finished".into(),
                        );
                        return Err(self.abandon(&name, fault).await);
                    }
                    Err(status) => {
                        let fault = Fault::from(status);
                        return Err(match name.is_empty() {
                            true => fault,
                            false => self.abandon(&name, fault).await,
                        });
                    }
                }
            }
        }
    }

    /// Gives up on an operation: cancels it on the server, best effort.
    async fn abandon(&self, name: &str, fault: Fault) -> Fault {
        self.in_flight.lock().expect("in flight").remove(name);
        let mut client = bazel_remote_apis::google::longrunning::operations_client::OperationsClient::with_interceptor(
            self.channel.clone(),
            self.headers.clone(),
        );
        let request = bazel_remote_apis::google::longrunning::CancelOperationRequest {
            name: name.to_string(),
        };
        let _ =
            tokio::time::timeout(Duration::from_secs(2), client.cancel_operation(request)).await;
        fault
    }

    /// The stage on the server: cached result or execution, outputs written on success.
    async fn run(&self, job: &Job<'_>) -> Result<Result<ExecSuccess, ExecFailure>, Fault> {
        let prepared = self.prepare(job).map_err(Fault)?;
        let _permit = self.jobs.acquire().await.expect("semaphore open");
        let is_gate = matches!(&job.stage.action, Action::Op { name, .. }
            if crate::ops::find(name).is_some_and(|op| op.is_gate()));
        // The action cache first: a result with exit code 0 (or a gate's 3) is as good as a run.
        // A volatile stage (a measurement) is never looked up.
        let mut skip_cache = job.stage.volatile;
        if !job.stage.volatile {
            let instance = self.instance.clone();
            let cached = self
                .retry(|| {
                    let mut client = self.action_cache();
                    let request = re::GetActionResultRequest {
                        instance_name: instance.clone(),
                        action_digest: Some(prepared.action.clone()),
                        inline_stdout: true,
                        inline_stderr: true,
                        digest_function: re::digest_function::Value::Sha256 as i32,
                        ..Default::default()
                    };
                    async move { client.get_action_result(request).await }
                })
                .await;
            let cached = match cached {
                Ok(result) => Some(result.into_inner()),
                Err(status) if status.code() == tonic::Code::NotFound => None,
                Err(status) => return Err(Fault::from(status)),
            };
            if let Some(result) = cached {
                if result.exit_code == 0 || (is_gate && result.exit_code == 3) {
                    match self.collect(job, &prepared, &result).await {
                        Ok(mut done) => {
                            self.counters
                                .action_cache_hits
                                .fetch_add(1, Ordering::Relaxed);
                            done.remote = Some(RemoteRun::ActionCache);
                            return Ok(Ok(done));
                        }
                        Err(_) => self.clear_outputs(job),
                    }
                }
                // A cached result that is a failure, or whose outputs are gone: run it afresh.
                skip_cache = true;
            }
        }
        self.upload(&prepared.blobs, false).await?;
        for attempt in 0..2 {
            let retry_once = |fault: Fault| -> Result<Fault, Fault> {
                match attempt {
                    0 => Ok(fault),
                    _ => Err(fault),
                }
            };
            let response = match self.execute_action(&prepared.action, skip_cache).await {
                Ok(response) => response,
                // The operation was lost (a worker died, the server forgot it): once more.
                Err(fault) => {
                    retry_once(fault)?;
                    self.forget(&prepared);
                    self.upload(&prepared.blobs, true).await?;
                    skip_cache = true;
                    continue;
                }
            };
            if let Some(status) = response.status.as_ref().filter(|s| s.code != 0) {
                let code = tonic::Code::from_i32(status.code);
                let fault = Fault(format!("{code:?}: {}", status.message));
                match code {
                    // The action ran out of time: the stage's failure, with what it printed.
                    tonic::Code::DeadlineExceeded => {
                        let result = response.result.unwrap_or_default();
                        let text = format!(
                            "{}{}",
                            self.log_text(&result.stdout_raw, result.stdout_digest.as_ref())
                                .await,
                            self.log_text(&result.stderr_raw, result.stderr_digest.as_ref())
                                .await
                        );
                        return Ok(Err(ExecFailure {
                            message: format!(
                                "timed out on the remote executor: {}",
                                status.message
                            ),
                            log_tail: crate::exec::tail(text.as_bytes()),
                            bad_input: false,
                        }));
                    }
                    // An input the server lost (FAILED_PRECONDITION: missing blobs) or a worker
                    // that failed: upload again what is missing, run once more.
                    tonic::Code::FailedPrecondition
                    | tonic::Code::Unavailable
                    | tonic::Code::Internal
                    | tonic::Code::Aborted => {
                        retry_once(fault)?;
                        self.forget(&prepared);
                        self.upload(&prepared.blobs, true).await?;
                        skip_cache = true;
                        continue;
                    }
                    _ => return Err(fault),
                }
            }
            let result = response.result.unwrap_or_default();
            if response.cached_result
                && result.exit_code != 0
                && !(is_gate && result.exit_code == 3)
            {
                // A failure served from the server's cache: run it for real once.
                if attempt == 0 {
                    skip_cache = true;
                    continue;
                }
            }
            match self.collect(job, &prepared, &result).await {
                Ok(done) => return Ok(Ok(done)),
                // The worker's outputs did not verify: once more, bypassing any cached result.
                Err(CollectError::Fault(fault)) => {
                    self.clear_outputs(job);
                    retry_once(fault)?;
                    skip_cache = true;
                }
                Err(CollectError::Stage(failure)) => return Ok(Err(failure)),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Forgets that the action's blobs are on the server, so that they are asked for again.
    fn forget(&self, prepared: &Prepared) {
        let mut present = self.present.lock().expect("present");
        for hash in prepared.blobs.keys() {
            present.remove(hash);
        }
    }

    /// Removes whatever a failed collection wrote.
    fn clear_outputs(&self, job: &Job) {
        for output in &job.stage.outputs {
            let _ = crate::store::remove_path(&job.root.join(&output.path));
        }
    }

    /// Checks the result, downloads and verifies the outputs, writes them into the workspace.
    async fn collect(
        &self,
        job: &Job<'_>,
        prepared: &Prepared,
        result: &re::ActionResult,
    ) -> Result<ExecSuccess, CollectError> {
        let stdout = self
            .log_text(&result.stdout_raw, result.stdout_digest.as_ref())
            .await;
        let stderr = self
            .log_text(&result.stderr_raw, result.stderr_digest.as_ref())
            .await;
        let op = match &job.stage.action {
            Action::Op { name, .. } => crate::ops::find(name),
            Action::Cmd(_) | Action::Manual(_) => None,
        };
        let outcome = match (result.exit_code, op) {
            (0, _) => OpOutcome::Success,
            (3, Some(op)) if op.is_gate() => OpOutcome::GateFailed,
            (code, _) => {
                let text = format!("{stdout}{stderr}");
                let tail = crate::exec::tail(text.as_bytes());
                return Err(CollectError::Stage(ExecFailure {
                    message: match op {
                        Some(_) if code == 126 || code == 127 => {
                            let [(_, os), (_, isa)] = binary_platform();
                            format!(
                                "the worker could not start the edgebuild binary (exit code {code}): it is built for {os} {isa}; give the stage `platform:` properties of such workers"
                            )
                        }
                        Some(_) => {
                            format!("the op failed on the remote executor (exit code {code})")
                        }
                        None => {
                            format!(
                                "command failed on the remote executor with exit code {code}: {}",
                                crate::sandbox::UNDECLARED_HINT
                            )
                        }
                    },
                    log_tail: tail,
                    bad_input: op.is_some() && code == 2,
                }));
            }
        };
        #[allow(deprecated)]
        let links = result
            .output_symlinks
            .iter()
            .chain(&result.output_file_symlinks)
            .chain(&result.output_directory_symlinks)
            .next();
        if let Some(link) = links {
            return Err(CollectError::Stage(ExecFailure {
                message: format!(
                    "output {} is a symlink (to {}): outputs are files and directories",
                    link.path, link.target
                ),
                log_tail: Vec::new(),
                bad_input: false,
            }));
        }
        let undigested = result
            .output_files
            .iter()
            .filter(|f| f.digest.is_none())
            .map(|f| f.path.as_str())
            .chain(
                result
                    .output_directories
                    .iter()
                    .filter(|d| d.tree_digest.is_none())
                    .map(|d| d.path.as_str()),
            )
            .next();
        if let Some(path) = undigested {
            return Err(CollectError::Fault(Fault(format!(
                "the server returned output {path} without a digest"
            ))));
        }
        // Every blob first, verified; then the files, each atomically.
        let mut wanted: Vec<re::Digest> = result
            .output_files
            .iter()
            .filter_map(|f| f.digest.clone())
            .collect();
        wanted.extend(
            result
                .output_directories
                .iter()
                .filter_map(|d| d.tree_digest.clone()),
        );
        let mut blobs = self
            .read_blobs(&wanted)
            .await
            .map_err(CollectError::Fault)?;
        let mut trees = Vec::new();
        for dir in &result.output_directories {
            let digest = dir.tree_digest.clone().unwrap_or_default();
            let tree = re::Tree::decode(blobs[&digest.hash].as_slice()).map_err(|e| {
                CollectError::Fault(Fault(format!("output directory {}: {e}", dir.path)))
            })?;
            let mut files = Vec::new();
            let mut children = HashMap::new();
            for child in &tree.children {
                children.insert(message_digest(child).0.hash, child.clone());
            }
            tree_files(
                tree.root.as_ref().unwrap_or(&re::Directory::default()),
                "",
                &children,
                &mut files,
                0,
            )
            .map_err(|e| {
                CollectError::Fault(Fault(format!("output directory {}: {e}", dir.path)))
            })?;
            trees.push((dir.path.clone(), files));
        }
        let more: Vec<re::Digest> = trees
            .iter()
            .flat_map(|(_, f)| f.iter().map(|(_, d, _)| d.clone()))
            .collect();
        blobs.extend(self.read_blobs(&more).await.map_err(CollectError::Fault)?);
        let declared: std::collections::BTreeSet<&str> =
            prepared.outputs.iter().map(String::as_str).collect();
        let produced: std::collections::BTreeSet<&str> = result
            .output_files
            .iter()
            .map(|f| f.path.as_str())
            .chain(result.output_directories.iter().map(|d| d.path.as_str()))
            .collect();
        if let Some(extra) = produced.difference(&declared).next() {
            return Err(CollectError::Fault(Fault(format!(
                "the server returned an undeclared output {extra}"
            ))));
        }
        let write = |rel: &str, bytes: &[u8], executable: bool| -> std::io::Result<()> {
            let path = job.root.join(rel);
            crate::store::write_atomic(&path, bytes)?;
            if executable {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            }
            Ok(())
        };
        let fail = |e: std::io::Error, rel: &str| {
            CollectError::Fault(Fault(format!("cannot write output {rel}: {e}")))
        };
        for file in &result.output_files {
            let digest = file.digest.clone().unwrap_or_default();
            let _ = crate::store::remove_path(&job.root.join(&file.path));
            write(&file.path, &blobs[&digest.hash], file.is_executable)
                .map_err(|e| fail(e, &file.path))?;
        }
        for (dir, files) in &trees {
            let target = job.root.join(dir);
            let _ = crate::store::remove_path(&target);
            std::fs::create_dir_all(&target).map_err(|e| fail(e, dir))?;
            for (rel, digest, executable) in files {
                let path = format!("{dir}/{rel}");
                write(&path, &blobs[&digest.hash], *executable).map_err(|e| fail(e, &path))?;
            }
        }
        let mut log: Vec<String> = stdout.lines().map(str::to_string).collect();
        if op.is_none() {
            log.clear();
        }
        Ok(ExecSuccess {
            outcome,
            log,
            remote: Some(RemoteRun::Executed),
        })
    }

    async fn log_text(&self, raw: &[u8], digest: Option<&re::Digest>) -> String {
        if !raw.is_empty() {
            return String::from_utf8_lossy(raw).into_owned();
        }
        match digest.filter(|d| d.size_bytes > 0) {
            Some(d) => match self.read_blobs(std::slice::from_ref(d)).await {
                Ok(found) => String::from_utf8_lossy(&found[&d.hash]).into_owned(),
                Err(_) => String::new(),
            },
            None => String::new(),
        }
    }
}

enum CollectError {
    /// The stage itself failed (its exit code): no retry, no fallback.
    Stage(ExecFailure),
    /// The server or its outputs are at fault.
    Fault(Fault),
}

/// The files of an output `Tree`: (relative path, digest, executable).
fn tree_files(
    dir: &re::Directory,
    prefix: &str,
    children: &HashMap<String, re::Directory>,
    out: &mut Vec<(String, re::Digest, bool)>,
    depth: usize,
) -> Result<(), String> {
    if depth > 64 {
        return Err("nested too deeply".into());
    }
    if out.len() > 1_000_000 {
        return Err("more than a million files".into());
    }
    let safe = |name: &str| !name.is_empty() && name != "." && name != ".." && !name.contains('/');
    if let Some(link) = dir.symlinks.first() {
        return Err(format!(
            "symlink {} in an output is not supported",
            link.name
        ));
    }
    for file in &dir.files {
        if !safe(&file.name) {
            return Err(format!("unsafe name `{}`", file.name));
        }
        out.push((
            format!("{prefix}{}", file.name),
            file.digest.clone().unwrap_or_default(),
            file.is_executable,
        ));
    }
    for sub in &dir.directories {
        if !safe(&sub.name) {
            return Err(format!("unsafe name `{}`", sub.name));
        }
        let digest = sub.digest.clone().unwrap_or_default();
        let child = children
            .get(&digest.hash)
            .ok_or_else(|| format!("directory {} is missing from the tree", sub.name))?;
        tree_files(
            child,
            &format!("{prefix}{}/", sub.name),
            children,
            out,
            depth + 1,
        )?;
    }
    Ok(())
}

/// The platform properties of the edgebuild binary, which an op's worker must match.
pub fn binary_platform() -> [(&'static str, &'static str); 2] {
    let isa = match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        "aarch64" => "arm-a64",
        other => other,
    };
    [("OSFamily", std::env::consts::OS), ("ISA", isa)]
}

/// The outcome of an `Execute` operation.
fn finished(
    operation: bazel_remote_apis::google::longrunning::Operation,
) -> Result<re::ExecuteResponse, Fault> {
    use bazel_remote_apis::google::longrunning::operation::Result as OpResult;
    match operation.result {
        Some(OpResult::Response(any)) => re::ExecuteResponse::decode(any.value.as_slice())
            .map_err(|e| Fault(format!("an unreadable ExecuteResponse: {e}"))),
        Some(OpResult::Error(status)) => Err(Fault(format!(
            "{:?}: {}",
            tonic::Code::from_i32(status.code),
            status.message
        ))),
        None => Err(Fault("the operation finished without a result".into())),
    }
}

fn mentions_platform(status: &str) -> bool {
    ["platform", "OSFamily", "ISA", "exec format"]
        .iter()
        .any(|w| status.to_lowercase().contains(&w.to_lowercase()))
}

/// A random UUID (version 4) for ByteStream upload names.
fn uuid() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Executor for RemoteExecutor {
    fn execute(&self, job: &Job) -> Result<ExecSuccess, ExecFailure> {
        if !job.stage.remote {
            return self.local.execute(job);
        }
        match self.runtime.block_on(self.run(job)) {
            Ok(result) => result,
            Err(Fault(status)) if self.fallback => {
                self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "warning: {}: the remote executor {} failed ({status}); running it locally (--remote-exec-fallback)",
                    job.stage.id, self.url
                );
                self.local.execute(job).map(|mut done| {
                    done.remote = Some(RemoteRun::Fallback);
                    done
                })
            }
            Err(Fault(status)) => Err(ExecFailure {
                message: format!(
                    "the remote executor {} could not run it: {status}{}",
                    self.url,
                    match &job.stage.action {
                        Action::Op { .. } if mentions_platform(&status) => {
                            let [(_, os), (_, isa)] = binary_platform();
                            format!(
                                " (an op runs the edgebuild binary sent with it, built for {os} {isa}: no worker of that platform took it)"
                            )
                        }
                        _ => String::new(),
                    }
                ),
                log_tail: Vec::new(),
                bad_input: false,
            }),
        }
    }
}

/// `edgebuild run-op DESCRIPTION`: an op on a worker, in the input root. Prints the op's log;
/// exits 0, 3 for a failed gate, 2 for bad input, 4 otherwise.
pub fn run_op(description: &Path) -> crate::ExitCode {
    let bytes = match std::fs::read(description) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{}: {e}", description.display());
            return crate::ExitCode::BadInput;
        }
    };
    let description: OpDescription = match serde_json::from_slice(&bytes) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("not an op description: {e}");
            return crate::ExitCode::BadInput;
        }
    };
    let Some(op) = crate::ops::find(&description.op) else {
        eprintln!("unknown op `{}`", description.op);
        return crate::ExitCode::BadInput;
    };
    let paths = |ports: &BTreeMap<String, String>| -> BTreeMap<String, PathBuf> {
        ports
            .iter()
            .map(|(n, p)| (n.clone(), PathBuf::from(p)))
            .collect()
    };
    for path in description.outputs.values() {
        if let Some(parent) = Path::new(path).parent() {
            let _ = std::fs::create_dir_all(parent);
        }
    }
    let ctx = crate::ops::OpContext {
        stage_id: &description.stage,
        inputs: paths(&description.inputs),
        outputs: paths(&description.outputs),
        params: &description.params,
        log: Default::default(),
    };
    let result = op.run(&ctx);
    for line in ctx.log.into_inner().unwrap_or_default() {
        println!("{line}");
    }
    match result {
        Ok(OpOutcome::Success) => crate::ExitCode::Ok,
        Ok(OpOutcome::GateFailed) => crate::ExitCode::GateFailed,
        Err(e) => {
            eprintln!("{}", e.message());
            match e {
                crate::ops::OpError::BadInput(_) => crate::ExitCode::BadInput,
                _ => crate::ExitCode::StageFailed,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_roots_are_canonical_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/c")).unwrap();
        std::fs::write(dir.path().join("b/c/z.txt"), "z").unwrap();
        std::fs::write(dir.path().join("b/a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("top.txt"), "t").unwrap();
        let mut one = InputRoot::default();
        one.add_path(dir.path(), "top.txt").unwrap();
        one.add_path(dir.path(), "b").unwrap();
        let mut two = InputRoot::default();
        two.add_path(dir.path(), "b").unwrap();
        two.add_path(dir.path(), "top.txt").unwrap();
        let (root_one, blobs) = one.finish();
        let (root_two, _) = two.finish();
        assert_eq!(
            root_one, root_two,
            "the order inputs are added in does not matter"
        );
        // The root holds top.txt and b/, sorted; its digest is of its encoding.
        let (_, Blob::Bytes(bytes)) = &blobs[&root_one.hash] else {
            panic!("in memory")
        };
        let root = re::Directory::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            root.files
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            ["top.txt"]
        );
        assert_eq!(
            root.directories
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(Digest::of_bytes(bytes).hex(), root_one.hash);
        let b = &blobs[&root.directories[0].digest.as_ref().unwrap().hash];
        let Blob::Bytes(b) = &b.1 else { panic!() };
        let b = re::Directory::decode(b.as_slice()).unwrap();
        assert_eq!(b.files[0].name, "a.txt");
        assert_eq!(b.directories[0].name, "c");
        assert_eq!(
            b.files[0].digest.as_ref().unwrap().hash,
            Digest::of_bytes(b"a").hex()
        );
    }

    #[test]
    fn uploads_stream_files_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.bin");
        let bytes: Vec<u8> = (0..(2 * CHUNK + CHUNK / 2))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        let chunks: Vec<(usize, Vec<u8>)> = Chunks::new(Blob::File(path), bytes.len())
            .unwrap()
            .collect();
        let offsets: Vec<usize> = chunks.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, [0, CHUNK, 2 * CHUNK]);
        let joined: Vec<u8> = chunks.iter().flat_map(|(_, b)| b.clone()).collect();
        assert_eq!(joined, bytes);
        let in_memory: Vec<(usize, Vec<u8>)> =
            Chunks::new(Blob::Bytes(Arc::new(bytes.clone())), bytes.len())
                .unwrap()
                .collect();
        assert_eq!(in_memory, chunks);
    }

    #[test]
    fn output_trees_refuse_unsafe_names() {
        let bad = re::Directory {
            files: vec![re::FileNode {
                name: "..".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut out = Vec::new();
        assert!(tree_files(&bad, "", &HashMap::new(), &mut out, 0).is_err());
    }
}

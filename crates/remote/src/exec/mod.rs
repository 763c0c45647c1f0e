//! The remote executor: stages run on a Remote Execution API v2 server (NativeLink, Buildbarn,
//! BuildGrid, BuildBuddy, buildbox-casd), through the gRPC client stubs in `crate::proto`.
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
//!
//! Its parts: [`settings`], the [`merkle`] input root and action, [`cas`] transfers,
//! [`execute`], [`outputs`], and the [`worker`] that runs an op remotely.

pub mod cas;
pub mod execute;
pub mod merkle;
pub mod outputs;
pub mod settings;
pub mod worker;

use execute::mentions_platform;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::proto::build::bazel::remote::execution::v2 as re;
use crate::proto::google::bytestream;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::Channel;

use edgebuild_engine::exec::{ExecFailure, ExecSuccess, Executor, Job, RemoteRun};
use edgebuild_engine::hash::Digest;
use edgebuild_engine::op::OpRegistry;
use edgebuild_engine::stage::Action;

use execute::Fault;
use outputs::CollectError;
use settings::{Counters, MAX_MESSAGE};
pub use settings::{
    EXEC_ENV, HEADER_ENV_PREFIX, REMOTE_PATH, RemoteExecSettings, RemoteStats, TOKEN_ENV,
};
pub use worker::{OpDescription, binary_platform, run_op};

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
    /// The ops stages may name, to know which stage is a gate.
    ops: Arc<OpRegistry>,
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
        ops: Arc<OpRegistry>,
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
                crate::cache::redact(&url)
            ));
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the gRPC runtime: {e}"))?;
        let mut endpoint = Channel::from_shared(endpoint_url)
            .map_err(|e| format!("`{}`: {e}", crate::cache::redact(&url)))?
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
                    let mut client = crate::proto::google::longrunning::operations_client::OperationsClient::with_interceptor(
                        channel.clone(),
                        headers.clone(),
                    );
                    let request = crate::proto::google::longrunning::CancelOperationRequest { name };
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
            url: crate::cache::redact(&url),
            jobs: Arc::new(tokio::sync::Semaphore::new(jobs)),
            batch_limit: OnceLock::new(),
            local,
            ops,
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

    /// The stage on the server: cached result or execution, outputs written on success.
    async fn run(&self, job: &Job<'_>) -> Result<Result<ExecSuccess, ExecFailure>, Fault> {
        let prepared = self.prepare(job).map_err(Fault)?;
        let _permit = self.jobs.acquire().await.expect("semaphore open");
        let is_gate = self.ops.is_gate(job.stage);
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
                            log_tail: edgebuild_engine::exec::tail(text.as_bytes()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use cas::Chunks;
    use merkle::{Blob, InputRoot};
    use outputs::tree_files;
    use prost::Message;
    use settings::CHUNK;
    use std::collections::HashMap;

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

//! Faults a real executor rarely shows on demand, injected by an in-process REAPI server built
//! from the `bazel-remote-apis` server stubs: `UNAVAILABLE`, an operation stream that drops
//! (resumed with `WaitExecution`), a small batch limit (uploads split, large blobs through
//! ByteStream), and outputs whose bytes do not match their digest (never written, never cached).
//! The fake server does not run commands: for each declared output it answers a fixed text.

mod common;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream;
use bazel_remote_apis::google::longrunning::{Operation, operation};
use bazel_remote_apis::google::protobuf::{Any, Empty};
use common::{Workspace, stderr};
use prost::Message;
use sha2::Digest as _;
use tonic::{Request, Response, Status};

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[derive(Default)]
struct Faults {
    /// The first N `Execute` calls fail with UNAVAILABLE.
    unavailable_executes: AtomicU32,
    /// `Execute` streams end before the operation is done.
    drop_stream: bool,
    /// Outputs are stored with bytes other than their digest says.
    wrong_digest: bool,
    /// `max_batch_total_size_bytes`; larger batch requests are refused.
    batch_limit: i64,
    /// `Execute` queues the operation and never finishes it.
    hang: bool,
    /// Each output is this many bytes (0: one line).
    output_size: usize,
    /// The first `Execute` finds its inputs evicted: FAILED_PRECONDITION.
    lose_blobs: std::sync::atomic::AtomicBool,
    /// The action cache holds a failed result for every action.
    cached_failure: bool,
    /// The action "creates" its first output as a symlink.
    symlink_output: bool,
    /// `WaitExecution` does not know the operation (its worker died): once.
    lose_operation: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Seen {
    executes: Vec<bool>,
    waits: u32,
    largest_batch: usize,
    bytestream_writes: u32,
    bytestream_reads: u32,
    cancelled: Vec<String>,
}

#[derive(Default, Clone)]
struct Fake {
    blobs: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    /// The action of the last `Execute`, for `WaitExecution`.
    last_action: Arc<Mutex<Option<re::Digest>>>,
    faults: Arc<Faults>,
    seen: Arc<Mutex<Seen>>,
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

fn digest(bytes: &[u8]) -> re::Digest {
    re::Digest {
        hash: hex(bytes),
        size_bytes: bytes.len() as i64,
    }
}

impl Fake {
    /// "Runs" the action: every output path gets a fixed text.
    fn run(&self, action: &re::Digest) -> Result<Operation, Status> {
        let blobs = self.blobs.lock().unwrap();
        let action = blobs
            .get(&action.hash)
            .ok_or_else(|| Status::failed_precondition("action not uploaded"))?;
        let action = re::Action::decode(action.as_slice()).unwrap();
        let command = &blobs[&action.command_digest.unwrap().hash];
        let command = re::Command::decode(command.as_slice()).unwrap();
        drop(blobs);
        let mut files = Vec::new();
        for path in &command.output_paths {
            let line = format!("remote output of {path}\n");
            let content = match self.faults.output_size {
                0 => line.into_bytes(),
                n => line.repeat(n / line.len() + 1).into_bytes()[..n].to_vec(),
            };
            let d = digest(&content);
            let stored = if self.faults.wrong_digest {
                b"tampered on the way\n".to_vec()
            } else {
                content
            };
            self.blobs.lock().unwrap().insert(d.hash.clone(), stored);
            files.push(re::OutputFile {
                path: path.clone(),
                digest: Some(d),
                ..Default::default()
            });
        }
        let mut result = re::ActionResult {
            output_files: files,
            exit_code: 0,
            ..Default::default()
        };
        if self.faults.symlink_output {
            let first = result.output_files.remove(0);
            result.output_symlinks.push(re::OutputSymlink {
                path: first.path,
                target: "/etc/passwd".into(),
                node_properties: None,
            });
        }
        let response = re::ExecuteResponse {
            result: Some(result),
            ..Default::default()
        };
        Ok(Operation {
            name: "operations/1".into(),
            done: true,
            result: Some(operation::Result::Response(Any {
                type_url: "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse"
                    .into(),
                value: response.encode_to_vec(),
            })),
            metadata: None,
        })
    }
}

#[tonic::async_trait]
impl re::capabilities_server::Capabilities for Fake {
    async fn get_capabilities(
        &self,
        _: Request<re::GetCapabilitiesRequest>,
    ) -> Result<Response<re::ServerCapabilities>, Status> {
        Ok(Response::new(re::ServerCapabilities {
            cache_capabilities: Some(re::CacheCapabilities {
                digest_functions: vec![re::digest_function::Value::Sha256 as i32],
                max_batch_total_size_bytes: self.faults.batch_limit,
                ..Default::default()
            }),
            execution_capabilities: Some(re::ExecutionCapabilities {
                digest_function: re::digest_function::Value::Sha256 as i32,
                exec_enabled: true,
                ..Default::default()
            }),
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl re::action_cache_server::ActionCache for Fake {
    async fn get_action_result(
        &self,
        _: Request<re::GetActionResultRequest>,
    ) -> Result<Response<re::ActionResult>, Status> {
        match self.faults.cached_failure {
            true => Ok(Response::new(re::ActionResult {
                exit_code: 1,
                ..Default::default()
            })),
            false => Err(Status::not_found("no cache here")),
        }
    }
    async fn update_action_result(
        &self,
        _: Request<re::UpdateActionResultRequest>,
    ) -> Result<Response<re::ActionResult>, Status> {
        Err(Status::unimplemented("read-only"))
    }
}

#[tonic::async_trait]
impl re::content_addressable_storage_server::ContentAddressableStorage for Fake {
    async fn find_missing_blobs(
        &self,
        request: Request<re::FindMissingBlobsRequest>,
    ) -> Result<Response<re::FindMissingBlobsResponse>, Status> {
        let blobs = self.blobs.lock().unwrap();
        let missing = request
            .into_inner()
            .blob_digests
            .into_iter()
            .filter(|d| !blobs.contains_key(&d.hash))
            .collect();
        Ok(Response::new(re::FindMissingBlobsResponse {
            missing_blob_digests: missing,
        }))
    }
    async fn batch_update_blobs(
        &self,
        request: Request<re::BatchUpdateBlobsRequest>,
    ) -> Result<Response<re::BatchUpdateBlobsResponse>, Status> {
        let request = request.into_inner();
        let size: usize = request.requests.iter().map(|r| r.data.len()).sum();
        if self.faults.batch_limit > 0 && request.encoded_len() as i64 > self.faults.batch_limit {
            return Err(Status::invalid_argument(
                "batch above max_batch_total_size_bytes",
            ));
        }
        let mut seen = self.seen.lock().unwrap();
        seen.largest_batch = seen.largest_batch.max(size);
        let mut responses = Vec::new();
        for r in request.requests {
            let d = r.digest.unwrap();
            assert_eq!(hex(&r.data), d.hash, "the client sends what it names");
            self.blobs.lock().unwrap().insert(d.hash.clone(), r.data);
            responses.push(re::batch_update_blobs_response::Response {
                digest: Some(d),
                status: None,
            });
        }
        Ok(Response::new(re::BatchUpdateBlobsResponse { responses }))
    }
    async fn batch_read_blobs(
        &self,
        request: Request<re::BatchReadBlobsRequest>,
    ) -> Result<Response<re::BatchReadBlobsResponse>, Status> {
        let blobs = self.blobs.lock().unwrap();
        let responses = request
            .into_inner()
            .digests
            .into_iter()
            .map(|d| re::batch_read_blobs_response::Response {
                data: blobs.get(&d.hash).cloned().unwrap_or_default(),
                digest: Some(d),
                compressor: 0,
                status: None,
            })
            .collect();
        Ok(Response::new(re::BatchReadBlobsResponse { responses }))
    }
    type GetTreeStream = Stream<re::GetTreeResponse>;
    async fn get_tree(
        &self,
        _: Request<re::GetTreeRequest>,
    ) -> Result<Response<Self::GetTreeStream>, Status> {
        Err(Status::unimplemented("get_tree"))
    }
    async fn split_blob(
        &self,
        _: Request<re::SplitBlobRequest>,
    ) -> Result<Response<re::SplitBlobResponse>, Status> {
        Err(Status::unimplemented("split_blob"))
    }
    type GetChunkMappingStream = Stream<re::GetChunkMappingResponse>;
    async fn get_chunk_mapping(
        &self,
        _: Request<re::GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        Err(Status::unimplemented("get_chunk_mapping"))
    }
    async fn splice_blob(
        &self,
        _: Request<re::SpliceBlobRequest>,
    ) -> Result<Response<re::SpliceBlobResponse>, Status> {
        Err(Status::unimplemented("splice_blob"))
    }
    async fn register_chunk_mapping(
        &self,
        _: Request<tonic::Streaming<re::RegisterChunkMappingRequest>>,
    ) -> Result<Response<re::RegisterChunkMappingResponse>, Status> {
        Err(Status::unimplemented("register_chunk_mapping"))
    }
}

#[tonic::async_trait]
impl bytestream::byte_stream_server::ByteStream for Fake {
    type ReadStream = Stream<bytestream::ReadResponse>;
    async fn read(
        &self,
        request: Request<bytestream::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let name = request.into_inner().resource_name;
        let parts: Vec<&str> = name.split('/').collect();
        assert_eq!((parts.len(), parts[0]), (3, "blobs"), "{name}");
        let data = self
            .blobs
            .lock()
            .unwrap()
            .get(parts[1])
            .cloned()
            .ok_or_else(|| Status::not_found(name.clone()))?;
        self.seen.lock().unwrap().bytestream_reads += 1;
        let chunks: Vec<Result<bytestream::ReadResponse, Status>> = data
            .chunks(1000)
            .map(|c| Ok(bytestream::ReadResponse { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
    async fn write(
        &self,
        request: Request<tonic::Streaming<bytestream::WriteRequest>>,
    ) -> Result<Response<bytestream::WriteResponse>, Status> {
        let mut stream = request.into_inner();
        let mut name = String::new();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            if !chunk.resource_name.is_empty() {
                name = chunk.resource_name;
            }
            assert_eq!(chunk.write_offset as usize, data.len());
            data.extend_from_slice(&chunk.data);
        }
        let parts: Vec<&str> = name.split('/').collect();
        assert_eq!(parts[0], "uploads", "{name}");
        assert_eq!(parts[3], hex(&data), "the resource names the blob's hash");
        self.blobs.lock().unwrap().insert(hex(&data), data.clone());
        self.seen.lock().unwrap().bytestream_writes += 1;
        Ok(Response::new(bytestream::WriteResponse {
            committed_size: data.len() as i64,
        }))
    }
    async fn query_write_status(
        &self,
        _: Request<bytestream::QueryWriteStatusRequest>,
    ) -> Result<Response<bytestream::QueryWriteStatusResponse>, Status> {
        Err(Status::unimplemented("query_write_status"))
    }
}

#[tonic::async_trait]
impl re::execution_server::Execution for Fake {
    type ExecuteStream = Stream<Operation>;
    async fn execute(
        &self,
        request: Request<re::ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let request = request.into_inner();
        self.seen
            .lock()
            .unwrap()
            .executes
            .push(request.skip_cache_lookup);
        let left = self.faults.unavailable_executes.load(Ordering::SeqCst);
        if left > 0 {
            self.faults
                .unavailable_executes
                .store(left - 1, Ordering::SeqCst);
            return Err(Status::unavailable("the scheduler is restarting"));
        }
        let action = request.action_digest.unwrap();
        *self.last_action.lock().unwrap() = Some(action.clone());
        if self.faults.lose_blobs.swap(false, Ordering::SeqCst) {
            self.blobs.lock().unwrap().clear();
            let response = re::ExecuteResponse {
                status: Some(bazel_remote_apis::google::rpc::Status {
                    code: tonic::Code::FailedPrecondition as i32,
                    message: "MISSING: input blobs were evicted".into(),
                    details: Vec::new(),
                }),
                ..Default::default()
            };
            let done = Operation {
                name: "operations/1".into(),
                done: true,
                result: Some(operation::Result::Response(Any {
                    type_url: "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse"
                        .into(),
                    value: response.encode_to_vec(),
                })),
                metadata: None,
            };
            return Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(done)]))));
        }
        let done = self.run(&action)?;
        if self.faults.hang {
            let queued = Operation {
                name: "operations/1".into(),
                ..Default::default()
            };
            let forever = tokio_stream::StreamExt::chain(
                tokio_stream::iter(vec![Ok(queued)]),
                tokio_stream::pending(),
            );
            return Ok(Response::new(Box::pin(forever)));
        }
        let items = if self.faults.drop_stream {
            // Queued, then the stream drops: the client must wait for the operation by name.
            vec![Ok(Operation {
                name: done.name.clone(),
                done: false,
                ..Default::default()
            })]
        } else {
            vec![Ok(done)]
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }
    type WaitExecutionStream = Stream<Operation>;
    async fn wait_execution(
        &self,
        request: Request<re::WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        assert_eq!(request.into_inner().name, "operations/1");
        self.seen.lock().unwrap().waits += 1;
        if self.faults.lose_operation.swap(false, Ordering::SeqCst) {
            return Err(Status::not_found(
                "operations/1: the worker running it went away",
            ));
        }
        // The operation finished meanwhile.
        let action = self.last_action.lock().unwrap().clone().unwrap();
        let done = self.run(&action)?;
        Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(done)]))))
    }
}

use bazel_remote_apis::google::longrunning as lr;

#[tonic::async_trait]
impl lr::operations_server::Operations for Fake {
    async fn list_operations(
        &self,
        _: Request<lr::ListOperationsRequest>,
    ) -> Result<Response<lr::ListOperationsResponse>, Status> {
        Err(Status::unimplemented("list"))
    }
    async fn get_operation(
        &self,
        _: Request<lr::GetOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        Err(Status::unimplemented("get"))
    }
    async fn delete_operation(
        &self,
        _: Request<lr::DeleteOperationRequest>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented("delete"))
    }
    async fn cancel_operation(
        &self,
        request: Request<lr::CancelOperationRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.seen
            .lock()
            .unwrap()
            .cancelled
            .push(request.into_inner().name);
        Ok(Response::new(Empty {}))
    }
    async fn wait_operation(
        &self,
        _: Request<lr::WaitOperationRequest>,
    ) -> Result<Response<Operation>, Status> {
        Err(Status::unimplemented("wait"))
    }
}

/// Serves `fake` on a loopback port in a background thread; returns `grpc://…`.
fn serve(fake: Fake) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            tonic::transport::Server::builder()
                .add_service(re::capabilities_server::CapabilitiesServer::new(
                    fake.clone(),
                ))
                .add_service(re::action_cache_server::ActionCacheServer::new(
                    fake.clone(),
                ))
                .add_service(
                    re::content_addressable_storage_server::ContentAddressableStorageServer::new(
                        fake.clone(),
                    ),
                )
                .add_service(bytestream::byte_stream_server::ByteStreamServer::new(
                    fake.clone(),
                ))
                .add_service(lr::operations_server::OperationsServer::new(fake.clone()))
                .add_service(re::execution_server::ExecutionServer::new(fake))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
    });
    format!("grpc://{}", rx.recv().unwrap())
}

/// One stage with small inputs, one above `big` bytes, and two outputs.
fn workspace(big: usize) -> Workspace {
    let ws = Workspace::new();
    for i in 0..5 {
        ws.write(&format!("data/small-{i}.txt"), &format!("{i}").repeat(600));
    }
    ws.write("data/big.bin", &"b".repeat(big));
    ws.pipeline(
        "p",
        "version: 1\nstages:\n  s:\n    cmd: \"cat ${inputs} > ${outputs.0} && cp ${outputs.0} ${outputs.1}\"\n    inputs: [data/small-0.txt, data/small-1.txt, data/small-2.txt, data/small-3.txt, data/small-4.txt, data/big.bin]\n    outputs: [out/a.txt, out/b.txt]\n",
    );
    ws
}

fn build(ws: &Workspace, url: &str) -> std::process::Output {
    ws.run(&["build", "--json", "--remote-exec", url])
}

#[test]
fn unavailable_is_retried_and_a_dropped_stream_is_resumed_with_wait_execution() {
    let fake = Fake {
        faults: Arc::new(Faults {
            unavailable_executes: AtomicU32::new(2),
            drop_stream: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let seen = fake.seen.clone();
    let ws = workspace(10);
    let out = build(&ws, &serve(fake));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(ws.read("out/a.txt"), "remote output of out/a.txt\n");
    assert_eq!(ws.read("out/b.txt"), "remote output of out/b.txt\n");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.executes.len(), 3, "two UNAVAILABLE, then accepted");
    assert_eq!(seen.waits, 1, "the dropped stream was resumed");
}

#[test]
fn transfers_respect_the_batch_limit_and_large_blobs_go_through_bytestream() {
    let fake = Fake {
        faults: Arc::new(Faults {
            batch_limit: 2000,
            output_size: 3000,
            ..Default::default()
        }),
        ..Default::default()
    };
    let seen = fake.seen.clone();
    let ws = workspace(5000);
    let out = build(&ws, &serve(fake));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let seen = seen.lock().unwrap();
    assert!(seen.largest_batch <= 2000, "{}", seen.largest_batch);
    assert_eq!(seen.bytestream_writes, 1, "data/big.bin");
    assert_eq!(report["remote_exec"]["bytestream_uploads"], 1);
    // Outputs above the limit come back through ByteStream, whole.
    assert_eq!(seen.bytestream_reads, 2);
    let a = ws.read("out/a.txt");
    assert_eq!(a.len(), 3000);
    assert!(a.starts_with("remote output of out/a.txt\nremote output of out/a.txt\n"));
}

#[test]
fn outputs_that_do_not_match_their_digest_are_never_written_or_cached() {
    let fake = Fake {
        faults: Arc::new(Faults {
            wrong_digest: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let seen = fake.seen.clone();
    let ws = workspace(10);
    let out = build(&ws, &serve(fake));
    assert_eq!(out.status.code(), Some(4));
    let text = stderr(&out);
    assert!(text.contains("p:s"), "{text}");
    assert!(text.contains("does not match its digest"), "{text}");
    assert!(!ws.exists("out/a.txt") && !ws.exists("out/b.txt"));
    assert!(
        common::files_under(&ws.file("cache"))
            .iter()
            .all(|(p, _)| !p.contains("ac/")),
        "no cache entry"
    );
    // The retry asked for a fresh execution, bypassing the server's cache.
    assert_eq!(seen.lock().unwrap().executes, [false, true]);
}

#[test]
fn ctrl_c_cancels_the_remote_operation() {
    let fake = Fake {
        faults: Arc::new(Faults {
            hang: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let seen = fake.seen.clone();
    let url = serve(fake);
    let ws = workspace(10);
    let child = ws
        .command()
        .args(["build", "--remote-exec", &url])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while seen.lock().unwrap().executes.is_empty() {
        assert!(std::time::Instant::now() < deadline, "no Execute call");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Time for the client to read the queued operation's name.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("interrupted: cancelled 1 of 1 remote operation(s)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(seen.lock().unwrap().cancelled, ["operations/1"]);
    assert!(!ws.exists("out/a.txt"));
}

#[test]
fn evicted_inputs_are_uploaded_again_and_a_cached_failure_is_run_afresh() {
    let fake = Fake {
        faults: Arc::new(Faults {
            lose_blobs: std::sync::atomic::AtomicBool::new(true),
            cached_failure: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let seen = fake.seen.clone();
    let ws = workspace(10);
    let out = build(&ws, &serve(fake));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(ws.read("out/a.txt"), "remote output of out/a.txt\n");
    // The cached failure was not trusted: both executions skipped the server's cache.
    assert_eq!(seen.lock().unwrap().executes, [true, true]);
}

#[test]
fn a_symlink_output_is_refused() {
    let fake = Fake {
        faults: Arc::new(Faults {
            symlink_output: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let ws = workspace(10);
    let out = build(&ws, &serve(fake));
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("output out/a.txt is a symlink (to /etc/passwd)"),
        "{}",
        stderr(&out)
    );
    assert!(!ws.exists("out/a.txt") && !ws.exists("out/b.txt"));
}

#[test]
fn a_lost_operation_is_executed_again() {
    let fake = Fake {
        faults: Arc::new(Faults {
            drop_stream: true,
            lose_operation: std::sync::atomic::AtomicBool::new(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let seen = fake.seen.clone();
    let ws = workspace(10);
    let out = build(&ws, &serve(fake));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(ws.read("out/b.txt"), "remote output of out/b.txt\n");
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.executes,
        [false, true],
        "executed again, bypassing the server's cache"
    );
    assert_eq!(seen.waits, 2);
}

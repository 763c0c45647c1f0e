//! Executing an action: `Execute`, resumed with `WaitExecution` when its stream drops, retried
//! with backoff on transient faults, cancelled when abandoned; and what a finished operation
//! says.

use crate::proto::build::bazel::remote::execution::v2 as re;
use prost::Message;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::RemoteExecutor;
use super::settings::ATTEMPTS;

/// An error of the executor (not of the stage): the server's status, after retries.
#[derive(Debug)]
pub(crate) struct Fault(pub(crate) String);

impl From<tonic::Status> for Fault {
    fn from(s: tonic::Status) -> Self {
        Fault(format!("{:?}: {}", s.code(), s.message()))
    }
}

pub(crate) fn retryable(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(
        status.code(),
        Unavailable | ResourceExhausted | Aborted | Internal | Unknown | DeadlineExceeded
    )
}

/// The outcome of an `Execute` operation.
pub(crate) fn finished(
    operation: crate::proto::google::longrunning::Operation,
) -> Result<re::ExecuteResponse, Fault> {
    use crate::proto::google::longrunning::operation::Result as OpResult;
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

pub(crate) fn mentions_platform(status: &str) -> bool {
    ["platform", "OSFamily", "ISA", "exec format"]
        .iter()
        .any(|w| status.to_lowercase().contains(&w.to_lowercase()))
}

/// A random UUID (version 4) for ByteStream upload names.
pub(crate) fn uuid() -> String {
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

impl RemoteExecutor {
    /// Retries a call on transient statuses, with backoff.
    pub(crate) async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, tonic::Status>
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

    /// `Execute`, following its operation stream; `WaitExecution` when the stream drops. A stream
    /// that fails before naming its operation is re-issued (an execution is idempotent by its
    /// action digest).
    pub(crate) async fn execute_action(
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
    pub(crate) async fn abandon(&self, name: &str, fault: Fault) -> Fault {
        self.in_flight.lock().expect("in flight").remove(name);
        let mut client = crate::proto::google::longrunning::operations_client::OperationsClient::with_interceptor(
            self.channel.clone(),
            self.headers.clone(),
        );
        let request = crate::proto::google::longrunning::CancelOperationRequest {
            name: name.to_string(),
        };
        let _ =
            tokio::time::timeout(Duration::from_secs(2), client.cancel_operation(request)).await;
        fault
    }
}

//! Blob transfers with the server's content-addressable storage: which blobs are missing,
//! `BatchUpdateBlobs` for small ones and ByteStream writes (in 1 MiB chunks) above the batch
//! limit, and the reverse for downloads, every blob checked against its digest.

use super::settings::MAX_MESSAGE;
use edgebuild_engine::hash::Digest;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::proto::build::bazel::remote::execution::v2 as re;
use crate::proto::google::bytestream;

use super::RemoteExecutor;
use super::execute::{Fault, uuid};
use super::merkle::Blob;
use super::settings::{CHUNK, DEFAULT_BATCH_LIMIT};

/// A blob's bytes in chunks of [`CHUNK`], as (offset, bytes); a file is read as it goes.
pub(crate) enum Chunks {
    Bytes(Arc<Vec<u8>>, usize),
    File(std::fs::File, usize, usize),
}

impl Chunks {
    pub(crate) fn new(blob: Blob, total: usize) -> std::io::Result<Chunks> {
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

impl RemoteExecutor {
    /// `GetCapabilities`, once: SHA-256 and execution must be supported.
    pub(crate) async fn batch_limit(&self) -> Result<usize, Fault> {
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

    /// `FindMissingBlobs`, then uploads what is missing.
    /// With `again`, every blob is sent whatever the server says it has: after an execution
    /// failed on inputs the server could not stage, its own index is not to be trusted.
    pub(crate) async fn upload(
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

    pub(crate) async fn batch_update(
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
    pub(crate) async fn write_bytestream(
        &self,
        digest: &re::Digest,
        blob: &Blob,
    ) -> Result<(), Fault> {
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
    pub(crate) async fn read_blobs(
        &self,
        digests: &[re::Digest],
    ) -> Result<HashMap<String, Vec<u8>>, Fault> {
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

    pub(crate) async fn read_bytestream(&self, digest: &re::Digest) -> Result<Vec<u8>, Fault> {
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
}

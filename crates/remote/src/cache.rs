//! The shared remote cache: the local store's layout (`cas/`, `ac/`) on storage a team already
//! has, reached through the `object_store` crate (`file://`, `http(s)://` as served by nginx's
//! WebDAV module or bazel-remote, `s3://`, `gs://`, `az://`).
//!
//! Only GET, HEAD and PUT are used: nothing lists the remote (SPEC.md, "Remote cache"). Everything that
//! comes down is verified (an entry must name its key, a tree must hash to its root, a blob to
//! its name) before it reaches the local store, so a poisoned remote costs a warning and a local
//! run, never a wrong build. Uploads put blobs before the entry that names them. A remote that
//! fails (after the client's bounded retries with backoff) is reported once and not used again
//! in this process, unless it is required: then the command fails with exit code 6.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use miette::Diagnostic;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use edgebuild_engine::context::Context;
use edgebuild_engine::hash::{Digest, tree_hash};
use edgebuild_engine::remote_cache::{RemoteCache, RemoteCacheError};
use edgebuild_engine::store::{ActionEntry, Store};

/// Environment variables that configure the remote (the CLI flags override them).
pub const REMOTE_ENV: &str = "EDGEBUILD_REMOTE";
pub const UPLOAD_ENV: &str = "EDGEBUILD_REMOTE_UPLOAD";
pub const TOKEN_ENV: &str = "EDGEBUILD_REMOTE_TOKEN";
pub const USER_ENV: &str = "EDGEBUILD_REMOTE_USER";
pub const PASSWORD_ENV: &str = "EDGEBUILD_REMOTE_PASSWORD";

#[derive(Debug, Error, Diagnostic)]
pub enum RemoteError {
    #[error("remote cache {url} is unavailable: {message}")]
    #[diagnostic(
        code(edgebuild::remote::unavailable),
        help(
            "check the URL and the network, or build without `--remote-required` to fall back to local work"
        )
    )]
    Unavailable { url: String, message: String },

    #[error("cannot use the remote cache `{url}`: {message}")]
    #[diagnostic(
        code(edgebuild::remote::bad_url),
        help(
            "use file:///path, http(s)://host/path/, s3://bucket/path, gs://bucket/path or az://container/path"
        )
    )]
    BadUrl { url: String, message: String },

    /// The workspace's settings file is wrong (exit 2).
    #[error("{message}")]
    #[diagnostic(code(edgebuild::usage))]
    Config {
        message: String,
        #[help]
        help: Option<String>,
    },

    #[error("I/O error on {path}")]
    #[diagnostic(code(edgebuild::io))]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<RemoteError> for RemoteCacheError {
    fn from(error: RemoteError) -> Self {
        RemoteCacheError {
            unavailable: matches!(error, RemoteError::Unavailable { .. }),
            diagnostic: Box::new(error),
        }
    }
}

impl RemoteCache for Remote {
    fn has_action(&self, key: &Digest) -> Result<bool, RemoteCacheError> {
        Ok(Remote::has_action(self, key)?)
    }

    fn fetch_action(
        &self,
        store: &Store,
        key: &Digest,
        stage: &str,
        declared_outputs: &[&str],
    ) -> Result<Option<ActionEntry>, RemoteCacheError> {
        Ok(Remote::fetch_action(
            self,
            store,
            key,
            stage,
            declared_outputs,
        )?)
    }

    fn upload_action(&self, store: &Store, entry: &ActionEntry) -> Result<(), RemoteCacheError> {
        Ok(Remote::upload_action(self, store, entry)?)
    }

    fn fetch_blob(&self, blob: &Digest) -> Result<Option<Vec<u8>>, RemoteCacheError> {
        Ok(Remote::fetch_blob(self, blob)?)
    }

    fn upload_blob(&self, store: &Store, blob: &Digest) -> Result<(), RemoteCacheError> {
        Ok(Remote::upload_blob(self, store, blob)?)
    }

    fn uploads(&self) -> bool {
        self.upload
    }

    fn required(&self) -> bool {
        self.required
    }
}

/// The remote's settings, merged from `edgebuild.yaml`, the environment and the command line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSettings {
    /// Where the remote is; none means no remote.
    #[serde(default)]
    pub url: Option<String>,
    /// Upload what this machine builds (CI writers); off by default.
    #[serde(default)]
    pub upload: bool,
    /// Fail (exit 6) instead of building locally when the remote is unavailable.
    #[serde(default)]
    pub required: bool,
    /// Seconds one request may take.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Retries of a failed request, with exponential backoff.
    #[serde(default)]
    pub retries: Option<usize>,
}

/// What the remote did during one command, for the summary line.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct RemoteStats {
    pub hits: usize,
    pub misses: usize,
    pub rejected: usize,
    pub uploaded_blobs: usize,
    pub uploaded_entries: usize,
}

pub struct Remote {
    /// The URL as shown to users: never with credentials.
    url: String,
    /// Credentials, blanked out of every message as a second line of defence.
    secrets: Vec<String>,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    runtime: tokio::runtime::Runtime,
    pub upload: bool,
    pub required: bool,
    down: AtomicBool,
    stats: Mutex<RemoteStats>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

/// A URL as messages show it: never with credentials, even when it does not parse.
pub fn redact(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(url) => displayable(&url),
        Err(_) => match raw.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}"),
                None => raw.to_string(),
            },
            None => raw.to_string(),
        },
    }
}

/// The URL without user information, for messages.
fn displayable(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

fn key_under(prefix: &ObjectPath, parts: &[&str]) -> ObjectPath {
    prefix
        .parts()
        .chain(parts.iter().map(|p| object_store::path::PathPart::from(*p)))
        .collect()
}

fn blob_key(prefix: &ObjectPath, hash: &Digest) -> ObjectPath {
    let hex = hash.hex();
    key_under(prefix, &["cas", &hex[..2], &hex])
}

fn action_key(prefix: &ObjectPath, key: &Digest) -> ObjectPath {
    let hex = key.hex();
    key_under(prefix, &["ac", &hex[..2], &format!("{hex}.json")])
}

impl Remote {
    /// Connects nothing yet: builds the client for `settings.url`.
    pub fn open(settings: &RemoteSettings) -> Result<Option<Remote>, RemoteError> {
        let Some(raw) = settings.url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let shown = redact(raw);
        let bad = |message: String| RemoteError::BadUrl {
            url: shown.clone(),
            message: message.replace(raw, &shown),
        };
        let url = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
        // The timeout covers a whole request, body included: room for large weights.
        let timeout = Duration::from_secs(settings.timeout.unwrap_or(60).max(1));
        let retries = settings.retries.unwrap_or(3);
        let retry = object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: retries,
            retry_timeout: timeout * (retries as u32 + 1),
        };
        let client = object_store::ClientOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(Duration::from_secs(5).min(timeout))
            .with_allow_http(true);
        let mut secrets: Vec<String> = Vec::new();
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) = match url.scheme() {
            "file" => {
                let path = url
                    .to_file_path()
                    .map_err(|()| bad("not a local path".into()))?;
                std::fs::create_dir_all(&path).map_err(|e| bad(e.to_string()))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&path)
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(store), ObjectPath::default())
            }
            "http" | "https" => {
                let mut headers = object_store::HeaderMap::new();
                // Credentials in the URL become a header too: the client then never holds
                // them in a URL that could end up in an error message.
                let in_url = (!url.username().is_empty()).then(|| {
                    (
                        url.username().to_string(),
                        url.password().unwrap_or_default().to_string(),
                    )
                });
                // An empty variable (CI's value of a secret that is not set) counts as unset.
                let set = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
                let from_env =
                    set(USER_ENV).map(|user| (user, set(PASSWORD_ENV).unwrap_or_default()));
                let auth = match (set(TOKEN_ENV), from_env.or(in_url)) {
                    (Some(token), _) => {
                        secrets.push(token.clone());
                        Some(format!("Bearer {token}"))
                    }
                    (None, Some((user, password))) => {
                        use base64::Engine as _;
                        secrets.extend([user.clone(), password.clone()]);
                        Some(format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD
                                .encode(format!("{user}:{password}"))
                        ))
                    }
                    _ => None,
                };
                if let Some(auth) = auth {
                    let mut value = object_store::HeaderValue::from_str(&auth)
                        .map_err(|_| bad("the credentials are not a valid header".into()))?;
                    value.set_sensitive(true);
                    headers.insert("authorization", value);
                }
                // A base URL ending in `/` would make `//` in every request path.
                let store = object_store::http::HttpBuilder::new()
                    .with_url(displayable(&url).trim_end_matches('/'))
                    .with_client_options(client.with_default_headers(headers))
                    .with_retry(retry)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                (Arc::new(store), ObjectPath::default())
            }
            "s3" | "gs" | "az" => {
                // Credentials come from the usual variables (AWS_*, GOOGLE_*, AZURE_*), read by
                // each builder's `from_env`; the timeouts and retries are set key by key so that
                // they do not replace what the environment configured.
                use object_store::ClientConfigKey::{ConnectTimeout, Timeout};
                let secs = |d: Duration| format!("{}s", d.as_secs());
                let connect = Duration::from_secs(5).min(timeout);
                let store: Arc<dyn ObjectStore> = match url.scheme() {
                    "s3" => {
                        use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey as Key};
                        Arc::new(
                            AmazonS3Builder::from_env()
                                .with_url(url.as_str())
                                .with_config(Key::Client(Timeout), secs(timeout))
                                .with_config(Key::Client(ConnectTimeout), secs(connect))
                                .with_retry(retry)
                                .build()
                                .map_err(|e| bad(e.to_string()))?,
                        )
                    }
                    "gs" => {
                        use object_store::gcp::{
                            GoogleCloudStorageBuilder, GoogleConfigKey as Key,
                        };
                        Arc::new(
                            GoogleCloudStorageBuilder::from_env()
                                .with_url(url.as_str())
                                .with_config(Key::Client(Timeout), secs(timeout))
                                .with_config(Key::Client(ConnectTimeout), secs(connect))
                                .with_retry(retry)
                                .build()
                                .map_err(|e| bad(e.to_string()))?,
                        )
                    }
                    _ => {
                        use object_store::azure::{AzureConfigKey as Key, MicrosoftAzureBuilder};
                        Arc::new(
                            MicrosoftAzureBuilder::from_env()
                                .with_url(url.as_str())
                                .with_config(Key::Client(Timeout), secs(timeout))
                                .with_config(Key::Client(ConnectTimeout), secs(connect))
                                .with_retry(retry)
                                .build()
                                .map_err(|e| bad(e.to_string()))?,
                        )
                    }
                };
                secrets.extend(
                    std::env::vars()
                        .filter(|(k, _)| {
                            ["AWS_", "GOOGLE_", "AZURE_"]
                                .iter()
                                .any(|p| k.starts_with(p))
                                && ["SECRET", "TOKEN", "KEY", "PASSWORD"]
                                    .iter()
                                    .any(|w| k.contains(w))
                        })
                        .map(|(_, v)| v),
                );
                let prefix = url.path().trim_matches('/');
                (store, ObjectPath::from(prefix))
            }
            other => return Err(bad(format!("unsupported scheme `{other}`"))),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start the I/O runtime: {e}")))?;
        secrets.retain(|s| s.len() >= 3);
        Ok(Some(Remote {
            url: displayable(&url),
            secrets,
            store,
            prefix,
            runtime,
            upload: settings.upload,
            required: settings.required,
            down: AtomicBool::new(false),
            stats: Mutex::default(),
        }))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn stats(&self) -> RemoteStats {
        *self.stats.lock().expect("remote stats poisoned")
    }

    fn count(&self, f: impl FnOnce(&mut RemoteStats)) {
        f(&mut self.stats.lock().expect("remote stats poisoned"));
    }

    /// Turns a failed request into the error, warns once, and stops using the remote.
    fn failed(&self, what: &str, error: impl std::fmt::Display) -> RemoteError {
        let mut message = format!("{what}: {error}");
        for secret in &self.secrets {
            message = message.replace(secret.as_str(), "***");
        }
        if !self.down.swap(true, Ordering::SeqCst) && !self.required {
            eprintln!(
                "warning: remote cache {} is unavailable ({message}); continuing without it",
                self.url
            );
        }
        RemoteError::Unavailable {
            url: self.url.clone(),
            message,
        }
    }

    fn check_up(&self) -> Result<(), RemoteError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(RemoteError::Unavailable {
                url: self.url.clone(),
                message: "an earlier request failed".into(),
            });
        }
        Ok(())
    }

    /// GETs an object; `None` when it does not exist.
    fn get(&self, key: &ObjectPath) -> Result<Option<Vec<u8>>, RemoteError> {
        self.check_up()?;
        let result = self.runtime.block_on(async {
            match self.store.get(key).await {
                Ok(got) => got.bytes().await.map(|b| Some(b.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        result.map_err(|e| self.failed(&format!("GET {key}"), e))
    }

    /// Whether an object exists (HEAD).
    fn exists(&self, key: &ObjectPath) -> Result<bool, RemoteError> {
        self.check_up()?;
        let result = self.runtime.block_on(async {
            match self.store.head(key).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        });
        result.map_err(|e| self.failed(&format!("HEAD {key}"), e))
    }

    fn put(&self, key: &ObjectPath, bytes: Vec<u8>) -> Result<(), RemoteError> {
        self.check_up()?;
        let result = self
            .runtime
            .block_on(self.store.put(key, PutPayload::from(bytes)));
        result
            .map(|_| ())
            .map_err(|e| self.failed(&format!("PUT {key}"), e))
    }

    /// Checks that the remote answers at all (a missing object is an answer).
    pub fn probe(&self) -> Result<(), RemoteError> {
        self.exists(&key_under(&self.prefix, &["ac", "probe"]))
            .map(|_| ())
    }

    /// Whether the remote holds an action entry for `key` (its blobs are not checked).
    pub fn has_action(&self, key: &Digest) -> Result<bool, RemoteError> {
        self.exists(&action_key(&self.prefix, key))
    }

    /// Downloads the action entry for `key` and every blob it names that the local store lacks,
    /// verifying each, then records the entry locally. `Ok(None)` on a miss or when something
    /// fails verification (with a warning): the stage then runs locally.
    pub fn fetch_action(
        &self,
        store: &Store,
        key: &Digest,
        stage: &str,
        outputs: &[&str],
    ) -> Result<Option<ActionEntry>, RemoteError> {
        let Some(bytes) = self.get(&action_key(&self.prefix, key))? else {
            self.count(|s| s.misses += 1);
            return Ok(None);
        };
        let reject = |why: String| {
            eprintln!(
                "warning: rejected the remote cache entry for {stage} ({why}); running it locally"
            );
            self.count(|s| s.rejected += 1);
            Ok(None)
        };
        let entry: ActionEntry = match serde_json::from_slice(&bytes) {
            Ok(entry) => entry,
            Err(e) => return reject(format!("unreadable entry: {e}")),
        };
        if entry.key != *key {
            return reject(format!("the entry names key {}", entry.key.short()));
        }
        let named: Vec<&str> = entry.outputs.keys().map(String::as_str).collect();
        if named != outputs {
            return reject(format!(
                "the entry names outputs {named:?}, the stage declares {outputs:?}"
            ));
        }
        for (path, output) in &entry.outputs {
            if let Some(tree) = &output.tree {
                if tree_hash(tree) != output.hash {
                    return reject(format!("the tree of {path} does not match its hash"));
                }
                if let Err(why) = edgebuild_engine::hash::check_tree(tree) {
                    return reject(format!("{path}: {why}"));
                }
            }
        }
        for blob in entry.blobs() {
            if store.has_blob(&blob) {
                continue;
            }
            let Some(bytes) = self.get(&blob_key(&self.prefix, &blob))? else {
                return reject(format!("blob {} is missing", blob.short()));
            };
            if Digest::of_bytes(&bytes) != blob {
                return reject(format!(
                    "blob {} does not match its hash: corrupted or poisoned",
                    blob.short()
                ));
            }
            if let Err(e) = store.put_bytes(&bytes, &blob) {
                return reject(format!("cannot store blob {}: {e}", blob.short()));
            }
        }
        if let Err(e) = store.put_action(&entry) {
            return reject(format!("cannot record the entry locally: {e}"));
        }
        self.count(|s| s.hits += 1);
        Ok(Some(entry))
    }

    /// Uploads one blob of the local store unless the remote has it.
    pub fn upload_blob(&self, store: &Store, blob: &Digest) -> Result<(), RemoteError> {
        let key = blob_key(&self.prefix, blob);
        if self.exists(&key)? {
            return Ok(());
        }
        let Some(bytes) = store.blob_bytes(blob) else {
            return Err(self.failed(
                "upload",
                format!("blob {} is missing from the local cache", blob.short()),
            ));
        };
        self.put(&key, bytes)?;
        self.count(|s| s.uploaded_blobs += 1);
        Ok(())
    }

    /// Downloads one blob, verified; `None` when it is absent or does not match its hash.
    pub fn fetch_blob(&self, blob: &Digest) -> Result<Option<Vec<u8>>, RemoteError> {
        let Some(bytes) = self.get(&blob_key(&self.prefix, blob))? else {
            return Ok(None);
        };
        if Digest::of_bytes(&bytes) != *blob {
            eprintln!(
                "warning: rejected blob {} from the remote: it does not match its hash",
                blob.short()
            );
            self.count(|s| s.rejected += 1);
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// Uploads an entry's blobs (those the remote lacks), then the entry itself, so a reader
    /// never finds an entry whose blobs are missing. Uploading the same entry twice, or from two
    /// machines at once, writes the same bytes.
    pub fn upload_action(&self, store: &Store, entry: &ActionEntry) -> Result<(), RemoteError> {
        for blob in entry.blobs() {
            self.upload_blob(store, &blob)?;
        }
        let bytes = serde_json::to_vec_pretty(entry).expect("action entries serialize");
        self.put(&action_key(&self.prefix, &entry.key), bytes)?;
        self.count(|s| s.uploaded_entries += 1);
        Ok(())
    }
}

/// A stage's declared output paths, sorted (as an entry's outputs are).
pub fn declared_outputs<'a>(ctx: &'a Context, stage: &str) -> Vec<&'a str> {
    let mut paths: Vec<&str> = ctx
        .ws
        .stage_index(stage)
        .map(|i| {
            ctx.ws.stages[i]
                .outputs
                .iter()
                .map(|p| p.path.as_str())
                .collect()
        })
        .unwrap_or_default();
    paths.sort_unstable();
    paths
}

/// One stage's place in the caches, for `cache status`.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStatus {
    pub stage: String,
    pub key: Digest,
    /// Total bytes of the stage's outputs, from the lock.
    pub bytes: u64,
    pub local: bool,
    /// `None` when the remote could not be asked.
    pub remote: Option<bool>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub volatile: bool,
}

/// What `cache push` or `cache pull` did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Transfer {
    pub transferred: Vec<String>,
    pub already_there: Vec<String>,
    /// Not available on the side it should come from.
    pub unavailable: Vec<String>,
    /// Volatile stages are never shared.
    pub volatile: Vec<String>,
}

/// The locked stages among `selected`: (stage id, key, output bytes, volatile).
fn locked_stages(ctx: &Context, selected: &[usize]) -> Vec<(String, Digest, u64, bool)> {
    selected
        .iter()
        .filter_map(|&i| {
            let locked = ctx.locked(i)?;
            let stage = &ctx.ws.stages[i];
            let bytes = locked.outputs.values().filter_map(|o| o.size).sum();
            Some((stage.id.clone(), locked.key, bytes, stage.volatile))
        })
        .collect()
}

/// `cache status`: where each locked stage's entry is.
pub fn status(ctx: &Context, remote: &Remote, selected: &[usize]) -> Vec<CacheStatus> {
    locked_stages(ctx, selected)
        .into_iter()
        .map(|(stage, key, bytes, volatile)| CacheStatus {
            local: ctx.store.get_action(&key).is_some(),
            remote: if volatile {
                Some(false)
            } else {
                remote.has_action(&key).ok()
            },
            stage,
            key,
            bytes,
            volatile,
        })
        .collect()
}

/// `cache push`: uploads the local entries of the locked stages.
pub fn push(ctx: &Context, remote: &Remote, selected: &[usize]) -> Result<Transfer, RemoteError> {
    let mut transfer = Transfer::default();
    for (stage, key, _, volatile) in locked_stages(ctx, selected) {
        if volatile {
            transfer.volatile.push(stage);
            continue;
        }
        let Some(entry) = ctx.store.get_action(&key) else {
            transfer.unavailable.push(stage);
            continue;
        };
        if remote.has_action(&key)? {
            transfer.already_there.push(stage);
            continue;
        }
        remote.upload_action(&ctx.store, &entry)?;
        transfer.transferred.push(stage);
    }
    Ok(transfer)
}

/// `cache pull`: downloads the remote entries of the locked stages into the local cache.
pub fn pull(ctx: &Context, remote: &Remote, selected: &[usize]) -> Result<Transfer, RemoteError> {
    let mut transfer = Transfer::default();
    for (stage, key, _, volatile) in locked_stages(ctx, selected) {
        if volatile {
            transfer.volatile.push(stage);
        } else if ctx.store.get_action(&key).is_some() {
            transfer.already_there.push(stage);
        } else if remote
            .fetch_action(&ctx.store, &key, &stage, &declared_outputs(ctx, &stage))?
            .is_some()
        {
            transfer.transferred.push(stage);
        } else {
            transfer.unavailable.push(stage);
        }
    }
    Ok(transfer)
}

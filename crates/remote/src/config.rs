//! The workspace's settings file, `edgebuild.yaml` beside `pipelines/` (SPEC.md, "Remote cache"
//! and "Remote execution"), merged with the environment and the command line, each overriding
//! the one before; and opening the remote cache those settings name.

use std::path::Path;
use std::sync::Arc;

use crate::cache::{REMOTE_ENV, Remote, RemoteError, RemoteSettings, UPLOAD_ENV};
use crate::exec::{EXEC_ENV, RemoteExecSettings};

/// The workspace's configuration file.
pub const CONFIG_FILE: &str = "edgebuild.yaml";

/// Remote cache settings given on the command line.
#[derive(Debug, Clone, Default)]
pub struct RemoteOverrides {
    pub url: Option<String>,
    pub upload: bool,
    pub required: bool,
    /// No remote at all, whatever the configuration says.
    pub disabled: bool,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkspaceConfig {
    #[serde(default)]
    remote: Option<RemoteSettings>,
    #[serde(default)]
    remote_exec: Option<RemoteExecSettings>,
}

fn workspace_config(root: &Path) -> Result<WorkspaceConfig, RemoteError> {
    let path = root.join(CONFIG_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_saphyr::from_str::<WorkspaceConfig>(&text).map_err(|e| RemoteError::Config {
                message: format!("cannot read {CONFIG_FILE}: {e}"),
                help: Some(
                    "see SPEC.md, \"Remote cache\" and \"Remote execution\", for its keys".into(),
                ),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(WorkspaceConfig::default()),
        Err(e) => Err(RemoteError::Io {
            path: path.display().to_string(),
            source: e,
        }),
    }
}

/// The remote executor's settings: `edgebuild.yaml`'s `remote_exec`, then `EDGEBUILD_REMOTE_EXEC`,
/// then the command line. `None` when no executor is configured.
pub fn remote_exec_settings(
    root: &Path,
    overrides: &RemoteExecSettings,
) -> Result<Option<RemoteExecSettings>, RemoteError> {
    let mut settings = workspace_config(root)?.remote_exec.unwrap_or_default();
    if let Ok(url) = std::env::var(EXEC_ENV) {
        settings.url = Some(url);
    }
    if overrides.url.is_some() {
        settings.url = overrides.url.clone();
    }
    if !overrides.instance.is_empty() {
        settings.instance = overrides.instance.clone();
    }
    if overrides.jobs.is_some() {
        settings.jobs = overrides.jobs;
    }
    settings.fallback |= overrides.fallback;
    Ok(settings.url.is_some().then_some(settings))
}

/// The remote settings of a workspace: `edgebuild.yaml`, then the environment
/// (`EDGEBUILD_REMOTE`, `EDGEBUILD_REMOTE_UPLOAD`), then the command line, each overriding the
/// one before.
pub fn remote_settings(
    root: &Path,
    overrides: &RemoteOverrides,
) -> Result<RemoteSettings, RemoteError> {
    let mut settings = workspace_config(root)?.remote.unwrap_or_default();
    if let Ok(url) = std::env::var(REMOTE_ENV) {
        settings.url = Some(url);
    }
    if let Ok(upload) = std::env::var(UPLOAD_ENV) {
        settings.upload = matches!(upload.as_str(), "1" | "true" | "yes");
    }
    if let Some(url) = &overrides.url {
        settings.url = Some(url.clone());
    }
    settings.upload |= overrides.upload;
    settings.required |= overrides.required;
    if overrides.disabled {
        settings.url = None;
    }
    if settings.required && settings.url.is_none() {
        return Err(RemoteError::Config {
            message: "--remote-required, but no remote is configured".into(),
            help: Some(format!(
                "give --remote URL, set {REMOTE_ENV}, or add `remote: {{url: ...}}` to {CONFIG_FILE}"
            )),
        });
    }
    Ok(settings)
}

/// The workspace's remote cache, when one is configured; probed when it is required.
pub fn open_remote(
    root: &Path,
    overrides: &RemoteOverrides,
) -> Result<Option<Arc<Remote>>, RemoteError> {
    let remote = Remote::open(&remote_settings(root, overrides)?)?;
    if let Some(remote) = remote.as_ref().filter(|r| r.required) {
        remote.probe()?;
    }
    Ok(remote.map(Arc::new))
}

//! An opened workspace: its validated pipelines, graph, cache, stat cache and lock files.
//!
//! Opening takes the workspace lock (`.edgebuild/lock`): exclusive for commands that write
//! (`build`, `gc`), shared for those that only read (`plan`), so a second build waits for the
//! first instead of corrupting anything. This module also turns a stage and its input hashes
//! into [`Ingredients`], the one place where a key is assembled.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::hash::{Digest, StatCache};
use crate::key::{Ingredients, InputIngredient, OpIdentity, OutputIngredient};
use crate::lock::{LockFile, LockedStage};
use crate::remote::{Remote, RemoteSettings};
use crate::spec::{Action, Stage, Workspace};
use crate::store::Store;

/// The directory under the workspace root for state that is local to this checkout.
pub const STATE_DIR: &str = ".edgebuild";
/// Environment variable that overrides the cache directory.
pub const CACHE_ENV: &str = "EDGEBUILD_CACHE_DIR";

/// Where to find the workspace and its cache.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A directory inside the workspace (default: the current directory).
    pub dir: Option<PathBuf>,
    /// The cache directory (default: `cache/` under the workspace root).
    pub cache_dir: Option<PathBuf>,
    /// Remote cache settings from the command line; merged over the environment and the
    /// workspace's `edgebuild.yaml` (see [`remote_settings`]).
    pub remote: RemoteOverrides,
}

/// Remote cache settings given on the command line.
#[derive(Debug, Clone, Default)]
pub struct RemoteOverrides {
    pub url: Option<String>,
    pub upload: bool,
    pub required: bool,
    /// No remote at all, whatever the configuration says.
    pub disabled: bool,
}

/// The workspace's configuration file, `edgebuild.yaml` beside `pipelines/`.
pub const CONFIG_FILE: &str = "edgebuild.yaml";

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkspaceConfig {
    #[serde(default)]
    remote: Option<RemoteSettings>,
    #[serde(default)]
    remote_exec: Option<crate::remote_exec::RemoteExecSettings>,
}

fn workspace_config(root: &Path) -> Result<WorkspaceConfig> {
    let path = root.join(CONFIG_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_saphyr::from_str::<WorkspaceConfig>(&text).map_err(|e| {
            Error::usage(
                format!("cannot read {CONFIG_FILE}: {e}"),
                Some("see SPEC.md, \"Remote cache\" and \"Remote execution\", for its keys".into()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(WorkspaceConfig::default()),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// The remote executor's settings: `edgebuild.yaml`'s `remote_exec`, then `EDGEBUILD_REMOTE_EXEC`,
/// then the command line. `None` when no executor is configured.
pub fn remote_exec_settings(
    root: &Path,
    overrides: &crate::remote_exec::RemoteExecSettings,
) -> Result<Option<crate::remote_exec::RemoteExecSettings>> {
    let mut settings = workspace_config(root)?.remote_exec.unwrap_or_default();
    if let Ok(url) = std::env::var(crate::remote_exec::EXEC_ENV) {
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
pub fn remote_settings(root: &Path, overrides: &RemoteOverrides) -> Result<RemoteSettings> {
    let mut settings = workspace_config(root)?.remote.unwrap_or_default();
    if let Ok(url) = std::env::var(crate::remote::REMOTE_ENV) {
        settings.url = Some(url);
    }
    if let Ok(upload) = std::env::var(crate::remote::UPLOAD_ENV) {
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
        return Err(Error::usage(
            "--remote-required, but no remote is configured",
            Some(format!(
                "give --remote URL, set {}, or add `remote: {{url: ...}}` to {CONFIG_FILE}",
                crate::remote::REMOTE_ENV
            )),
        ));
    }
    Ok(settings)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

pub struct Context {
    pub ws: Workspace,
    pub graph: Graph,
    pub store: Store,
    pub stat: StatCache,
    /// One per pipeline, in [`Workspace::pipelines`] order.
    pub locks: Vec<Option<LockFile>>,
    /// The shared remote cache, when one is configured.
    pub remote: Option<Remote>,
    tool_versions: Mutex<BTreeMap<String, String>>,
    _workspace_lock: File,
}

/// The local cache (`--cache-dir`, relative to where the command started, or `cache/`) and the
/// remote, probed when it is required.
fn open_stores(options: &Options, start: &Path, root: &Path) -> Result<(Store, Option<Remote>)> {
    let cache_dir = match &options.cache_dir {
        Some(dir) if dir.is_absolute() => dir.clone(),
        Some(dir) => start.join(dir),
        None => root.join("cache"),
    };
    let store = Store::open(&cache_dir)?;
    let remote = Remote::open(&remote_settings(root, &options.remote)?)?;
    if let Some(remote) = remote.as_ref().filter(|r| r.required) {
        remote.probe()?;
    }
    Ok((store, remote))
}

/// The workspace root, its local cache and its remote, without loading the pipelines: for
/// commands that must work while an input is missing (`pull`, `add`).
pub fn open_caches(options: &Options) -> Result<(PathBuf, Store, Option<Remote>, File)> {
    let start = match &options.dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir().map_err(|e| Error::io(".", e))?,
    };
    let root = Workspace::find_root(&start)?;
    let workspace_lock = lock_workspace(&root, Access::Write)?;
    let (store, remote) = open_stores(options, &start, &root)?;
    Ok((root, store, remote, workspace_lock))
}

impl Context {
    pub fn open(options: &Options, access: Access) -> Result<Context> {
        let start = match &options.dir {
            Some(dir) => dir.clone(),
            None => std::env::current_dir().map_err(|e| Error::io(".", e))?,
        };
        let root = Workspace::find_root(&start)?;
        let workspace_lock = lock_workspace(&root, access)?;
        // Loading the pipelines and loading the stat cache and lock files are independent, and
        // each is a large share of a no-op `plan`: do them at once.
        let (ws, (stat, mut locks_by_file)) = std::thread::scope(|scope| {
            let side = scope.spawn(|| {
                let stat = StatCache::load(&root.join(STATE_DIR).join("stat-cache.json"));
                (stat, read_locks(&root))
            });
            let ws = Workspace::load(&root);
            (ws, side.join().expect("loading locks does not panic"))
        });
        let ws = ws?;
        let graph = Graph::build(&ws)?;
        let (store, remote) = open_stores(options, &start, &root)?;
        let mut locks = Vec::new();
        for pipeline in &ws.pipelines {
            let file = pipeline.lock_file();
            let lock = match locks_by_file.remove(&file) {
                Some(read) => read,
                None => LockFile::read(&root.join(&file)),
            }
            .map_err(|message| {
                Error::usage(
                    format!("cannot read lock file {file}: {message}"),
                    Some("delete it to rebuild from scratch, or restore it from git".into()),
                )
            })?;
            locks.push(lock);
        }
        Ok(Context {
            ws,
            graph,
            store,
            stat,
            locks,
            remote,
            tool_versions: Mutex::new(BTreeMap::new()),
            _workspace_lock: workspace_lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.ws.root
    }

    pub fn save_stat_cache(&self) {
        // The stat cache is an optimisation: failing to save it costs speed, not correctness.
        let _ = self
            .stat
            .save(&self.ws.root.join(STATE_DIR).join("stat-cache.json"));
    }

    /// The lock entry of a stage, if its pipeline's lock has one.
    pub fn locked(&self, stage: usize) -> Option<&LockedStage> {
        let stage = &self.ws.stages[stage];
        self.locks[stage.pipeline].as_ref()?.stages.get(&stage.name)
    }

    /// Resolves command-line targets (pipeline names, `PIPELINE:STAGE` ids or unique stage
    /// names) to the stages they need, in topological order. No targets: every stage.
    pub fn select(&self, targets: &[String]) -> Result<Vec<usize>> {
        if targets.is_empty() {
            return Ok(self.graph.order.clone());
        }
        let mut roots = Vec::new();
        for target in targets {
            let target = crate::spec::target_pipeline(target);
            if let Some(p) = self.ws.pipeline_index(target) {
                roots.extend(
                    self.ws
                        .stages
                        .iter()
                        .enumerate()
                        .filter(|(_, s)| s.pipeline == p)
                        .map(|(i, _)| i),
                );
                continue;
            }
            if let Some(i) = self.ws.stage_index(target) {
                roots.push(i);
                continue;
            }
            let by_name: Vec<usize> = (0..self.ws.stages.len())
                .filter(|&i| self.ws.stages[i].name == target)
                .collect();
            match by_name.as_slice() {
                [one] => roots.push(*one),
                [] => {
                    let candidates = self
                        .ws
                        .pipelines
                        .iter()
                        .map(|p| p.name.as_str())
                        .chain(self.ws.stages.iter().map(|s| s.id.as_str()));
                    let help = crate::spec::did_you_mean(target, candidates)
                        .map(|s| format!("did you mean `{s}`?"))
                        .or_else(|| Some("name a pipeline (file stem), a stage id PIPELINE:STAGE or a stage name".into()));
                    return Err(Error::usage(
                        format!("no pipeline or stage named `{target}`"),
                        help,
                    ));
                }
                many => {
                    let ids: Vec<&str> = many
                        .iter()
                        .map(|&i| self.ws.stages[i].id.as_str())
                        .collect();
                    return Err(Error::usage(
                        format!("stage name `{target}` is ambiguous"),
                        Some(format!("use one of: {}", ids.join(", "))),
                    ));
                }
            }
        }
        Ok(self.graph.closure(&roots))
    }

    /// The pipelines named on the command line (all when none is), as indices.
    pub fn pipelines_named(&self, names: &[String]) -> Result<Vec<usize>> {
        if names.is_empty() {
            return Ok((0..self.ws.pipelines.len()).collect());
        }
        names
            .iter()
            .map(|name| {
                self.ws.pipeline_index(name).ok_or_else(|| {
                    let known: Vec<&str> =
                        self.ws.pipelines.iter().map(|p| p.name.as_str()).collect();
                    Error::usage(
                        format!("no pipeline named `{}`", crate::spec::target_pipeline(name)),
                        Some(format!("pipelines: {}", known.join(", "))),
                    )
                })
            })
            .collect()
    }

    /// Runs a declared tool version command once per process and remembers its output.
    fn tool_version(&self, command: &str) -> String {
        if let Some(v) = self
            .tool_versions
            .lock()
            .expect("tool cache poisoned")
            .get(command)
        {
            return v.clone();
        }
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&self.ws.root)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output();
        let version = match output {
            Ok(out) if out.status.success() => {
                let text = if out.stdout.is_empty() {
                    out.stderr
                } else {
                    out.stdout
                };
                String::from_utf8_lossy(&text).trim().to_string()
            }
            Ok(out) => format!("(failed: {})", out.status),
            Err(e) => format!("(failed: {e})"),
        };
        self.tool_versions
            .lock()
            .expect("tool cache poisoned")
            .insert(command.to_string(), version.clone());
        version
    }

    /// The ingredients of a stage given the hashes of its inputs.
    pub fn ingredients(&self, stage: &Stage, inputs: Vec<InputIngredient>) -> Ingredients {
        let (cmd, op, fingerprint) = match &stage.action {
            Action::Cmd(template) => (Some(template.clone()), None, BTreeMap::new()),
            // The checklist is part of the key: a changed list needs a new sign-off.
            Action::Manual(items) => (
                Some(format!("manual:\n- {}", items.join("\n- "))),
                None,
                BTreeMap::new(),
            ),
            Action::Op { name, version } => (
                None,
                Some(OpIdentity {
                    name: name.clone(),
                    version: *version,
                }),
                crate::ops::find(name)
                    .map(|op| op.fingerprint())
                    .unwrap_or_default(),
            ),
        };
        Ingredients {
            cmd,
            op,
            params: stage.params.clone(),
            inputs,
            outputs: stage
                .outputs
                .iter()
                .map(|p| OutputIngredient {
                    name: p.name.clone(),
                    path: p.path.clone(),
                })
                .collect(),
            env: stage
                .env
                .iter()
                .map(|name| {
                    let value = std::env::var_os(name);
                    let hash = value.map(|v| Digest::of_bytes(v.as_encoded_bytes()));
                    (name.clone(), hash)
                })
                .collect(),
            tools: stage
                .tools
                .iter()
                .map(|(name, command)| (name.clone(), self.tool_version(command)))
                .collect(),
            fingerprint,
        }
    }
}

/// Reads the lock file beside every pipeline file, by workspace-relative lock path.
fn read_locks(root: &Path) -> BTreeMap<String, Result<Option<LockFile>, String>> {
    crate::spec::pipeline_files(root)
        .unwrap_or_default()
        .iter()
        .map(|path| {
            let file = format!(
                "{}/{}.lock",
                crate::spec::PIPELINES_DIR,
                crate::spec::pipeline_name(path)
            );
            let lock = LockFile::read(&root.join(&file));
            (file, lock)
        })
        .collect()
}

fn lock_workspace(root: &Path, access: Access) -> Result<File> {
    let dir = root.join(STATE_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let attempt = match access {
        Access::Write => file.try_lock(),
        Access::Read => file.try_lock_shared(),
    };
    match attempt {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            eprintln!("waiting for another edgebuild process in this workspace to finish...");
            match access {
                Access::Write => file.lock(),
                Access::Read => file.lock_shared(),
            }
            .map_err(|e| Error::io(&path, e))?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
    }
    if access == Access::Write {
        // A second descriptor of the same lock, without close-on-exec: every stage process
        // inherits it, so the lock outlives a killed edgebuild until its stages exit too. (A
        // `pre_exec` hook would do the same per child but forces fork() over posix_spawn.)
        use std::os::fd::AsRawFd;
        // SAFETY: dup of a descriptor this process owns; the copy lives as long as the process.
        if unsafe { libc::dup(file.as_raw_fd()) } == -1 {
            return Err(Error::io(&path, std::io::Error::last_os_error()));
        }
    }
    Ok(file)
}

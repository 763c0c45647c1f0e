//! An opened workspace: its validated pipelines, graph, cache, stat cache and lock files, with
//! the op registry and the remote cache the caller gave it. It is the engine's loaded state:
//! [`crate::plan`] and [`crate::exec`] read it; it calls into neither.
//!
//! Opening takes the workspace lock (`.edgebuild/lock`): exclusive for commands that write
//! (`build`, `gc`), shared for those that only read (`plan`), so a second build waits for the
//! first instead of corrupting anything.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::hash::StatCache;
use crate::key::ToolVersions;
use crate::layout::{CACHE_DIR, STATE_DIR};
use crate::lock::{LockFile, LockedStage};
use crate::op::OpRegistry;
use crate::remote_cache::RemoteCache;
use crate::spec::Workspace;
use crate::store::Store;

/// Where to find the workspace and its cache.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A directory inside the workspace (default: the current directory).
    pub dir: Option<PathBuf>,
    /// The cache directory (default: `cache/` under the workspace root).
    pub cache_dir: Option<PathBuf>,
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
    /// The shared remote cache, when the caller configured one.
    pub remote: Option<Arc<dyn RemoteCache>>,
    /// The ops stages may name.
    pub ops: Arc<OpRegistry>,
    /// Declared tool versions, run once per process.
    pub tools: ToolVersions,
    guard: std::sync::OnceLock<crate::guard::PathGuard>,
    _workspace_lock: File,
}

/// The local cache's directory: `--cache-dir` (relative to where the command started) or
/// `cache/`.
fn cache_dir(options: &Options, start: &Path, root: &Path) -> PathBuf {
    match &options.cache_dir {
        Some(dir) if dir.is_absolute() => dir.clone(),
        Some(dir) => start.join(dir),
        None => root.join(CACHE_DIR),
    }
}

fn open_store(options: &Options, start: &Path, root: &Path) -> Result<Store> {
    Ok(Store::open(&cache_dir(options, start, root))?)
}

/// The cache may not overlap a stage's output (SPEC.md, "Cache"): building the stage would
/// delete the cache, or restoring into the cache would overwrite it. Checked when the workspace
/// loads, as a diagnostic that points at the output. (The stat cache and the locks live in
/// `.edgebuild/` and `pipelines/`, which no output may enter.)
fn check_cache_overlap(ws: &Workspace, cache_dir: &Path) -> Result<(), crate::spec::SpecError> {
    let root = crate::guard::resolve(&ws.root);
    let cache = crate::guard::resolve(cache_dir);
    let mut errors = Vec::new();
    for stage in &ws.stages {
        for port in &stage.outputs {
            let overlaps = match cache.strip_prefix(&root) {
                // The workspace root itself: the cache would hold every output.
                Ok(rel) if rel.as_os_str().is_empty() => true,
                Ok(rel) => rel
                    .to_str()
                    .is_some_and(|rel| crate::spec::paths_overlap(rel, &port.path)),
                // A cache outside the workspace overlaps an output only by containing it all.
                Err(_) => root.starts_with(&cache),
            };
            if overlaps {
                errors.push(ws.source_of(stage).invalid(
                    port.span,
                    format!(
                        "output `{}` of {} overlaps the cache directory {}",
                        port.path,
                        stage.id,
                        cache_dir.display()
                    ),
                    "overlaps the cache",
                    Some("building the stage would delete the cache with its outputs: choose another --cache-dir (or EDGEBUILD_CACHE_DIR), or move the output".into()),
                ));
            }
        }
    }
    crate::spec::SpecError::collect(errors)
}

/// The workspace root, its local cache and the workspace lock, without loading the pipelines:
/// for commands that must work while an input is missing (`pull`, `add`).
pub fn open_caches(options: &Options) -> Result<(PathBuf, Store, File)> {
    let start = match &options.dir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir().map_err(|e| Error::io(".", e))?,
    };
    let root = Workspace::find_root(&start)?;
    let workspace_lock = lock_workspace(&root, Access::Write)?;
    let store = open_store(options, &start, &root)?;
    Ok((root, store, workspace_lock))
}

impl Context {
    /// Opens the workspace around `options.dir` with the ops it may name. The remote cache, if
    /// any, is the caller's to set afterwards.
    pub fn open(options: &Options, access: Access, ops: Arc<OpRegistry>) -> Result<Context> {
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
            let ws = Workspace::load(&root, &ops);
            (ws, side.join().expect("loading locks does not panic"))
        });
        let ws = ws?;
        let graph = Graph::build(&ws)?;
        check_cache_overlap(&ws, &cache_dir(options, &start, &root))?;
        let store = open_store(options, &start, &root)?;
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
            remote: None,
            tools: ToolVersions::new(&root),
            ops,
            guard: std::sync::OnceLock::new(),
            _workspace_lock: workspace_lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.ws.root
    }

    /// The guard of every path edgebuild deletes or writes here (SPEC.md, "Path guard").
    pub fn guard(&self) -> &crate::guard::PathGuard {
        self.guard.get_or_init(|| {
            crate::guard::PathGuard::new(&self.ws.root, self.store.dir(), &self.ws.stages)
        })
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
}

/// Reads the lock file beside every pipeline file, by workspace-relative lock path.
fn read_locks(root: &Path) -> BTreeMap<String, Result<Option<LockFile>, String>> {
    crate::spec::pipeline_files(root)
        .unwrap_or_default()
        .iter()
        .map(|path| {
            let file = crate::layout::lock_file(&crate::spec::pipeline_name(path));
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

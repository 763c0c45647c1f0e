//! Proving reproducibility: rebuilding an old commit from scratch and comparing every artifact
//! with the lock committed there (`verify-reproducible COMMIT`), and building the current tree
//! twice under different conditions (`verify-reproducible --vary`).
//!
//! Each build is a child `edgebuild build` in a temporary copy of the workspace with a private,
//! empty cache and no remote, so nothing is restored and the user's checkout and cache are never
//! touched. The comparison walks the stages in dependency order and tells the first divergent
//! stage (its inputs matched, its outputs did not) from the cascade below it.
//!
//! Its parts: the [`child`] build, the [`comparison`] of lock entries, the [`scratch`]
//! workspace, and the [`render`]ing of the result.

pub mod child;
pub mod comparison;
pub mod render;
pub mod scratch;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::Diagnostic;
use serde::Serialize;
use thiserror::Error;

use edgebuild_engine::context::{Access, Context, Options};
use edgebuild_engine::exec::Outcome;
use edgebuild_engine::lock::{LockFile, Toolchain};
use edgebuild_engine::op::OpRegistry;
use edgebuild_engine::spec::{PIPELINES_DIR, Workspace};

use crate::git::{GitError, Repository};
pub use child::{ChildBuild, Conditions, child_build};
use comparison::stages_of;
pub use comparison::{CompareInput, Comparison, LockedStages, compare};
use edgebuild_engine::hash::Digest;
use edgebuild_engine::remote_cache::RemoteCache;
pub use render::render;
use scratch::remove_locks;
pub use scratch::{Scratch, copy_workspace};

#[derive(Debug, Error, Diagnostic)]
pub enum VerifyError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Git(#[from] GitError),

    #[error("{what} has no lock file {lock}")]
    #[diagnostic(
        code(edgebuild::verify::no_lock),
        help(
            "a commit can only be verified against the lock its build wrote: build it and commit the lock with the pipeline"
        )
    )]
    NoLock { what: String, lock: String },

    #[error("{what}: {message}")]
    #[diagnostic(code(edgebuild::verify::bad_lock))]
    BadLock { what: String, message: String },

    #[error("{what} has no {dir} directory")]
    #[diagnostic(
        code(edgebuild::verify::no_pipelines),
        help("the workspace's pipelines were committed later: pick a later commit")
    )]
    NoPipelines { what: String, dir: String },

    #[error("unknown pipeline `{name}` at {what}")]
    #[diagnostic(code(edgebuild::verify::unknown_pipeline), help("{help}"))]
    UnknownPipeline {
        name: String,
        what: String,
        help: String,
    },

    #[error("the pipelines do not build at {what}: {message}")]
    #[diagnostic(
        code(edgebuild::verify::build_failed),
        help(
            "the failing build's output is above (`verify-reproducible --keep` keeps the temporary copy for a closer look)"
        )
    )]
    BuildFailed { what: String, message: String },

    #[error("not reproducible: {summary}")]
    #[diagnostic(
        code(edgebuild::verify::not_reproducible),
        help(
            "each root cause is explained above. A stage that read the same inputs and wrote different outputs depends on something it does not declare (time, randomness, an untracked file, the toolchain); mark measured outputs `volatile: true`"
        )
    )]
    NotReproducible { summary: String },

    #[error("I/O error on {path}: {source}")]
    #[diagnostic(code(edgebuild::verify::io))]
    Io {
        path: String,
        source: std::io::Error,
    },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Workspace(Box<crate::error::Error>),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> VerifyError + '_ {
    move |source| VerifyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The result of `verify-reproducible`, as printed with `--json`.
#[derive(Debug, Serialize)]
pub struct Verification {
    /// `commit` or `vary`.
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    pub pipelines: Vec<String>,
    /// Versioned inputs outside git (pointer files) brought into the copy, and from where.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pulled: Vec<(String, edgebuild_engine::pointer::Source)>,
    /// Differences between the toolchain that wrote the reference and this one.
    pub drift: Vec<String>,
    /// The conditions of each build.
    pub builds: Vec<BuildSummary>,
    #[serde(flatten)]
    pub comparison: Comparison,
    pub reproducible: bool,
}

#[derive(Debug, Serialize)]
pub struct BuildSummary {
    pub conditions: Conditions,
    /// Always a fresh private cache: nothing restored, no remote.
    pub cache: &'static str,
    pub stages: BTreeMap<String, Outcome>,
}

/// Pipeline names present in `root/pipelines` (file stems of `*.yaml`/`*.yml`), sorted.
fn pipeline_names(root: &Path) -> Result<Vec<String>, VerifyError> {
    let files =
        edgebuild_engine::spec::pipeline_files(root).map_err(io_err(&root.join(PIPELINES_DIR)))?;
    Ok(files
        .iter()
        .map(|f| edgebuild_engine::spec::pipeline_name(f))
        .collect())
}

/// The pipelines to verify: the ones named (checked to exist), or all of them.
fn choose_pipelines(
    root: &Path,
    requested: &[String],
    what: &str,
) -> Result<Vec<String>, VerifyError> {
    let names = pipeline_names(root)?;
    if requested.is_empty() {
        return Ok(names);
    }
    requested
        .iter()
        .map(|r| {
            let name = edgebuild_engine::spec::target_pipeline(r);
            if names.iter().any(|n| n == name) {
                Ok(name.to_string())
            } else {
                Err(VerifyError::UnknownPipeline {
                    name: name.to_string(),
                    what: what.to_string(),
                    help: format!("pipelines there: {}", names.join(", ")),
                })
            }
        })
        .collect()
}

/// The lock of every pipeline at `root` that has one; each `chosen` pipeline must have one (the
/// others may hold stages the chosen ones need).
fn read_locks(
    root: &Path,
    chosen: &[String],
    what: &str,
) -> Result<Vec<(String, LockFile)>, VerifyError> {
    let mut locks = Vec::new();
    for name in pipeline_names(root)? {
        let rel = format!("{PIPELINES_DIR}/{name}.lock");
        match LockFile::read(&root.join(&rel)) {
            Ok(Some(lock)) => locks.push((name, lock)),
            Ok(None) if chosen.contains(&name) => {
                return Err(VerifyError::NoLock {
                    what: what.to_string(),
                    lock: rel,
                });
            }
            Ok(None) => {}
            Err(message) => {
                return Err(VerifyError::BadLock {
                    what: format!("{rel} at {what}"),
                    message,
                });
            }
        }
    }
    Ok(locks)
}

/// Opens a rebuilt workspace (read-only) and selects the stages of `pipelines`.
fn open_rebuilt(
    root: &Path,
    cache: &Path,
    pipelines: &[String],
    ops: &Arc<OpRegistry>,
) -> Result<(Context, Vec<usize>), VerifyError> {
    let ctx = Context::open(
        &Options {
            dir: Some(root.to_path_buf()),
            cache_dir: Some(cache.to_path_buf()),
        },
        Access::Read,
        ops.clone(),
    )
    .map_err(|e| VerifyError::Workspace(Box::new(e.into())))?;
    let selected = ctx
        .select(pipelines)
        .map_err(|e| VerifyError::Workspace(Box::new(e.into())))?;
    Ok((ctx, selected))
}

/// The stage ids of a workspace, by stage index.
fn stage_ids(ctx: &Context) -> Vec<String> {
    ctx.ws.stages.iter().map(|s| s.id.clone()).collect()
}

fn rebuilt_locks(ctx: &Context) -> LockedStages {
    let locks: Vec<(String, LockFile)> = ctx
        .ws
        .pipelines
        .iter()
        .zip(&ctx.locks)
        .filter_map(|(p, l)| Some((p.name.clone(), l.clone()?)))
        .collect();
    stages_of(&locks)
}

/// Brings the pointed files of a workspace copy into place: from the user's working tree, else
/// the user's remote (the one remote read a verification makes; SPEC.md, "Versioned inputs
/// outside git").
pub fn fill_pointers(
    copy: &Path,
    root: &Path,
) -> Result<Vec<(String, edgebuild_engine::pointer::Source)>, VerifyError> {
    let workspace = |e: crate::error::Error| VerifyError::Workspace(Box::new(e));
    if edgebuild_engine::pointer::find(copy).is_empty() {
        return Ok(Vec::new());
    }
    let remote = edgebuild_remote::config::remote_settings(root, &Default::default())
        .and_then(|settings| edgebuild_remote::Remote::open(&settings))
        .map_err(|e| workspace(e.into()))?;
    edgebuild_engine::pointer::fill_copy(copy, root, remote.as_ref().map(|r| r as &dyn RemoteCache))
        .map_err(|e| workspace(e.into()))
}

/// Stages a child build did not run because something before them failed or was blocked.
fn blocked_stages(build: &ChildBuild) -> BTreeSet<String> {
    build
        .outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Blocked | Outcome::NotStarted))
        .map(|(s, _)| s.clone())
        .collect()
}

/// `verify-reproducible COMMIT`: rebuild `commit` from scratch and compare with its locks.
pub fn verify_commit(
    start: &Path,
    rev: &str,
    requested: &[String],
    keep: bool,
    ops: &Arc<OpRegistry>,
) -> Result<Verification, VerifyError> {
    let root =
        Workspace::find_root(start).map_err(|e| VerifyError::Workspace(Box::new(e.into())))?;
    let repo = Repository::find(&root)?;
    let commit = repo.resolve(rev)?;
    let what = format!("commit {}", repo.describe(&commit));
    let scratch = Scratch::new(keep)?;
    let result = verify_commit_in(&scratch, &root, &repo, &commit, &what, requested, ops);
    scratch.finish();
    result
}

fn verify_commit_in(
    scratch: &Scratch,
    root: &Path,
    repo: &Repository,
    commit: &str,
    what: &str,
    requested: &[String],
    ops: &Arc<OpRegistry>,
) -> Result<Verification, VerifyError> {
    let tree = scratch.path().join(Conditions::plain().dir);
    std::fs::create_dir_all(&tree).map_err(io_err(&tree))?;
    repo.checkout_into(commit, &tree)?;
    let ws_root = tree.join(&repo.prefix);
    if !ws_root.join(PIPELINES_DIR).is_dir() {
        return Err(VerifyError::NoPipelines {
            what: what.to_string(),
            dir: format!("{}{PIPELINES_DIR}/", repo.prefix),
        });
    }
    let pipelines = choose_pipelines(&ws_root, requested, what)?;
    let pulled = fill_pointers(&ws_root, root)?;
    let locks = read_locks(&ws_root, &pipelines, what)?;
    let expected = stages_of(&locks);
    let mut drift = BTreeSet::new();
    for (_, lock) in &locks {
        drift.extend(lock.toolchain.drift(&Toolchain::current()));
    }
    // The expected bytes of an output, for a diff: the commit's own copy when the output is
    // committed, or the user's working tree when it holds exactly those bytes. Never the cache.
    let committed: BTreeMap<Digest, Vec<u8>> = expected
        .values()
        .flat_map(|s| s.outputs.iter())
        .filter_map(|(path, out)| {
            let hash = out.hash?;
            let bytes = std::fs::read(ws_root.join(path)).ok()?;
            (Digest::of_bytes(&bytes) == hash).then_some((hash, bytes))
        })
        .collect();
    remove_locks(&ws_root)?;
    let cache = scratch.path().join("cache");
    let conditions = Conditions::plain();
    let build = child_build(&ws_root, &cache, &pipelines, &conditions)?;
    build.check(what)?;
    let (ctx, selected) = open_rebuilt(&ws_root, &cache, &pipelines, ops)?;
    let rebuilt = rebuilt_locks(&ctx);
    for (id, reb) in &rebuilt {
        if let Some(exp) = expected.get(id) {
            for reason in
                edgebuild_engine::key::Ingredients::diff(&exp.ingredients, &reb.ingredients)
            {
                if reason.is_toolchain() {
                    drift.insert(format!("{id}: {reason}"));
                }
            }
        }
    }
    let lookup = |path: &str, hash: &Digest| -> Option<Vec<u8>> {
        committed.get(hash).cloned().or_else(|| {
            let bytes = std::fs::read(root.join(path)).ok()?;
            (Digest::of_bytes(&bytes) == *hash).then_some(bytes)
        })
    };
    let ids = stage_ids(&ctx);
    let comparison = compare(&CompareInput {
        graph: &ctx.graph,
        ids: &ids,
        root: ctx.root(),
        selected: &selected,
        expected: &expected,
        rebuilt: &rebuilt,
        blocked: &blocked_stages(&build),
        expected_bytes: &lookup,
        vary: false,
    });
    Ok(Verification {
        mode: "commit",
        commit: Some(commit.to_string()),
        pipelines,
        pulled,
        drift: drift.into_iter().collect(),
        builds: vec![BuildSummary {
            conditions,
            cache: "private",
            stages: build.outcomes,
        }],
        reproducible: comparison.reproducible(),
        comparison,
    })
}

/// `verify-reproducible --vary`: build the current tree twice from scratch under different
/// conditions and compare.
pub fn verify_variations(
    start: &Path,
    requested: &[String],
    keep: bool,
    ops: &Arc<OpRegistry>,
) -> Result<Verification, VerifyError> {
    let root =
        Workspace::find_root(start).map_err(|e| VerifyError::Workspace(Box::new(e.into())))?;
    let pipelines = choose_pipelines(&root, requested, "the working tree")?;
    let scratch = Scratch::new(keep)?;
    let result = verify_variations_in(&scratch, &root, pipelines, ops);
    scratch.finish();
    result
}

fn verify_variations_in(
    scratch: &Scratch,
    root: &Path,
    pipelines: Vec<String>,
    ops: &Arc<OpRegistry>,
) -> Result<Verification, VerifyError> {
    let mut builds = Vec::new();
    let mut opened = Vec::new();
    let mut pulled = Vec::new();
    for (n, conditions) in [Conditions::reference(), Conditions::varied()]
        .into_iter()
        .enumerate()
    {
        let ws_root = scratch.path().join(conditions.dir);
        std::fs::create_dir_all(&ws_root).map_err(io_err(&ws_root))?;
        copy_workspace(root, &ws_root, ops)?;
        pulled = fill_pointers(&ws_root, root)?;
        remove_locks(&ws_root)?;
        let cache = scratch.path().join(format!("cache-{n}"));
        let build = child_build(&ws_root, &cache, &pipelines, &conditions)?;
        build.check(&format!("the working tree (build {})", n + 1))?;
        let (ctx, selected) = open_rebuilt(&ws_root, &cache, &pipelines, ops)?;
        opened.push((ctx, selected, blocked_stages(&build)));
        builds.push(BuildSummary {
            conditions,
            cache: "private",
            stages: build.outcomes,
        });
    }
    let (reference, _, _) = &opened[0];
    let (varied, selected, blocked) = &opened[1];
    let expected = rebuilt_locks(reference);
    let rebuilt = rebuilt_locks(varied);
    let reference_root: PathBuf = reference.root().to_path_buf();
    let lookup = |path: &str, _: &Digest| std::fs::read(reference_root.join(path)).ok();
    let ids = stage_ids(varied);
    let comparison = compare(&CompareInput {
        graph: &varied.graph,
        ids: &ids,
        root: varied.root(),
        selected,
        expected: &expected,
        rebuilt: &rebuilt,
        blocked,
        expected_bytes: &lookup,
        vary: true,
    });
    Ok(Verification {
        mode: "vary",
        commit: None,
        pipelines,
        pulled,
        drift: Vec::new(),
        builds,
        reproducible: comparison.reproducible(),
        comparison,
    })
}

/// Turns a finished verification into the command's result.
pub fn verdict(v: &Verification) -> Result<(), VerifyError> {
    if v.reproducible {
        Ok(())
    } else {
        Err(VerifyError::NotReproducible {
            summary: v.comparison.summary(),
        })
    }
}

/// Parses the `NAME=VALUE` variables that a variation build passes to `cmd` stages.
pub fn variation_env(assignments: &[String]) -> Vec<(String, OsString)> {
    assignments
        .iter()
        .filter_map(|a| {
            let (name, value) = a.split_once('=')?;
            Some((name.to_string(), OsString::from(value)))
        })
        .collect()
}

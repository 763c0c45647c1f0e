//! The pipeline format: parsing `pipelines/*.yaml` into validated stages.
//!
//! This module owns the YAML model (SPEC.md, "Pipeline files"), the workspace's file layout and
//! every check that can be made without running anything: unknown keys, `cmd`/`op`, paths that
//! escape the workspace, `${...}` references, duplicate outputs, inputs nobody provides, cycles.
//! Each problem is a [`SpecError`] that points at the offending YAML. It does not hash, plan or
//! run anything.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use miette::{Diagnostic, NamedSource, SourceSpan};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use thiserror::Error;

use crate::ops;

/// The directory, under the workspace root, that holds pipeline files.
pub const PIPELINES_DIR: &str = "pipelines";

/// A problem in the pipeline files. Every variant that can point at YAML does.
#[derive(Debug, Error, Diagnostic)]
pub enum SpecError {
    #[error("no workspace found: no `pipelines/` directory in {start} or any parent")]
    #[diagnostic(
        code(edgebuild::no_workspace),
        help(
            "run edgebuild inside a workspace (a directory holding `pipelines/`), or pass `-C DIR`"
        )
    )]
    NoWorkspace { start: String },

    #[error("cannot read {path}: {message}")]
    #[diagnostic(code(edgebuild::read))]
    Read { path: String, message: String },

    #[error("{message}")]
    #[diagnostic(code(edgebuild::yaml))]
    Yaml {
        message: String,
        #[source_code]
        src: NamedSource<String>,
        #[label("here")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("{message}")]
    #[diagnostic(code(edgebuild::invalid_stage))]
    Invalid {
        message: String,
        #[source_code]
        src: NamedSource<String>,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    #[error("output `{path}` of {second} clashes with output `{first_path}` of {first}")]
    #[diagnostic(
        code(edgebuild::duplicate_output),
        help(
            "an output path belongs to exactly one stage in the workspace, and no output may lie inside another stage's output; rename one of them"
        )
    )]
    DuplicateOutput {
        path: String,
        first_path: String,
        first: String,
        second: String,
        #[source_code]
        src: NamedSource<String>,
        #[label("declared again here")]
        span: SourceSpan,
        #[related]
        first_site: Vec<SpecError>,
    },

    #[error("first declared here")]
    #[diagnostic(severity(Advice))]
    FirstDeclared {
        #[source_code]
        src: NamedSource<String>,
        #[label("first declaration")]
        span: SourceSpan,
    },

    #[error("dependency cycle: {cycle}")]
    #[diagnostic(
        code(edgebuild::cycle),
        help("a stage cannot depend, through its inputs or `after`, on its own outputs")
    )]
    Cycle {
        cycle: String,
        #[source_code]
        src: NamedSource<String>,
        #[label("this stage is part of the cycle")]
        span: SourceSpan,
    },

    #[error("{count} problems in the pipeline files")]
    #[diagnostic(code(edgebuild::invalid_pipelines))]
    Many {
        count: usize,
        #[related]
        errors: Vec<SpecError>,
    },
}

impl SpecError {
    /// One error, or all of them under one heading.
    pub fn collect(mut errors: Vec<SpecError>) -> Result<(), SpecError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.pop().expect("length checked")),
            count => Err(SpecError::Many { count, errors }),
        }
    }
}

/// The source text of one pipeline file, for diagnostics.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn named(&self) -> NamedSource<String> {
        NamedSource::new(&self.name, self.text.clone()).with_language("yaml")
    }

    pub fn invalid(
        &self,
        span: SourceSpan,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) -> SpecError {
        SpecError::Invalid {
            message: message.into(),
            src: self.named(),
            span,
            label: label.into(),
            help,
        }
    }

    /// The span of the map key `name` that precedes a value at `value`, for pointing at a
    /// stage by its name.
    pub fn key_before(&self, name: &str, value: SourceSpan) -> SourceSpan {
        let head = self.text.get(..value.offset()).unwrap_or_default();
        head.rfind(&format!("{name}:"))
            .map(|at| SourceSpan::from((at, name.len())))
            .unwrap_or(value)
    }

    /// The span of `needle` at or after `start`, falling back to `fallback`.
    fn find_from(&self, start: usize, needle: &str, fallback: SourceSpan) -> SourceSpan {
        self.text
            .get(start..)
            .and_then(|rest| rest.find(needle))
            .map(|at| SourceSpan::from((start + at, needle.len())))
            .unwrap_or(fallback)
    }
}

pub(crate) fn span_of<T>(spanned: &Spanned<T>) -> SourceSpan {
    let span = spanned.referenced.span();
    let offset = span.byte_offset().unwrap_or(span.offset()) as usize;
    let len = span.byte_len().unwrap_or(span.len()) as usize;
    SourceSpan::from((offset, len.max(1)))
}

// ---------------------------------------------------------------------------------------------
// Raw YAML model

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    version: Spanned<u32>,
    #[serde(default)]
    description: Option<String>,
    stages: BTreeMap<String, Spanned<RawStage>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    cmd: Option<Spanned<String>>,
    #[serde(default)]
    op: Option<Spanned<String>>,
    #[serde(default)]
    manual: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    inputs: RawPorts,
    #[serde(default)]
    outputs: RawPorts,
    #[serde(default)]
    params: Option<serde_json::Value>,
    #[serde(default)]
    env: Vec<Spanned<String>>,
    #[serde(default)]
    tools: BTreeMap<String, String>,
    #[serde(default)]
    volatile: bool,
    #[serde(default)]
    after: Vec<Spanned<String>>,
    #[serde(default)]
    remote: Option<bool>,
    #[serde(default)]
    platform: BTreeMap<String, String>,
}

/// `inputs`/`outputs`: a list of paths or a map of name → path.
#[derive(Default)]
enum RawPorts {
    #[default]
    Empty,
    List(Vec<Spanned<String>>),
    Map(Vec<(String, Spanned<String>)>),
}

impl<'de> Deserialize<'de> for RawPorts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortsVisitor;
        impl<'de> Visitor<'de> for PortsVisitor {
            type Value = RawPorts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of paths or a map of name to path")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawPorts, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<String>>()? {
                    items.push(item);
                }
                Ok(RawPorts::List(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawPorts, A::Error> {
                let mut items: Vec<(String, Spanned<String>)> = Vec::new();
                while let Some((name, path)) = map.next_entry::<String, Spanned<String>>()? {
                    if items.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!("duplicate name `{name}`")));
                    }
                    items.push((name, path));
                }
                Ok(RawPorts::Map(items))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawPorts, E> {
                Ok(RawPorts::Empty)
            }
        }
        deserializer.deserialize_any(PortsVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Validated model

/// One input or output of a stage. List entries are named `0`, `1`, ...
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct Port {
    pub name: String,
    pub path: String,
    pub span: SourceSpan,
}

/// What a stage does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub enum Action {
    /// A shell command (a template with `${...}` references).
    Cmd(String),
    /// A built-in op by name and version.
    Op { name: String, version: u32 },
    /// A manual step: a checklist a person signs off with `edgebuild approve` for exactly the
    /// stage's current inputs (DECISIONS 24). It has no outputs and blocks its dependents until
    /// then.
    Manual(Vec<String>),
}

fn yes() -> bool {
    true
}

/// A validated stage.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
pub struct Stage {
    /// `PIPELINE:STAGE`.
    pub id: String,
    /// Index into [`Workspace::pipelines`].
    pub pipeline: usize,
    pub name: String,
    pub description: Option<String>,
    pub action: Action,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    /// Whether inputs/outputs were given as a map (names) rather than a list.
    pub named_inputs: bool,
    pub named_outputs: bool,
    pub params: serde_json::Value,
    pub env: Vec<String>,
    pub tools: BTreeMap<String, String>,
    pub volatile: bool,
    /// Stage ids that must succeed first without their outputs entering this stage's key.
    pub after: Vec<String>,
    /// Whether a remote executor may run it (`remote: false` keeps it on this machine).
    #[serde(default = "yes")]
    pub remote: bool,
    /// Platform properties a remote worker must have (`OSFamily: linux`, `gpu_count: 1`).
    #[serde(default)]
    pub platform: BTreeMap<String, String>,
    pub span: SourceSpan,
    pub action_span: SourceSpan,
}

/// One pipeline file.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The file stem: `digits` for `pipelines/digits.yaml`.
    pub name: String,
    /// Workspace-relative path of the file.
    pub file: String,
    pub description: Option<String>,
    pub source: Source,
}

impl Pipeline {
    /// Workspace-relative path of the lock file beside the pipeline file.
    pub fn lock_file(&self) -> String {
        format!("{PIPELINES_DIR}/{}.lock", self.name)
    }
}

/// All pipelines of a workspace, validated together as one graph (DECISIONS 2).
#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    pub pipelines: Vec<Pipeline>,
    /// Stages ordered by id.
    pub stages: Vec<Stage>,
}

impl Workspace {
    /// Finds the workspace root: `start` or its nearest ancestor that holds `pipelines/`.
    pub fn find_root(start: &Path) -> Result<PathBuf, SpecError> {
        let start = std::fs::canonicalize(start).map_err(|e| SpecError::Read {
            path: start.display().to_string(),
            message: e.to_string(),
        })?;
        start
            .ancestors()
            .find(|dir| dir.join(PIPELINES_DIR).is_dir())
            .map(Path::to_path_buf)
            .ok_or_else(|| SpecError::NoWorkspace {
                start: start.display().to_string(),
            })
    }

    /// Loads and validates every `pipelines/*.yaml` (and `*.yml`) under `root`.
    pub fn load(root: &Path) -> Result<Workspace, SpecError> {
        let dir = root.join(PIPELINES_DIR);
        let read_err = |path: &Path, e: std::io::Error| SpecError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let files = pipeline_files(root).map_err(|e| read_err(&dir, e))?;

        let mut pipelines = Vec::new();
        let mut stages = Vec::new();
        let mut errors = Vec::new();
        let paths = PathChecker::new(root);
        let cache_path = root.join(".edgebuild").join("spec-cache.json");
        let mut old_cache = ParseCache::load(&cache_path);
        let mut cached_files = Vec::new();
        let mut cache_changed = false;
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| read_err(&path, e))?;
            let stamp = std::fs::metadata(&path)
                .ok()
                .map(|m| FileStamp::of(&m, text.len()));
            let name = pipeline_name(&path);
            let file = format!(
                "{PIPELINES_DIR}/{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            if pipelines.iter().any(|p: &Pipeline| p.name == name) {
                return Err(SpecError::Read {
                    path: file,
                    message: format!("two pipeline files are named `{name}` (.yaml and .yml)"),
                });
            }
            let pipeline = Pipeline {
                name,
                file: file.clone(),
                description: None,
                source: Source {
                    name: file.clone(),
                    text,
                },
            };
            let index = pipelines.len();
            let hit = stamp
                .as_ref()
                .and_then(|stamp| old_cache.files.remove(&file).filter(|c| c.stamp == *stamp));
            let from_cache = hit.is_some();
            let parsed = match hit {
                // Parsing is the slow part; paths are checked again since the disk may differ.
                Some(hit) => Ok((
                    hit.description,
                    recheck(&paths, &pipeline, index, hit.stages),
                )),
                None => parse_pipeline(&paths, index, &pipeline),
            };
            match parsed {
                Ok((description, parsed)) => {
                    let cacheable = stamp.filter(|s| !s.racy() && parsed.1.is_empty());
                    cache_changed |= !from_cache && cacheable.is_some();
                    if let Some(stamp) = cacheable {
                        cached_files.push((
                            file.clone(),
                            stamp,
                            description.clone(),
                            stages.len()..stages.len() + parsed.0.len(),
                        ));
                    }
                    stages.extend(parsed.0);
                    errors.extend(parsed.1);
                    pipelines.push(Pipeline {
                        description,
                        ..pipeline
                    });
                }
                Err(e) => {
                    errors.push(e);
                    pipelines.push(pipeline);
                }
            }
        }
        // Entries of files that are gone or changed are left in `old_cache`.
        cache_changed |= !old_cache.files.is_empty();
        if cache_changed && std::fs::create_dir_all(root.join(".edgebuild")).is_ok() {
            let new_cache = ParseCache {
                files: cached_files
                    .into_iter()
                    .map(|(file, stamp, description, range)| {
                        let stages = stages[range].to_vec();
                        (
                            file,
                            CachedPipeline {
                                stamp,
                                description,
                                stages,
                            },
                        )
                    })
                    .collect(),
                ..ParseCache::default()
            };
            // A cache: failing to write it costs speed next time, not correctness.
            let _ = crate::store::write_atomic(
                &cache_path,
                &serde_json::to_vec(&new_cache).expect("stages serialize"),
            );
        }
        SpecError::collect(errors)?;
        stages.sort_by(|a, b| a.id.cmp(&b.id));
        let workspace = Workspace {
            root: root.to_path_buf(),
            pipelines,
            stages,
        };
        workspace.check_graph_inputs()?;
        Ok(workspace)
    }

    pub fn source_of(&self, stage: &Stage) -> &Source {
        &self.pipelines[stage.pipeline].source
    }

    /// The pipeline a command-line target names (see [`target_pipeline`]).
    pub fn pipeline_index(&self, target: &str) -> Option<usize> {
        let name = target_pipeline(target);
        self.pipelines.iter().position(|p| p.name == name)
    }

    pub fn stage_index(&self, id: &str) -> Option<usize> {
        self.stages.binary_search_by(|s| s.id.as_str().cmp(id)).ok()
    }

    /// Cross-stage checks: overlapping outputs, inputs nobody provides.
    fn check_graph_inputs(&self) -> Result<(), SpecError> {
        let mut errors = Vec::new();
        // Visit stages in file order so "first declared" means first in the file.
        let mut in_file_order: Vec<&Stage> = self.stages.iter().collect();
        in_file_order.sort_by_key(|s| (s.pipeline, s.span.offset()));
        let mut producers: BTreeMap<&str, (&Stage, &Port)> = BTreeMap::new();
        for stage in in_file_order {
            for port in &stage.outputs {
                let clash = producers.get(port.path.as_str()).copied().or_else(|| {
                    // An output inside, or containing, another stage's output.
                    ancestors(&port.path)
                        .find_map(|a| producers.get(a).copied())
                        .or_else(|| paths_below(&producers, &port.path).next().map(|(_, v)| *v))
                        .filter(|(other, _)| other.id != stage.id)
                });
                if let Some((first, first_port)) = clash {
                    errors.push(SpecError::DuplicateOutput {
                        path: port.path.clone(),
                        first_path: first_port.path.clone(),
                        first: first.id.clone(),
                        second: stage.id.clone(),
                        src: self.source_of(stage).named(),
                        span: port.span,
                        first_site: vec![SpecError::FirstDeclared {
                            src: self.source_of(first).named(),
                            span: first_port.span,
                        }],
                    });
                } else {
                    producers.insert(&port.path, (stage, port));
                }
            }
        }
        for stage in &self.stages {
            let source = self.source_of(stage);
            for port in &stage.inputs {
                let overlapping: Vec<&Stage> = producers
                    .get(port.path.as_str())
                    .into_iter()
                    .chain(ancestors(&port.path).filter_map(|a| producers.get(a)))
                    .map(|(s, _)| *s)
                    .chain(paths_below(&producers, &port.path).map(|(_, (s, _))| *s))
                    .collect();
                if overlapping.is_empty()
                    && std::fs::symlink_metadata(self.root.join(&port.path)).is_err()
                {
                    errors.push(
                        source.invalid(
                            port.span,
                            format!(
                                "input `{}` of {} does not exist and no stage produces it",
                                port.path, stage.id
                            ),
                            "missing input",
                            Some(
                                if self
                                    .root
                                    .join(format!("{}{}", port.path, crate::pointer::SUFFIX))
                                    .is_file()
                                {
                                    format!("it is a versioned input outside git ({}{}): run `edgebuild pull`", port.path, crate::pointer::SUFFIX)
                                } else {
                                    "create the file, fix the path, or add the stage that produces it"
                                        .into()
                                },
                            ),
                        ),
                    );
                }
                if let Some(volatile) = overlapping.iter().find(|s| s.volatile && s.id != stage.id)
                    && !stage.volatile
                {
                    errors.push(source.invalid(
                        port.span,
                        format!(
                            "{} reads `{}`, a volatile output of {}",
                            stage.id, port.path, volatile.id
                        ),
                        "measured values would flow into a reproducible stage",
                        Some("declare this stage `volatile: true` too, or order it with `after:` instead of reading the output (DECISIONS 8)".into()),
                    ));
                }
                if overlapping.iter().any(|s| s.id == stage.id) {
                    errors.push(source.invalid(
                        port.span,
                        format!("{} reads its own output `{}`", stage.id, port.path),
                        "input overlaps an output of this stage",
                        Some("a stage's inputs and outputs must be distinct paths".into()),
                    ));
                }
            }
        }
        SpecError::collect(errors)
    }
}

/// The proper ancestors of a workspace path: `a/b/c` → `a/b`, `a`.
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut rest = path;
    std::iter::from_fn(move || {
        let (parent, _) = rest.rsplit_once('/')?;
        rest = parent;
        Some(parent)
    })
}

/// Entries of a path-keyed map that lie strictly inside `dir`.
pub fn paths_below<'m, 'k, V>(
    map: &'m BTreeMap<&'k str, V>,
    dir: &str,
) -> impl Iterator<Item = (&'m &'k str, &'m V)> {
    // Paths under `dir/` sort between `dir/` and `dir0` ('0' follows '/').
    let (low, high) = (format!("{dir}/"), format!("{dir}0"));
    map.range::<str, _>((
        std::ops::Bound::Included(low.as_str()),
        std::ops::Bound::Excluded(high.as_str()),
    ))
    .collect::<Vec<_>>()
    .into_iter()
}

/// Whether one workspace path is the other or lies inside it.
pub fn paths_overlap(a: &str, b: &str) -> bool {
    let inside = |outer: &str, inner: &str| {
        inner.len() > outer.len()
            && inner.starts_with(outer)
            && inner.as_bytes()[outer.len()] == b'/'
    };
    a == b || inside(a, b) || inside(b, a)
}

type ParsedStages = (Vec<Stage>, Vec<SpecError>);

/// Identity of a pipeline file on disk, for the parse cache.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
struct FileStamp {
    size: usize,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata, size: usize) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            size,
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            inode: meta.ino(),
        }
    }

    /// Modified so recently that another write in the same timestamp tick could go unseen.
    fn racy(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        now - self.mtime_ns.max(self.ctime_ns) < 2_000_000_000
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
struct CachedPipeline {
    stamp: FileStamp,
    description: Option<String>,
    stages: Vec<Stage>,
}

/// Parsed pipeline files by path (`.edgebuild/spec-cache.json`), valid for one edgebuild build.
#[derive(Debug, serde::Serialize, Deserialize)]
struct ParseCache {
    version: String,
    files: BTreeMap<String, CachedPipeline>,
}

impl ParseCache {
    fn current_version() -> String {
        let ops: Vec<String> = ops::all()
            .iter()
            .map(|o| format!("{}@{}", o.name(), o.version()))
            .collect();
        format!(
            "{} {} {}",
            env!("CARGO_PKG_VERSION"),
            env!("EDGEBUILD_RUSTC_VERSION"),
            ops.join(",")
        )
    }

    fn load(path: &Path) -> ParseCache {
        std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<ParseCache>(&bytes).ok())
            .filter(|cache| cache.version == Self::current_version())
            .unwrap_or_default()
    }
}

impl Default for ParseCache {
    fn default() -> Self {
        ParseCache {
            version: ParseCache::current_version(),
            files: BTreeMap::new(),
        }
    }
}

/// Cached stages of one file, with their paths checked against today's disk.
fn recheck(
    paths: &PathChecker,
    pipeline: &Pipeline,
    index: usize,
    cached: Vec<Stage>,
) -> ParsedStages {
    let mut errors = Vec::new();
    let stages = cached
        .into_iter()
        .map(|mut stage| {
            stage.pipeline = index;
            for (port, what) in stage
                .inputs
                .iter()
                .map(|p| (p, "input"))
                .chain(stage.outputs.iter().map(|p| (p, "output")))
            {
                if let Err(why) = paths.check(&port.path) {
                    errors.push(pipeline.source.invalid(
                        port.span,
                        format!("{what} path `{}` of {} {why}", port.path, stage.id),
                        "not a workspace path a stage may use",
                        Some("paths are relative to the workspace root and stay inside it".into()),
                    ));
                }
            }
            stage
        })
        .collect();
    (stages, errors)
}

fn parse_pipeline(
    paths: &PathChecker,
    index: usize,
    pipeline: &Pipeline,
) -> Result<(Option<String>, ParsedStages), SpecError> {
    let source = &pipeline.source;
    let raw: RawPipeline =
        serde_saphyr::from_str(&source.text).map_err(|e| yaml_error(source, &e))?;
    if raw.version.value != 1 {
        return Err(source.invalid(
            span_of(&raw.version),
            format!("unsupported pipeline version {}", raw.version.value),
            "expected `version: 1`",
            Some("this edgebuild reads version 1 pipeline files".into()),
        ));
    }
    let mut stages = Vec::new();
    let mut errors = Vec::new();
    for (name, raw_stage) in raw.stages {
        match parse_stage(paths, index, pipeline, &name, raw_stage) {
            Ok(stage) => stages.push(stage),
            Err(mut e) => errors.append(&mut e),
        }
    }
    Ok((raw.description, (stages, errors)))
}

pub(crate) fn yaml_error(source: &Source, err: &serde_saphyr::Error) -> SpecError {
    yaml_error_in(source, err, "pipeline file")
}

/// A YAML error in a `what` (pipeline file, rollout policy), pointing at its place.
pub(crate) fn yaml_error_in(source: &Source, err: &serde_saphyr::Error, what: &str) -> SpecError {
    let span = err
        .location()
        .map(|loc| {
            let s = loc.span();
            SourceSpan::from((
                s.byte_offset().unwrap_or(s.offset()) as usize,
                s.byte_len().unwrap_or(s.len()).max(1) as usize,
            ))
        })
        .unwrap_or_else(|| SourceSpan::from((0, 0)));
    let (message, help) = match err.without_snippet() {
        serde_saphyr::Error::SerdeUnknownField {
            field, expected, ..
        } => {
            let suggestion = did_you_mean(field, expected.iter().copied());
            let help = match suggestion {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("known keys: {}", expected.join(", ")),
            };
            (format!("unknown key `{field}`"), Some(help))
        }
        other => {
            let options = serde_saphyr::render_options! {
                snippets: serde_saphyr::SnippetMode::Off,
            };
            let text = other.render_with_options(options);
            let text = text.strip_prefix("error: ").unwrap_or(&text).to_string();
            // The location is shown by the label; drop the "line N column M: " prefix.
            let text = match text.split_once(": ") {
                Some((head, rest)) if head.starts_with("line ") => rest.to_string(),
                _ => text,
            };
            let text = match text.rfind(" at line ") {
                Some(at) => text[..at].to_string(),
                None => text,
            };
            (format!("invalid {what}: {text}"), None)
        }
    };
    SpecError::Yaml {
        message,
        src: source.named(),
        span,
        help,
    }
}

/// The closest candidate to `word`, if any is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn parse_stage(
    paths: &PathChecker,
    index: usize,
    pipeline: &Pipeline,
    name: &str,
    raw: Spanned<RawStage>,
) -> Result<Stage, Vec<SpecError>> {
    let source = &pipeline.source;
    let stage_span = span_of(&raw);
    let id = format!("{}:{}", pipeline.name, name);
    let raw = raw.value;
    let mut errors = Vec::new();

    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        errors.push(source.invalid(
            source.key_before(name, stage_span),
            format!("invalid stage name `{name}`"),
            "stage names use letters, digits, `_`, `-` and `.`",
            None,
        ));
    }

    let (action, action_span) = match (&raw.cmd, &raw.op) {
        (None, None) if raw.manual.is_some() => {
            let manual = raw.manual.as_ref().expect("checked");
            let items: Vec<String> = manual.value.iter().map(|i| i.trim().to_string()).collect();
            if items.is_empty() || items.iter().any(String::is_empty) {
                errors.push(source.invalid(
                    span_of(manual),
                    format!("the checklist of manual stage {id} has an empty item or none"),
                    "checklist",
                    Some("list what a person checks, e.g. `- \"flashed and checked on the bench board\"`".into()),
                ));
            }
            (Action::Manual(items), span_of(manual))
        }
        (Some(cmd), None) if raw.manual.is_none() => (Action::Cmd(cmd.value.clone()), span_of(cmd)),
        (None, Some(op)) if raw.manual.is_none() => match ops::find(&op.value) {
            Some(found) => (
                Action::Op {
                    name: found.name().to_string(),
                    version: found.version(),
                },
                span_of(op),
            ),
            None => {
                let known: Vec<&str> = ops::all().iter().map(|o| o.name()).collect();
                let help = match did_you_mean(&op.value, known.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if known.is_empty() => "this edgebuild has no built-in ops".to_string(),
                    None => format!("built-in ops: {}", known.join(", ")),
                };
                errors.push(source.invalid(
                    span_of(op),
                    format!("unknown op `{}` in stage {id}", op.value),
                    "unknown op",
                    Some(help),
                ));
                (Action::Cmd(String::new()), span_of(op))
            }
        },
        (None, None) => {
            errors.push(source.invalid(
                source.key_before(name, stage_span),
                format!("stage {id} has neither `cmd` nor `op`"),
                "nothing to run",
                Some("add `cmd: \"...\"` (a shell command), `op: NAME` (a built-in op) or `manual: [...]` (a checklist to sign off)".into()),
            ));
            (Action::Cmd(String::new()), stage_span)
        }
        (cmd, op) => {
            let span = cmd
                .as_ref()
                .map(span_of)
                .or(op.as_ref().map(span_of))
                .unwrap_or(stage_span);
            let present: Vec<&str> = [
                ("`cmd`", cmd.is_some()),
                ("`op`", op.is_some()),
                ("`manual`", raw.manual.is_some()),
            ]
            .into_iter()
            .filter_map(|(k, on)| on.then_some(k))
            .collect();
            let what = match present.as_slice() {
                [a, b] => format!("both {a} and {b}"),
                _ => "`cmd`, `op` and `manual`".to_string(),
            };
            errors.push(source.invalid(
                span,
                format!("stage {id} has {what}"),
                "a stage is a command, an op or a manual step",
                Some("keep one of `cmd:`, `op:` and `manual:`".into()),
            ));
            (Action::Cmd(String::new()), stage_span)
        }
    };

    let mut ports = |raw: RawPorts, what: &str| -> (Vec<Port>, bool) {
        let (named, items): (bool, Vec<(String, Spanned<String>)>) = match raw {
            RawPorts::Empty => (false, Vec::new()),
            RawPorts::List(items) => (
                false,
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| (i.to_string(), p))
                    .collect(),
            ),
            RawPorts::Map(items) => (true, items),
        };
        let mut out = Vec::new();
        for (port_name, path) in items {
            let span = span_of(&path);
            match paths.check(&path.value).and_then(check_not_reserved) {
                Ok(normalized) => out.push(Port {
                    name: port_name,
                    path: normalized,
                    span,
                }),
                Err(why) => errors.push(source.invalid(
                    span,
                    format!("{what} path `{}` of {id} {why}", path.value),
                    "not a workspace path a stage may use",
                    Some("paths are relative to the workspace root and stay inside it".into()),
                )),
            }
        }
        (out, named)
    };
    let (inputs, named_inputs) = ports(raw.inputs, "input");
    let (outputs, named_outputs) = ports(raw.outputs, "output");
    for (i, port) in outputs.iter().enumerate() {
        if outputs[..i]
            .iter()
            .any(|p| paths_overlap(&p.path, &port.path))
        {
            errors.push(source.invalid(
                port.span,
                format!(
                    "output `{}` of {id} overlaps another of its outputs",
                    port.path
                ),
                "overlapping output",
                None,
            ));
        }
    }

    let mut env = Vec::new();
    for var in &raw.env {
        let valid = !var.value.is_empty()
            && !var.value.starts_with(|c: char| c.is_ascii_digit())
            && var
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            errors.push(source.invalid(
                span_of(var),
                format!("`{}` is not an environment variable name", var.value),
                "invalid name",
                None,
            ));
        } else if !env.contains(&var.value) {
            env.push(var.value.clone());
        }
    }
    env.sort();

    let params = raw.params.unwrap_or(serde_json::Value::Null);
    let after: Vec<String> = raw
        .after
        .iter()
        .map(|a| {
            if a.value.contains(':') {
                a.value.clone()
            } else {
                format!("{}:{}", pipeline.name, a.value)
            }
        })
        .collect();

    let stage = Stage {
        id: id.clone(),
        pipeline: index,
        name: name.to_string(),
        description: raw.description,
        action,
        inputs,
        outputs,
        named_inputs,
        named_outputs,
        params,
        env,
        tools: raw.tools,
        volatile: raw.volatile,
        after,
        remote: raw.remote.unwrap_or(true),
        platform: raw.platform,
        span: stage_span,
        action_span,
    };

    if matches!(stage.action, Action::Manual(_)) && !stage.outputs.is_empty() {
        errors.push(source.invalid(
            stage.action_span,
            format!("manual stage {id} declares outputs"),
            "a manual step",
            Some("a manual stage records a sign-off, it makes no files: drop `outputs` (dependents name it in `after`)".into()),
        ));
    }
    if let (Action::Cmd(template), Some(cmd)) = (&stage.action, &raw.cmd) {
        let cmd_span = span_of(cmd);
        if let Err(problem) = crate::subst::parse(template) {
            let at = source.find_from(cmd_span.offset(), &problem.reference, cmd_span);
            errors.push(source.invalid(at, problem.message, "here", None));
        } else if let Err(problem) = crate::subst::expand(template, &stage) {
            let at = source.find_from(cmd_span.offset(), &problem.reference, cmd_span);
            errors.push(source.invalid(at, problem.message, "undefined", problem.help));
        }
    }
    if let Action::Op { name, .. } = &stage.action
        && let Some(op) = ops::find(name)
        && let Err(message) = op.check(&stage)
    {
        // Point at the offending value when the message quotes one that appears in the stage.
        let quoted = message.split('`').nth(1).filter(|q| !q.is_empty());
        let span = quoted
            .map(|q| source.find_from(stage.span.offset(), q, stage.action_span))
            .unwrap_or(stage.action_span);
        errors.push(source.invalid(span, format!("{id}: {message}"), "here", None));
    }
    if errors.is_empty() {
        Ok(stage)
    } else {
        Err(errors)
    }
}

/// Top-level names that belong to edgebuild or git, never to a stage.
pub const RESERVED: &[&str] = &[PIPELINES_DIR, ".edgebuild", ".git", "cache"];

fn check_not_reserved(path: String) -> Result<String, &'static str> {
    let top = path.split('/').next().unwrap_or_default();
    if RESERVED.contains(&top) {
        Err(
            "is inside a directory that belongs to edgebuild (pipelines/, cache/, .edgebuild/) or git",
        )
    } else {
        Ok(path)
    }
}

/// The pipeline files of the workspace at `root` (`pipelines/*.yaml` and `*.yml`), sorted.
pub fn pipeline_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(PIPELINES_DIR))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The pipeline a command-line target names: `digits`, `digits.yaml` or `pipelines/digits.yml`
/// all name `digits`.
pub fn target_pipeline(target: &str) -> &str {
    target
        .trim_start_matches("pipelines/")
        .trim_end_matches(".yaml")
        .trim_end_matches(".yml")
}

/// A pipeline's name: its file stem.
pub fn pipeline_name(file: &Path) -> String {
    file.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string()
}

/// Normalizes a workspace-relative path, rejecting anything that leaves the workspace:
/// absolute paths, `..`, and symlinks whose target lies outside `root`.
pub fn normalize_path(root: &Path, raw: &str) -> Result<String, &'static str> {
    PathChecker::new(root).check(raw)
}

/// Checks many paths of one workspace, remembering the directories and files already found safe,
/// so each distinct path costs about one `lstat`.
pub struct PathChecker {
    root: PathBuf,
    canonical_root: PathBuf,
    safe_paths: std::cell::RefCell<std::collections::HashSet<String>>,
}

impl PathChecker {
    pub fn new(root: &Path) -> PathChecker {
        PathChecker {
            root: root.to_path_buf(),
            canonical_root: std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf()),
            safe_paths: Default::default(),
        }
    }

    pub fn check(&self, raw: &str) -> Result<String, &'static str> {
        if raw.is_empty() {
            return Err("is empty");
        }
        let mut parts: Vec<&str> = Vec::new();
        for component in Path::new(raw).components() {
            match component {
                Component::Normal(part) => parts.push(part.to_str().ok_or("is not UTF-8")?),
                Component::CurDir => {}
                Component::ParentDir => return Err("uses `..`"),
                Component::RootDir | Component::Prefix(_) => return Err("is absolute"),
            }
        }
        if parts.is_empty() {
            return Err("names the workspace root itself");
        }
        let normalized = parts.join("/");
        if self.safe_paths.borrow().contains(&normalized) {
            return Ok(normalized); // an input of one stage is often another's output
        }
        // Follow symlinks along the existing prefix of the path.
        let mut prefix_len = 0;
        for (i, part) in parts.iter().enumerate() {
            prefix_len += part.len() + usize::from(i > 0);
            let prefix = &normalized[..prefix_len];
            if self.safe_paths.borrow().contains(prefix) {
                continue;
            }
            let full = self.root.join(prefix);
            let Ok(meta) = std::fs::symlink_metadata(&full) else {
                break;
            };
            if meta.file_type().is_symlink() {
                match std::fs::canonicalize(&full) {
                    Ok(real) if real.starts_with(&self.canonical_root) => {}
                    _ => return Err("goes through a symlink that leaves the workspace"),
                }
            } else if meta.is_dir() || i + 1 == parts.len() {
                self.safe_paths.borrow_mut().insert(prefix.to_string());
            }
        }
        Ok(normalized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAGE_KEYS: &[&str] = &[
        "description",
        "cmd",
        "op",
        "inputs",
        "outputs",
        "params",
        "env",
        "tools",
        "volatile",
        "after",
    ];

    #[test]
    fn normalize_rejects_escapes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(normalize_path(dir.path(), "./a//b/").unwrap(), "a/b");
        assert!(normalize_path(dir.path(), "../x").is_err());
        assert!(normalize_path(dir.path(), "a/../../x").is_err());
        assert!(normalize_path(dir.path(), "/etc/passwd").is_err());
        std::os::unix::fs::symlink("/tmp", dir.path().join("link")).unwrap();
        assert!(normalize_path(dir.path(), "link/x").is_err());
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("inside")).unwrap();
        assert_eq!(normalize_path(dir.path(), "inside/x").unwrap(), "inside/x");
    }

    #[test]
    fn overlap_is_path_aware() {
        assert!(paths_overlap("out", "out/a.txt"));
        assert!(paths_overlap("out/a.txt", "out"));
        assert!(paths_overlap("out", "out"));
        assert!(!paths_overlap("out", "output/a.txt"));
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("outptus", STAGE_KEYS.iter().copied()),
            Some("outputs")
        );
        assert_eq!(did_you_mean("zzz", STAGE_KEYS.iter().copied()), None);
    }
}

//! The pipeline format: parsing `pipelines/*.yaml` into validated stages.
//!
//! This module owns the YAML model (SPEC.md, "Pipeline files"), the workspace's pipeline files
//! and every check that can be made without running anything: unknown keys, `cmd`/`op`, paths
//! that escape the workspace, `${...}` references, duplicate outputs, inputs nobody provides,
//! cycles. Each problem is a [`SpecError`] that points at the offending YAML. It does not hash,
//! plan or run anything. Its parts: [`raw`] (the YAML as serde reads it), [`parse`] (one file
//! into validated stages), [`checks`] (across files), [`parse_cache`] and [`paths`].

pub mod checks;
pub mod diagnostic;
pub mod parse;
pub mod parse_cache;
pub mod paths;
pub mod raw;

use std::path::{Path, PathBuf};

pub use crate::layout::{PIPELINES_DIR, RESERVED};
pub use crate::stage::{Action, Port, Stage};
pub use diagnostic::{Snippet, Source, SpecError, did_you_mean, span_of, yaml_error_in};
pub use paths::{PathChecker, ancestors, normalize_path, paths_below, paths_overlap};

use crate::op::OpRegistry;
use parse_cache::{CachedPipeline, FileStamp, ParseCache};

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
        crate::layout::lock_file(&self.name)
    }
}

/// All pipelines of a workspace, validated together as one graph (SPEC.md, "Workspace").
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

    /// Loads and validates every `pipelines/*.yaml` (and `*.yml`) under `root`; op stages may
    /// name the ops of `ops`.
    pub fn load(root: &Path, ops: &OpRegistry) -> Result<Workspace, SpecError> {
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
        let cache_path = root.join(crate::layout::STATE_DIR).join("spec-cache.json");
        let mut old_cache = ParseCache::load(&cache_path, ops);
        let mut cached_files = Vec::new();
        let mut cache_changed = false;
        for path in files {
            let file = format!(
                "{PIPELINES_DIR}/{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            // An unreadable file (a dangling symlink, a directory) is an error, never skipped.
            let text = read_pipeline_file(&path).map_err(|message| SpecError::Read {
                path: file.clone(),
                message,
            })?;
            let stamp = std::fs::metadata(&path)
                .ok()
                .map(|m| FileStamp::of(&m, text.len()));
            let name = pipeline_name(&path);
            if let Err(why) = check_pipeline_name(&name) {
                return Err(SpecError::Read {
                    path: file,
                    message: why,
                });
            }
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
                    parse_cache::recheck(&paths, &pipeline, index, hit.stages),
                )),
                None => parse::parse_pipeline(&paths, ops, index, &pipeline),
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
        if cache_changed && std::fs::create_dir_all(root.join(crate::layout::STATE_DIR)).is_ok() {
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
                ..ParseCache::new(ops)
            };
            // A cache: failing to write it costs speed next time, not correctness.
            let _ = crate::files::write_atomic(
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
}

/// The largest pipeline file edgebuild reads (SPEC.md, "Limits").
pub const MAX_PIPELINE_BYTES: u64 = 16 << 20;

/// The pipeline files of the workspace at `root` (`pipelines/*.yaml` and `*.yml`), sorted.
/// Every entry with such a name is listed, whatever it is: one that cannot be read as a file (a
/// directory, a dangling symlink) is an error when it is loaded, not skipped.
pub fn pipeline_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(PIPELINES_DIR))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    Ok(files)
}

/// Reads a pipeline file: a regular file (or a symlink to one) of at most
/// [`MAX_PIPELINE_BYTES`], in UTF-8.
pub fn read_pipeline_file(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| match std::fs::symlink_metadata(path) {
        Ok(link) if link.file_type().is_symlink() => {
            format!("it is a symlink whose target cannot be read ({e})")
        }
        _ => e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(if meta.is_dir() {
            "it is a directory, not a pipeline file".into()
        } else {
            "it is not a regular file".into()
        });
    }
    if meta.len() > MAX_PIPELINE_BYTES {
        return Err(format!(
            "it is {} bytes; a pipeline file may hold at most {} MiB (SPEC.md, \"Limits\")",
            meta.len(),
            MAX_PIPELINE_BYTES >> 20
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".into())
}

/// A pipeline's name (its file stem) is part of every stage id `PIPELINE:STAGE`: letters,
/// digits, `_`, `-` and `.`, not starting with `.` or `-`.
pub fn check_pipeline_name(name: &str) -> Result<(), String> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a pipeline name: a pipeline file is named with letters, digits, `_`, `-` and `.`, starting with a letter, a digit or `_`"
        ))
    }
}

/// The names of stages and pipelines: letters, digits, `_`, `-` and `.`, starting with a
/// letter, a digit or `_` (so never `.`, `..` or an option like `-x`).
pub fn valid_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
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

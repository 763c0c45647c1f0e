//! Comparing two sets of lock entries, stage by stage in dependency order: every output's
//! verdict, the root causes (a stage whose inputs matched and whose outputs did not) told apart
//! from the cascade below them, and short diffs of the first divergent stage's outputs. Pure
//! functions of the graph, the entries and the bytes at hand.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use edgebuild_engine::graph::{EdgeKind, Graph};
use edgebuild_engine::hash::Digest;
use edgebuild_engine::lock::{GateVerdict, LockFile, LockedStage};

/// How one output compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Same hash.
    Match,
    /// Different hash, and the stage's inputs matched: this stage is a root cause.
    Differs,
    /// Different hash because an upstream stage diverged.
    Cascade,
    /// Not compared (SPEC.md, "Volatile outputs").
    Volatile,
    /// Expected, but the rebuild did not produce it.
    Missing,
    /// Produced, but the reference does not record it.
    Unexpected,
    /// Not built: a failed gate blocked it, as it did at the reference.
    Blocked,
}

impl Verdict {
    pub fn ok(self) -> bool {
        matches!(self, Verdict::Match | Verdict::Volatile | Verdict::Blocked)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputRow {
    pub stage: String,
    pub output: String,
    pub expected: Option<Digest>,
    pub rebuilt: Option<Digest>,
    pub verdict: Verdict,
}

/// Whether a stage diverged by itself or because a stage upstream did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FindingKind {
    Root,
    Cascade,
}

/// Why a stage is a root cause or part of a cascade.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub stage: String,
    pub kind: FindingKind,
    /// For a cascade: the root cause it descends from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub explanation: String,
}

/// A short diff of one differing text output.
#[derive(Debug, Clone, Serialize)]
pub struct OutputDiff {
    pub output: String,
    pub diff: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub outputs: Vec<OutputRow>,
    pub findings: Vec<Finding>,
    pub first_divergent: Option<String>,
    pub diffs: Vec<OutputDiff>,
    /// Things worth knowing that do not make the build irreproducible (a gate that failed at
    /// the reference and again in the rebuild).
    pub notes: Vec<String>,
}

impl Comparison {
    pub fn reproducible(&self) -> bool {
        self.findings.is_empty() && self.outputs.iter().all(|r| r.verdict.ok())
    }

    pub fn summary(&self) -> String {
        let roots = self
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::Root)
            .count();
        let cascade = self.findings.len() - roots;
        let mut text = match &self.first_divergent {
            Some(stage) => format!("first divergent stage {stage}"),
            None => "outputs differ".to_string(),
        };
        if roots > 1 {
            write!(text, ", {} root causes in all", roots).unwrap();
        }
        if cascade > 0 {
            write!(
                text,
                ", {cascade} stage(s) downstream differ as a consequence"
            )
            .unwrap();
        }
        text
    }
}

/// The lock entries of a set of pipelines, by stage id.
pub type LockedStages = BTreeMap<String, LockedStage>;

pub fn stages_of(locks: &[(String, LockFile)]) -> LockedStages {
    locks
        .iter()
        .flat_map(|(pipeline, lock)| {
            lock.stages
                .iter()
                .map(move |(name, stage)| (format!("{pipeline}:{name}"), stage.clone()))
        })
        .collect()
}

/// What [`compare`] compares.
pub struct CompareInput<'a> {
    /// The rebuilt workspace's graph: it gives the dependency order.
    pub graph: &'a Graph,
    /// Stage ids by stage index.
    pub ids: &'a [String],
    /// The rebuilt workspace's root, where the rebuilt outputs are.
    pub root: &'a Path,
    /// The stages to compare, in topological order.
    pub selected: &'a [usize],
    pub expected: &'a LockedStages,
    pub rebuilt: &'a LockedStages,
    /// Stages the rebuild did not run because a dependency failed or a gate blocked them.
    pub blocked: &'a BTreeSet<String>,
    /// Finds the expected bytes of a differing output for a diff, when they are available.
    pub expected_bytes: &'a dyn Fn(&str, &Digest) -> Option<Vec<u8>>,
    /// Two variation builds rather than a commit's lock and its rebuild.
    pub vary: bool,
}

/// Compares the expected lock entries with the rebuilt ones, stage by stage in dependency order.
/// A stage whose outputs differ is a root cause unless one of its recorded inputs differs
/// because an upstream stage (through a data edge) diverged: then it is part of that cascade.
pub fn compare(input: &CompareInput) -> Comparison {
    let graph = input.graph;
    let mut comparison = Comparison {
        outputs: Vec::new(),
        findings: Vec::new(),
        first_divergent: None,
        diffs: Vec::new(),
        notes: Vec::new(),
    };
    // Stage index → the root cause its outputs descend from.
    let mut tainted: BTreeMap<usize, String> = BTreeMap::new();
    for &index in input.selected {
        let id = &input.ids[index];
        let upstream = |data_only: bool| {
            graph
                .deps(index)
                .filter(|(_, kind)| !data_only || *kind == EdgeKind::Data)
                .filter_map(|(dep, _)| Some((dep, tainted.get(&dep)?.clone())))
                .min_by_key(|(dep, _)| graph.rank[*dep])
                .map(|(_, root)| root)
        };
        let row = |output: &str, expected, rebuilt, verdict| OutputRow {
            stage: id.clone(),
            output: output.to_string(),
            expected,
            rebuilt,
            verdict,
        };
        let mut rows = Vec::new();
        // (explanation, the root this descends from if it is a cascade)
        let mut problem: Option<(String, Option<String>)> = None;
        match (input.expected.get(id), input.rebuilt.get(id)) {
            (None, None) => continue,
            (None, Some(r)) => {
                for (path, out) in &r.outputs {
                    rows.push(row(path, None, out.hash, Verdict::Unexpected));
                }
                problem = Some((
                    "built, but the reference lock has no entry for it: the lock was not updated after the pipeline changed".into(),
                    None,
                ));
            }
            (Some(e), None) => {
                let blocked = input.blocked.contains(id);
                for (path, out) in &e.outputs {
                    let verdict = match (out.volatile, blocked) {
                        (true, _) => Verdict::Volatile,
                        (false, true) => Verdict::Blocked,
                        (false, false) => Verdict::Missing,
                    };
                    rows.push(row(path, out.hash, None, verdict));
                }
                match (blocked, upstream(false)) {
                    (_, Some(root)) => {
                        for r in rows.iter_mut().filter(|r| r.verdict == Verdict::Blocked) {
                            r.verdict = Verdict::Missing;
                        }
                        problem = Some((String::new(), Some(root)));
                    }
                    (true, None) => comparison.notes.push(format!(
                        "{id} was not built: a failed gate or stage before it blocked it, as at the reference"
                    )),
                    (false, None) if rows.iter().any(|r| !r.verdict.ok()) => {
                        problem = Some((
                            "recorded in the lock, but the rebuild did not produce it".into(),
                            None,
                        ))
                    }
                    (false, None) => {}
                }
            }
            (Some(e), Some(r)) => {
                let paths: BTreeSet<&String> = e.outputs.keys().chain(r.outputs.keys()).collect();
                for path in paths {
                    let (eo, ro) = (e.outputs.get(path), r.outputs.get(path));
                    let verdict = match (eo, ro) {
                        (Some(a), Some(b)) if a.volatile || b.volatile => Verdict::Volatile,
                        (Some(a), Some(b)) if a.hash == b.hash => Verdict::Match,
                        (Some(_), Some(_)) => Verdict::Differs,
                        (Some(a), None) if a.volatile => Verdict::Volatile,
                        (Some(_), None) => Verdict::Missing,
                        (None, _) => Verdict::Unexpected,
                    };
                    rows.push(row(
                        path,
                        eo.and_then(|o| o.hash),
                        ro.and_then(|o| o.hash),
                        verdict,
                    ));
                }
                let differs = rows.iter().any(|r| !r.verdict.ok()) || e.gate != r.gate;
                if r.gate == Some(GateVerdict::Failed) && e.gate == r.gate {
                    comparison
                        .notes
                        .push(format!("gate {id} failed, as the reference records"));
                }
                if !input.vary && e.ingredients.key() != e.key {
                    problem = Some((
                        "the reference lock entry's key does not match its own ingredients: the lock was edited by hand".into(),
                        None,
                    ));
                } else if differs {
                    let inputs_differ = e.ingredients.inputs != r.ingredients.inputs;
                    problem = match upstream(true).filter(|_| inputs_differ) {
                        Some(root) => Some((String::new(), Some(root))),
                        None if e.gate != r.gate => Some((
                            format!("gate verdict {} → {}", gate_word(e.gate), gate_word(r.gate)),
                            None,
                        )),
                        None => Some((explain_divergence(e, r, input.vary), None)),
                    };
                }
            }
        }
        if let Some((explanation, cascade_from)) = problem {
            let root = match cascade_from {
                Some(root) => {
                    for row in rows.iter_mut().filter(|r| r.verdict == Verdict::Differs) {
                        row.verdict = Verdict::Cascade;
                    }
                    comparison.findings.push(Finding {
                        stage: id.clone(),
                        kind: FindingKind::Cascade,
                        from: Some(root.clone()),
                        explanation: format!("downstream of {root}"),
                    });
                    root
                }
                None => {
                    comparison.findings.push(Finding {
                        stage: id.clone(),
                        kind: FindingKind::Root,
                        from: None,
                        explanation,
                    });
                    if comparison.first_divergent.is_none() {
                        comparison.first_divergent = Some(id.clone());
                        comparison.diffs = diffs(input, &rows);
                    }
                    id.clone()
                }
            };
            tainted.insert(index, root);
        }
        comparison.outputs.extend(rows);
    }
    comparison
}

fn gate_word(gate: Option<GateVerdict>) -> &'static str {
    match gate {
        Some(GateVerdict::Passed) => "passed",
        Some(GateVerdict::Failed) => "failed",
        None => "none",
    }
}

/// Short diffs of the differing outputs of the first divergent stage.
fn diffs(input: &CompareInput, rows: &[OutputRow]) -> Vec<OutputDiff> {
    let labels = if input.vary {
        ("build 1", "build 2")
    } else {
        ("expected", "rebuilt")
    };
    let mut diffs = Vec::new();
    for row in rows.iter().filter(|r| r.verdict == Verdict::Differs) {
        let (Some(expected), Some(rebuilt)) = (row.expected, row.rebuilt) else {
            continue;
        };
        let path = input.root.join(&row.output);
        let diff = if path.is_dir() {
            Some(directory_diff(input, &row.output, &path, labels))
        } else {
            let rebuilt_bytes = std::fs::read(&path)
                .ok()
                .filter(|b| Digest::of_bytes(b) == rebuilt);
            match ((input.expected_bytes)(&row.output, &expected), rebuilt_bytes) {
                (Some(a), Some(b)) => text_diff(&a, &b, labels),
                (None, _) => Some(
                    "(no diff: the expected bytes are neither committed nor in the working tree; the lock holds only their hash)"
                        .to_string(),
                ),
                _ => None,
            }
        };
        if let Some(diff) = diff {
            diffs.push(OutputDiff {
                output: row.output.clone(),
                diff,
            });
        }
    }
    diffs
}

/// For a directory output: which of its files differ (when the reference files are at hand, as
/// in variation builds) and the diff of the first text one.
fn directory_diff(input: &CompareInput, output: &str, dir: &Path, labels: (&str, &str)) -> String {
    let unknown = Digest::of_bytes(b"");
    let mut differing = Vec::new();
    let mut first_diff = None;
    for entry in walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
    {
        let inner = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let rel = format!("{output}/{}", inner.display());
        let Ok(rebuilt) = std::fs::read(entry.path()) else {
            continue;
        };
        match (input.expected_bytes)(&rel, &unknown) {
            Some(expected) if expected == rebuilt => {}
            Some(expected) => {
                if first_diff.is_none() {
                    first_diff = text_diff(&expected, &rebuilt, labels)
                        .map(|d| format!("{}:\n{d}", inner.display()));
                }
                differing.push(inner.display().to_string());
            }
            None => differing.push(format!("{} (new)", inner.display())),
        }
    }
    if differing.is_empty() {
        return "(a directory: --keep keeps both trees for a closer look)".into();
    }
    let mut text = format!("files that differ: {}", differing.join(", "));
    if let Some(diff) = first_diff {
        text.push('\n');
        text.push_str(&diff);
    }
    text
}

/// Why a stage whose upstream matched wrote different outputs.
fn explain_divergence(expected: &LockedStage, rebuilt: &LockedStage, vary: bool) -> String {
    let reference = if vary { "the first build" } else { "the lock" };
    let inputs: Vec<String> = rebuilt
        .ingredients
        .inputs
        .iter()
        .filter(|input| {
            expected
                .ingredients
                .inputs
                .iter()
                .find(|i| i.name == input.name)
                .is_none_or(|i| i.hash != input.hash)
        })
        .map(|i| i.path.clone())
        .collect();
    if !inputs.is_empty() {
        return if vary {
            format!("input {} differs between the two builds", inputs.join(", "))
        } else {
            format!(
                "input {} differs from what {reference} records: the file is not what was built then (untracked, or the lock is stale)",
                inputs.join(", ")
            )
        };
    }
    let reasons =
        edgebuild_engine::key::Ingredients::diff(&expected.ingredients, &rebuilt.ingredients);
    if reasons.is_empty() {
        let mut text = String::from(
            "its inputs, command and params matched, but its outputs did not: the stage is not deterministic (time, randomness, an undeclared input)",
        );
        if !vary {
            text.push_str(", or the lock's output hash was edited");
        }
        text
    } else {
        let reasons: Vec<String> = reasons.iter().map(|r| r.to_string()).collect();
        if vary {
            format!(
                "its inputs matched; its key ingredients differ between the builds: {}",
                reasons.join("; ")
            )
        } else {
            format!(
                "its inputs matched; its action changed: {} (toolchain drift, or the lock is stale)",
                reasons.join("; ")
            )
        }
    }
}

/// A unified diff of two texts (JSON included), at most [`DIFF_LINES`] lines; `None` for binary.
fn text_diff(expected: &[u8], rebuilt: &[u8], labels: (&str, &str)) -> Option<String> {
    const DIFF_LINES: usize = 20;
    let (a, b) = (
        std::str::from_utf8(expected).ok()?,
        std::str::from_utf8(rebuilt).ok()?,
    );
    if a.contains('\0') || b.contains('\0') {
        return None;
    }
    let diff = similar::TextDiff::from_lines(a, b)
        .unified_diff()
        .context_radius(2)
        .header(labels.0, labels.1)
        .to_string();
    let lines: Vec<&str> = diff.lines().collect();
    let mut shown = lines[..lines.len().min(DIFF_LINES)].join("\n");
    if lines.len() > DIFF_LINES {
        write!(shown, "\n... ({} more lines)", lines.len() - DIFF_LINES).unwrap();
    }
    Some(shown)
}

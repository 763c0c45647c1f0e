//! `compare`: what a change does to the shipped model, at a glance, for a reviewer.
//!
//! Each side (a commit, or the working tree) is copied to a temporary directory and its report,
//! evaluation, measurement and gate stages are built there with the user's cache, so a side whose
//! lock is current is restored rather than recomputed. The numbers are then read from the
//! outputs of those ops and set side by side with absolute and relative deltas.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::git::Repository;
use crate::repro::{Conditions, Scratch, VerifyError, child_build, copy_workspace};
use edgebuild_engine::op::OpRegistry;
use edgebuild_engine::spec::{Action, Workspace};
use edgebuild_ml::ops::gate::lookup;

/// One side of a comparison.
#[derive(Debug, Clone)]
pub enum Side {
    Commit(String),
    WorkingTree,
}

/// A compared quantity.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub pipeline: String,
    pub stage: String,
    pub metric: String,
    pub a: Option<Value>,
    pub b: Option<Value>,
    /// `b - a`, for numbers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    /// `(b - a) / |a|`, for numbers with `a != 0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relative: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub rows: Vec<Row>,
}

/// Which numbers each op's outputs hold: (output port, JSON path, label).
fn metrics_of(op: &str, output: &Value) -> Vec<(String, Value)> {
    let pick = |paths: &[(&str, &str)]| -> Vec<(String, Value)> {
        paths
            .iter()
            .filter_map(|(path, label)| Some((label.to_string(), lookup(output, path)?.clone())))
            .collect()
    };
    match op {
        "report" => {
            let mut rows = pick(&[
                ("binary.bytes", "binary size (bytes)"),
                ("binary.bits_per_weight", "bits per weight"),
                ("params", "parameters"),
                ("macs", "MACs"),
                ("ram.peak_activation_bytes", "peak RAM (bytes)"),
            ]);
            if let Some(Value::Object(profiles)) = output.get("predicted") {
                for (profile, prediction) in profiles {
                    if let Some(ms) = prediction.get("latency_ms") {
                        rows.push((format!("predicted latency {profile} (ms)"), ms.clone()));
                    }
                }
            }
            rows
        }
        "evaluate" => pick(&[
            ("float.top1", "float top-1"),
            ("quantized.top1", "quantized top-1"),
            ("accuracy_drop_points", "accuracy drop (points)"),
            ("top1_agreement", "top-1 agreement"),
            ("kld.mean", "KL divergence mean"),
            ("kld.p99", "KL divergence p99"),
        ]),
        "measure" => pick(&[
            ("p50_ms", "measured latency p50 (ms)"),
            ("p90_ms", "measured latency p90 (ms)"),
        ]),
        "gate" => {
            let mut rows = Vec::new();
            if let Some(passed) = output.get("passed").and_then(Value::as_bool) {
                rows.push(("verdict".to_string(), verdict(passed)));
            }
            for check in output
                .get("checks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let (Some(name), Some(passed)) = (
                    check.get("name").and_then(Value::as_str),
                    check.get("passed").and_then(Value::as_bool),
                ) {
                    rows.push((format!("check: {name}"), verdict(passed)));
                }
            }
            rows
        }
        _ => Vec::new(),
    }
}

fn verdict(passed: bool) -> Value {
    Value::String(if passed { "pass" } else { "FAIL" }.into())
}

const COMPARED_OPS: &[&str] = &["report", "evaluate", "measure", "gate"];

/// (pipeline, stage, metric) → (stage rank in topological order, position among the stage's metrics, value).
type Metrics = BTreeMap<(String, String, String), (usize, usize, Value)>;

/// Materializes one side, builds its compared stages with the user's cache, reads the numbers.
fn side_metrics(
    root: &Path,
    repo: Option<&Repository>,
    side: &Side,
    dest: &Path,
    cache: &Path,
    ops: &OpRegistry,
) -> Result<Metrics, VerifyError> {
    let ws_root = match (side, repo) {
        (Side::Commit(commit), Some(repo)) => {
            let tree = dest.join("tree");
            std::fs::create_dir_all(&tree).map_err(|source| VerifyError::Io {
                path: tree.display().to_string(),
                source,
            })?;
            repo.checkout_into(commit, &tree)?;
            tree.join(&repo.prefix)
        }
        _ => {
            let ws = dest.join("workspace");
            copy_workspace(root, &ws, ops)?;
            ws
        }
    };
    let what = match side {
        Side::Commit(c) => format!("commit {}", &c[..12.min(c.len())]),
        Side::WorkingTree => "the working tree".into(),
    };
    if !ws_root.join(edgebuild_engine::spec::PIPELINES_DIR).is_dir() {
        return Ok(Metrics::new());
    }
    crate::repro::fill_pointers(&ws_root, root)?;
    let ws = Workspace::load(&ws_root, ops).map_err(|e| VerifyError::BuildFailed {
        what: what.clone(),
        message: format!("its pipelines do not load: {e}"),
    })?;
    let compared: Vec<(usize, &edgebuild_engine::spec::Stage, &str)> = ws
        .stages
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match &s.action {
            Action::Op { name, .. } if COMPARED_OPS.contains(&name.as_str()) => {
                Some((i, s, name.as_str()))
            }
            _ => None,
        })
        .collect();
    if compared.is_empty() {
        return Ok(Metrics::new());
    }
    let rank = edgebuild_engine::graph::Graph::build(&ws)
        .map_err(|e| VerifyError::BuildFailed {
            what: what.clone(),
            message: format!("its pipelines do not load: {e}"),
        })?
        .rank;
    let targets: Vec<String> = compared.iter().map(|(_, s, _)| s.id.clone()).collect();
    child_build(&ws_root, cache, &targets, &Conditions::plain())?.check(&what)?;
    let mut metrics = Metrics::new();
    for (index, stage, op) in compared {
        let pipeline = ws.pipelines[stage.pipeline].name.clone();
        for port in &stage.outputs {
            let Ok(text) = std::fs::read(ws_root.join(&port.path)) else {
                continue; // blocked by a failed gate
            };
            let Ok(value) = serde_json::from_slice::<Value>(&text) else {
                continue; // report.md
            };
            for (position, (metric, v)) in metrics_of(op, &value).into_iter().enumerate() {
                metrics.insert(
                    (pipeline.clone(), stage.name.clone(), metric),
                    (rank[index], position, v),
                );
            }
        }
    }
    Ok(metrics)
}

/// Compares side `a` with side `b` (a commit, or the working tree).
pub fn compare(
    start: &Path,
    a: &str,
    b: Option<&str>,
    user_cache: &Path,
    ops: &OpRegistry,
) -> Result<Comparison, VerifyError> {
    let root =
        Workspace::find_root(start).map_err(|e| VerifyError::Workspace(Box::new(e.into())))?;
    let repo = Repository::find(&root)?;
    let side_a = Side::Commit(repo.resolve(a)?);
    let side_b = match b {
        Some(b) => Side::Commit(repo.resolve(b)?),
        None => Side::WorkingTree,
    };
    let label = |side: &Side| match side {
        Side::Commit(c) => repo.describe(c),
        Side::WorkingTree => "working tree".into(),
    };
    let scratch = Scratch::new(false)?;
    let ma = side_metrics(
        &root,
        Some(&repo),
        &side_a,
        &scratch.path().join("a"),
        user_cache,
        ops,
    )?;
    let mb = side_metrics(
        &root,
        Some(&repo),
        &side_b,
        &scratch.path().join("b"),
        user_cache,
        ops,
    )?;
    let mut keys: Vec<&(String, String, String)> = ma.keys().chain(mb.keys()).collect();
    // Pipelines by name, then stages and metrics in the order the pipeline and op give them.
    keys.sort_by_key(|k| {
        let (stage, position) = mb
            .get(*k)
            .or_else(|| ma.get(*k))
            .map_or((0, 0), |(i, p, _)| (*i, *p));
        (k.0.clone(), stage, k.1.clone(), position, k.2.clone())
    });
    keys.dedup();
    let rows = keys
        .into_iter()
        .map(|key| {
            let (va, vb) = (
                ma.get(key).map(|v| v.2.clone()),
                mb.get(key).map(|v| v.2.clone()),
            );
            let (delta, relative) = match (
                va.as_ref().and_then(Value::as_f64),
                vb.as_ref().and_then(Value::as_f64),
            ) {
                (Some(x), Some(y)) => (Some(y - x), (x != 0.0).then(|| (y - x) / x.abs())),
                _ => (None, None),
            };
            Row {
                pipeline: key.0.clone(),
                stage: key.1.clone(),
                metric: key.2.clone(),
                a: va,
                b: vb,
                delta,
                relative,
            }
        })
        .collect();
    let comparison = Comparison {
        a: label(&side_a),
        b: label(&side_b),
        rows,
    };
    scratch.finish();
    Ok(comparison)
}

fn show(value: &Option<Value>) -> String {
    match value {
        None => "-".into(),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => i.to_string(),
            None => format!("{}", n.as_f64().unwrap_or(f64::NAN)),
        },
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn show_delta(row: &Row) -> (String, String) {
    let delta = match row.delta {
        None if row.a != row.b => "changed".into(),
        None => String::new(),
        Some(0.0) => "0".into(),
        Some(d) if d.fract() == 0.0 && d.abs() < 1e15 => format!("{d:+}"),
        Some(d) => format!("{d:+.6}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string(),
    };
    let relative = match row.relative {
        Some(r) if r != 0.0 => format!("{:+.1}%", r * 100.0),
        _ => String::new(),
    };
    (delta, relative)
}

/// The comparison as an aligned text table (`markdown == false`) or a Markdown table.
pub fn render(c: &Comparison, markdown: bool) -> String {
    use crate::table::{self, Align};
    let mut out = String::new();
    let header = ["pipeline", "stage", "metric", "a", "b", "Δ", "Δ%"];
    let align = [
        Align::Left,
        Align::Left,
        Align::Left,
        Align::Right,
        Align::Right,
        Align::Right,
        Align::Right,
    ];
    let rows: Vec<Vec<String>> = c
        .rows
        .iter()
        .map(|r| {
            let (delta, relative) = show_delta(r);
            vec![
                r.pipeline.clone(),
                r.stage.clone(),
                r.metric.clone(),
                show(&r.a),
                show(&r.b),
                delta,
                relative,
            ]
        })
        .collect();
    let empty = "No report, evaluate, measure or gate stage on either side.";
    if markdown {
        writeln!(out, "### edgebuild compare\n").unwrap();
        writeln!(out, "**a**: {}  \n**b**: {}\n", c.a, c.b).unwrap();
        out.push_str(&table::markdown(&header, &rows, &align));
        if rows.is_empty() {
            writeln!(out, "\n{empty}").unwrap();
        }
        return out;
    }
    writeln!(out, "a: {}\nb: {}\n", c.a, c.b).unwrap();
    out.push_str(&table::text(&header, &rows, &align));
    if rows.is_empty() {
        writeln!(out, "{empty}").unwrap();
    }
    out
}

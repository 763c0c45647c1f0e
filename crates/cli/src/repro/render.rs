//! A verification as a person reads it: what was built under which conditions, the table of
//! outputs, the root causes with their diffs, the cascade, and the verdict.

use std::fmt::Write as _;

use super::Verification;
use super::comparison::{FindingKind, OutputRow, Verdict};
use edgebuild_engine::hash::Digest;

/// The human rendering: drift, the table, the findings and diffs, the verdict.
pub fn render(v: &Verification) -> String {
    let mut out = String::new();
    match &v.commit {
        Some(commit) => writeln!(
            out,
            "Rebuilt {} of commit {} from scratch (private cache, no remote).",
            v.pipelines.join(", "),
            &commit[..12.min(commit.len())]
        )
        .unwrap(),
        None => {
            let b = &v.builds[1].conditions;
            writeln!(
                out,
                "Built {} twice from scratch; the second build varied: working directory, TZ={}, LC_ALL={}, SOURCE_DATE_EPOCH={}, umask {:03o}, -j {}, {} thread(s).",
                v.pipelines.join(", "),
                b.stage_var("TZ"),
                b.stage_var("LC_ALL"),
                b.stage_var("SOURCE_DATE_EPOCH"),
                b.umask.unwrap_or_default(),
                b.jobs,
                b.threads
            )
            .unwrap()
        }
    }
    if v.commit.is_some() {
        if v.drift.is_empty() {
            writeln!(out, "Toolchain: same as the lock.").unwrap();
        } else {
            writeln!(out, "Toolchain drift since the lock was written:").unwrap();
            for line in &v.drift {
                writeln!(out, "  {line}").unwrap();
            }
        }
    }
    out.push('\n');
    let (expected, rebuilt) = if v.commit.is_some() {
        ("expected", "rebuilt")
    } else {
        ("build 1", "build 2")
    };
    let short = |d: &Option<Digest>| d.map_or("-".to_string(), |d| d.short());
    let verdict = |r: &OutputRow| match r.verdict {
        Verdict::Match => "ok",
        Verdict::Differs => "DIFFERS",
        Verdict::Cascade => "cascade",
        Verdict::Volatile => "volatile (not compared)",
        Verdict::Missing => "MISSING",
        Verdict::Unexpected => "NOT IN LOCK",
        Verdict::Blocked => "blocked (not built)",
    };
    let rows: Vec<[String; 5]> = v
        .comparison
        .outputs
        .iter()
        .map(|r| {
            [
                r.stage.clone(),
                r.output.clone(),
                short(&r.expected),
                short(&r.rebuilt),
                verdict(r).to_string(),
            ]
        })
        .collect();
    let header = ["stage", "output", expected, rebuilt, "verdict"];
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    out.push_str(&crate::table::text(&header, &rows, &[]));
    out.push('\n');
    for finding in &v.comparison.findings {
        match finding.kind {
            FindingKind::Root => {
                let first = v.comparison.first_divergent.as_deref() == Some(&finding.stage);
                writeln!(
                    out,
                    "{} {}: {}",
                    if first {
                        "First divergent stage:"
                    } else {
                        "Also divergent:"
                    },
                    finding.stage,
                    finding.explanation
                )
                .unwrap();
                if first {
                    for diff in &v.comparison.diffs {
                        writeln!(out, "  {}:", diff.output).unwrap();
                        for line in diff.diff.lines() {
                            writeln!(out, "    {line}").unwrap();
                        }
                    }
                }
            }
            FindingKind::Cascade => writeln!(
                out,
                "Cascade: {} differs because {} did",
                finding.stage,
                finding.from.as_deref().unwrap_or("?")
            )
            .unwrap(),
        }
    }
    for note in &v.comparison.notes {
        writeln!(out, "Note: {note}").unwrap();
    }
    let compared = v
        .comparison
        .outputs
        .iter()
        .filter(|r| r.verdict == Verdict::Match)
        .count();
    let volatile = v
        .comparison
        .outputs
        .iter()
        .filter(|r| r.verdict == Verdict::Volatile)
        .count();
    if v.reproducible {
        writeln!(
            out,
            "Reproducible: {compared} output(s) identical{}.",
            if volatile > 0 {
                format!(", {volatile} volatile output(s) not compared")
            } else {
                String::new()
            }
        )
        .unwrap();
    }
    out
}

//! Build results the way CI systems show them: a JUnit XML report (every gate check and every
//! stage a test case) and a Markdown summary for a pull-request comment or a job summary.
//!
//! Both are read from the build report and the gate verdict files the build wrote, so they say
//! exactly what the build printed. Neither holds timestamps or absolute paths.

use std::fmt::Write as _;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use serde::Deserialize;

use edgebuild_engine::context::Context;
use edgebuild_engine::exec::{BuildReport, Outcome};
use edgebuild_engine::spec::Action;

/// One check of a gate's verdict file (the `gate` op's output).
#[derive(Debug, Clone, Deserialize)]
pub struct Check {
    pub name: String,
    pub input: String,
    pub path: String,
    pub value: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub passed: bool,
}

#[derive(Debug, Deserialize)]
struct Verdict {
    checks: Vec<Check>,
}

impl Check {
    pub fn threshold(&self) -> String {
        match (self.min, self.max) {
            (Some(min), Some(max)) => format!("{min} ≤ x ≤ {max}"),
            (Some(min), None) => format!("≥ {min}"),
            (None, Some(max)) => format!("≤ {max}"),
            (None, None) => "-".into(),
        }
    }

    fn value_text(&self) -> String {
        self.value
            .map_or_else(|| "missing".into(), |v| v.to_string())
    }
}

/// The checks of every gate stage of the build that wrote a verdict, by stage id.
pub fn gate_checks(ctx: &Context, report: &BuildReport) -> Vec<(String, Option<Vec<Check>>)> {
    report
        .stages
        .iter()
        .filter_map(|result| {
            let stage = &ctx.ws.stages[ctx.ws.stage_index(&result.stage)?];
            if !matches!(&stage.action, Action::Op { name, .. } if name == "gate") {
                return None;
            }
            let checks = stage
                .outputs
                .first()
                // Only a gate that ran or was restored in this build has a current verdict.
                .filter(|_| {
                    matches!(
                        result.outcome,
                        Outcome::Ran | Outcome::Restored | Outcome::UpToDate | Outcome::GateFailed
                    )
                })
                .and_then(|port| std::fs::read(ctx.root().join(&port.path)).ok())
                .and_then(|bytes| serde_json::from_slice::<Verdict>(&bytes).ok())
                .map(|v| v.checks);
            Some((result.stage.clone(), checks))
        })
        .collect()
}

fn outcome_word(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::UpToDate => "up to date",
        Outcome::Restored => "restored",
        Outcome::Ran => "ran",
        Outcome::Failed => "failed",
        Outcome::GateFailed => "gate failed",
        Outcome::AwaitingSignOff => "awaiting sign-off",
        Outcome::Blocked => "blocked",
        Outcome::NotStarted => "not started",
    }
}

/// The JUnit XML report: a suite per gate (a case per check), and a suite of all stages.
pub fn junit(ctx: &Context, report: &BuildReport) -> String {
    let mut junit = Report::new("edgebuild");
    for (stage, checks) in gate_checks(ctx, report) {
        let mut suite = TestSuite::new(format!("gate {stage}"));
        match checks {
            Some(checks) => {
                for check in checks {
                    let status = if check.passed {
                        TestCaseStatus::success()
                    } else {
                        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                        status
                            .set_message(format!(
                                "{} is {}, needs {}",
                                check.name,
                                check.value_text(),
                                check.threshold()
                            ))
                            .set_type("gate check failed");
                        status
                    };
                    let mut case = TestCase::new(check.name.clone(), status);
                    case.set_classname(stage.clone());
                    case.properties.extend([
                        quick_junit::Property::new("value", check.value_text()),
                        quick_junit::Property::new("threshold", check.threshold()),
                        quick_junit::Property::new(
                            "source",
                            format!("{}: {}", check.input, check.path),
                        ),
                    ]);
                    suite.add_test_case(case);
                }
            }
            None => {
                let mut status = TestCaseStatus::skipped();
                status.set_message("the gate did not run in this build: a stage before it failed");
                suite.add_test_case(TestCase::new(stage.clone(), status));
            }
        }
        junit.add_test_suite(suite);
    }
    let mut stages = TestSuite::new("stages");
    for result in &report.stages {
        let status = match result.outcome {
            Outcome::UpToDate | Outcome::Restored | Outcome::Ran => TestCaseStatus::success(),
            Outcome::Failed | Outcome::GateFailed | Outcome::AwaitingSignOff => {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                status.set_message(
                    result
                        .error
                        .clone()
                        .unwrap_or_else(|| outcome_word(result.outcome).into()),
                );
                // A gate's checks are cases of their own suite; a failed command's output here.
                if result.outcome == Outcome::Failed && !result.log.is_empty() {
                    status.set_description(result.log.join("\n"));
                }
                status
            }
            Outcome::Blocked | Outcome::NotStarted => {
                let mut status = TestCaseStatus::skipped();
                status.set_message(match &result.blocked_by {
                    Some(by) => format!("blocked by {by}"),
                    None => outcome_word(result.outcome).into(),
                });
                status
            }
        };
        let mut case = TestCase::new(result.stage.clone(), status);
        case.set_classname("stage");
        stages.add_test_case(case);
    }
    junit.add_test_suite(stages);
    junit.to_string().expect("JUnit reports serialize")
}

/// The Markdown summary: the verdict, stage counts, every gate check, and what failed.
pub fn markdown(ctx: &Context, report: &BuildReport) -> String {
    let mut out = String::new();
    let failed = report.count(Outcome::Failed);
    let gates_failed = report.count(Outcome::GateFailed);
    let verdict = match (failed, gates_failed) {
        (0, 0) => "passed",
        (0, _) => "a gate failed",
        _ => "a stage failed",
    };
    writeln!(out, "### edgebuild build: {verdict}\n").unwrap();
    writeln!(
        out,
        "| ran | restored | up to date | failed | gate failed | blocked |"
    )
    .unwrap();
    writeln!(out, "|---:|---:|---:|---:|---:|---:|").unwrap();
    writeln!(
        out,
        "| {} | {} | {} | {} | {} | {} |",
        report.count(Outcome::Ran),
        report.count(Outcome::Restored),
        report.count(Outcome::UpToDate),
        failed,
        gates_failed,
        report.count(Outcome::Blocked) + report.count(Outcome::NotStarted),
    )
    .unwrap();
    let gates = gate_checks(ctx, report);
    if !gates.is_empty() {
        writeln!(
            out,
            "\n| gate | check | value | threshold | verdict |\n|---|---|--:|---|---|"
        )
        .unwrap();
        for (stage, checks) in &gates {
            match checks {
                Some(checks) => {
                    for check in checks {
                        writeln!(
                            out,
                            "| {stage} | {} | {} | {} | {} |",
                            check.name.replace('|', "\\|"),
                            check.value_text(),
                            check.threshold(),
                            if check.passed { "pass" } else { "**FAIL**" }
                        )
                        .unwrap();
                    }
                }
                None => writeln!(out, "| {stage} | (did not run) | | | blocked |").unwrap(),
            }
        }
    }
    let problems: Vec<_> = report
        .stages
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Failed | Outcome::Blocked))
        .collect();
    if !problems.is_empty() {
        writeln!(out).unwrap();
        for stage in problems {
            let why = match (&stage.error, &stage.blocked_by) {
                (Some(error), _) => error.clone(),
                (None, Some(by)) => format!("blocked by {by}"),
                (None, None) => outcome_word(stage.outcome).into(),
            };
            writeln!(
                out,
                "- `{}` {}: {}",
                stage.stage,
                outcome_word(stage.outcome),
                why
            )
            .unwrap();
        }
    }
    out
}

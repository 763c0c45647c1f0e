//! Rollout policies: the YAML file an operator hands to `edgebuild rollout start` (SPEC.md,
//! "Rollout policy"). Stages are growing shares of the fleet, each with a minimum soak time;
//! abort conditions are an install failure rate once enough devices reported, a confirmation
//! timeout, and a drop of the mean on-device confidence against the previous release on the
//! same devices. Errors point at the line of the file.

use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use edgebuild_engine::spec::{Source, SpecError, span_of, yaml_error_in};

/// A validated policy, as the server stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub stages: Vec<StagePolicy>,
    pub abort: AbortPolicy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StagePolicy {
    /// Share of the fleet, in percent, that runs the release once this stage starts.
    pub percent: f64,
    /// Minimum time in this stage before the next one starts.
    pub soak_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortPolicy {
    /// The failure rate and the confidence drop are judged once this many devices reported.
    pub min_reports: u64,
    /// Abort when failed / (confirmed + failed) exceeds this.
    pub max_failure_rate: f64,
    /// A targeted device that has not confirmed within this time counts as failed.
    pub confirm_timeout_ms: u64,
    /// Abort when the mean confidence of the new release is lower than the previous release's on
    /// the same devices by more than this (absolute, in probability).
    pub max_confidence_drop: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    version: Spanned<u32>,
    stages: Spanned<Vec<Spanned<RawStage>>>,
    abort: RawAbort,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    percent: Spanned<f64>,
    #[serde(default)]
    soak: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAbort {
    min_reports: Spanned<u64>,
    max_failure_rate: Spanned<f64>,
    confirm_timeout: Spanned<String>,
    max_confidence_drop: Spanned<f64>,
}

/// The largest rollout policy edgebuild reads (SPEC.md, "Limits").
pub const MAX_POLICY_BYTES: usize = 64 << 10;

/// Parses and checks a policy file's text; `name` is how errors call the file.
pub fn parse(name: &str, text: &str) -> Result<Policy, SpecError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(SpecError::Read {
            path: name.to_string(),
            message: format!(
                "it is {} bytes; a rollout policy may hold at most {} KiB",
                text.len(),
                MAX_POLICY_BYTES >> 10
            ),
        });
    }
    let source = Source {
        name: name.to_string(),
        text: text.to_string(),
    };
    let raw: RawPolicy =
        serde_saphyr::from_str(text).map_err(|e| yaml_error_in(&source, &e, "rollout policy"))?;
    let invalid = |span, message: String, label: &str, help: &str| {
        source.invalid(span, message, label, Some(help.to_string()))
    };
    if raw.version.value != 1 {
        return Err(invalid(
            span_of(&raw.version),
            format!("unsupported rollout policy version {}", raw.version.value),
            "expected `version: 1`",
            "this edgebuild reads version 1 rollout policies",
        ));
    }
    let duration = |s: &Spanned<String>| {
        crate::parse_duration(&s.value)
            .map(|d| d.as_millis() as u64)
            .map_err(|e| invalid(span_of(s), e, "not a duration", "say 500ms, 30s, 10m or 2h"))
    };
    if raw.stages.value.is_empty() {
        return Err(invalid(
            span_of(&raw.stages),
            "a rollout needs at least one stage".into(),
            "no stages",
            "list shares of the fleet, e.g. `- {percent: 10, soak: 1h}`, ending at 100",
        ));
    }
    let mut stages = Vec::new();
    let mut previous = 0.0;
    for stage in &raw.stages.value {
        let percent = &stage.value.percent;
        if !(percent.value > previous && percent.value <= 100.0) {
            return Err(invalid(
                span_of(percent),
                format!(
                    "stage share {}% must be above the previous stage's ({previous}%) and at most 100%",
                    percent.value
                ),
                "share of the fleet",
                "stages grow the share of the fleet: e.g. 1, 10, 50, 100",
            ));
        }
        previous = percent.value;
        stages.push(StagePolicy {
            percent: percent.value,
            soak_ms: stage
                .value
                .soak
                .as_ref()
                .map(duration)
                .transpose()?
                .unwrap_or(0),
        });
    }
    let last = raw.stages.value.last().expect("not empty");
    if last.value.percent.value != 100.0 {
        return Err(invalid(
            span_of(&last.value.percent),
            format!(
                "the last stage reaches {}% of the fleet, not 100%",
                last.value.percent.value
            ),
            "last stage",
            "end with `- {percent: 100}`: a rollout completes when the whole fleet runs the release",
        ));
    }
    let abort = &raw.abort;
    for (value, field) in [
        (&abort.max_failure_rate, "max_failure_rate"),
        (&abort.max_confidence_drop, "max_confidence_drop"),
    ] {
        if !(0.0..=1.0).contains(&value.value) {
            return Err(invalid(
                span_of(value),
                format!("`{field}` is {}, outside 0..1", value.value),
                "a share",
                "a rate or a probability: 0.05 means 5%",
            ));
        }
    }
    if abort.min_reports.value == 0 {
        return Err(invalid(
            span_of(&abort.min_reports),
            "`min_reports` must be at least 1".into(),
            "too few",
            "judge a rollout only once enough devices reported, e.g. 20",
        ));
    }
    let confirm_timeout_ms = duration(&abort.confirm_timeout)?;
    if confirm_timeout_ms == 0 {
        return Err(invalid(
            span_of(&abort.confirm_timeout),
            "`confirm_timeout` must be above zero".into(),
            "zero",
            "a device needs time to download, install and check the release",
        ));
    }
    Ok(Policy {
        stages,
        abort: AbortPolicy {
            min_reports: abort.min_reports.value,
            max_failure_rate: abort.max_failure_rate.value,
            confirm_timeout_ms,
            max_confidence_drop: abort.max_confidence_drop.value,
        },
    })
}

/// Reads and checks a policy file.
pub fn load(path: &std::path::Path) -> Result<Policy, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|e| SpecError::Read {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    parse(&path.display().to_string(), &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version: 1\nstages:\n  - {percent: 1, soak: 10m}\n  - {percent: 10, soak: 1h}\n  - {percent: 100}\nabort:\n  min_reports: 20\n  max_failure_rate: 0.05\n  confirm_timeout: 30m\n  max_confidence_drop: 0.02\n";

    #[test]
    fn a_diagnostic_on_a_long_line_is_elided() {
        let long = "x".repeat(70_000);
        let text = GOOD.replace(
            "max_confidence_drop: 0.02",
            &format!("max_confidence_drop: 0.02\nnote: \"{long}\", bogus: 1"),
        );
        let err = parse("p.yaml", &text).unwrap_err();
        let mut out = String::new();
        miette::GraphicalReportHandler::new()
            .render_report(&mut out, &err)
            .unwrap();
        assert!(out.len() < 5_000, "{} bytes", out.len());
    }

    #[test]
    fn a_policy_parses() {
        let policy = parse("p.yaml", GOOD).unwrap();
        assert_eq!(policy.stages.len(), 3);
        assert_eq!(policy.stages[0].soak_ms, 600_000);
        assert_eq!(policy.stages[2].soak_ms, 0);
        assert_eq!(policy.abort.confirm_timeout_ms, 1_800_000);
    }

    #[test]
    fn the_committed_example_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/rollout.yaml");
        let policy = load(std::path::Path::new(path)).unwrap();
        let shares: Vec<f64> = policy.stages.iter().map(|s| s.percent).collect();
        assert_eq!(shares, [1.0, 10.0, 50.0, 100.0]);
    }

    #[test]
    fn bad_policies_name_the_problem() {
        let cases = [
            (
                GOOD.replace("percent: 10,", "percent: 0.5,"),
                "must be above the previous",
            ),
            (GOOD.replace("percent: 100", "percent: 90"), "not 100%"),
            (
                GOOD.replace("max_failure_rate: 0.05", "max_failure_rate: 5"),
                "outside 0..1",
            ),
            (GOOD.replace("30m", "30 fortnights"), "unknown unit"),
            (
                GOOD.replace("min_reports: 20", "min_reports: 0"),
                "at least 1",
            ),
            (
                GOOD.replace("min_reports", "min_report"),
                "unknown key `min_report`",
            ),
            (GOOD.replace("version: 1", "version: 2"), "version 2"),
        ];
        for (text, expected) in cases {
            let err = parse("p.yaml", &text).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} lacks {expected}");
        }
    }
}

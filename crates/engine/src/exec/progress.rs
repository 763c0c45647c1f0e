//! What a build prints for humans, on stderr: a progress bar on a terminal, and otherwise one
//! line per stage that ran, was restored, failed or was blocked, with its log.

use std::io::IsTerminal;
use std::time::Duration;

use super::report::{Outcome, StageResult};

/// Progress for humans on stderr: a bar on a terminal, plain lines otherwise.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn new(total: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{pos}/{len}] {wide_msg}")
                    .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress { bar }
    }

    pub fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    pub fn advance(&self, running: &[String]) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
            bar.set_message(running.join(", "));
        }
    }

    pub fn set_running(&self, running: &[String]) {
        if let Some(bar) = &self.bar {
            bar.set_message(running.join(", "));
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub fn describe(result: &StageResult) -> Option<String> {
    let seconds = result.duration_ms as f64 / 1000.0;
    let why = || {
        let reasons: Vec<String> = result.reasons.iter().map(ToString::to_string).collect();
        if reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", reasons.join("; "))
        }
    };
    let mut text = match result.outcome {
        Outcome::UpToDate | Outcome::NotStarted => return None,
        Outcome::Ran => format!("ran      {} in {seconds:.2}s{}", result.stage, why()),
        Outcome::Restored if result.from_remote => {
            format!("restored {} from the remote{}", result.stage, why())
        }
        Outcome::Restored => format!("restored {}{}", result.stage, why()),
        Outcome::GateFailed => format!("GATE FAILED {}", result.stage),
        Outcome::AwaitingSignOff => format!("AWAITS SIGN-OFF {}", result.stage),
        Outcome::Failed => format!(
            "FAILED   {}: {}",
            result.stage,
            result.error.as_deref().unwrap_or("failed")
        ),
        Outcome::Blocked => format!(
            "blocked  {} (by {})",
            result.stage,
            result.blocked_by.as_deref().unwrap_or("?")
        ),
    };
    for line in &result.log {
        text.push_str("\n    ");
        text.push_str(line);
    }
    Some(text)
}

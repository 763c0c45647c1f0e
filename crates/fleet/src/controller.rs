//! The rollout controller: what each device should run, and when a rollout advances, completes,
//! or aborts and rolls back. [`decide`] is the rule, free of storage and clocks; [`tick`] applies
//! it to every active rollout in the store and records each transition with its reason.

use super::policy::Policy;
use super::store::{FleetStore, RolloutRow, TargetRow, Transition};
use super::{DeviceState, FleetError, RolloutState, RolloutStatus, StageStatus};
use crate::release::SignedManifest;

/// What the controller does with a rollout now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing yet, and why.
    Wait(String),
    /// Start the next stage; the reason says why the current one held.
    Advance(String),
    Complete(String),
    Abort(String),
}

/// The counts of a rollout's devices, per stage, at `now`.
pub fn stage_statuses(policy: &Policy, targets: &[TargetRow], now: i64) -> Vec<StageStatus> {
    let mut stages: Vec<StageStatus> = policy
        .stages
        .iter()
        .map(|s| StageStatus {
            percent: s.percent,
            ..StageStatus::default()
        })
        .collect();
    let mut sums = vec![(0.0, 0.0); stages.len()];
    for target in targets {
        let Some(stage) = stages.get_mut(target.stage) else {
            continue;
        };
        stage.targeted += 1;
        match target.state {
            Some(DeviceState::Confirmed) => stage.confirmed += 1,
            Some(DeviceState::Failed) => stage.failed += 1,
            _ if now - target.targeted_ms > policy.abort.confirm_timeout_ms as i64 => {
                stage.timed_out += 1
            }
            _ => stage.pending += 1,
        }
        if let (Some(before), Some(after)) = (target.baseline_confidence, target.new_confidence) {
            stage.paired += 1;
            sums[target.stage].0 += before;
            sums[target.stage].1 += after;
        }
    }
    for (stage, (before, after)) in stages.iter_mut().zip(sums) {
        if stage.paired > 0 {
            stage.baseline_confidence = Some(before / stage.paired as f64);
            stage.new_confidence = Some(after / stage.paired as f64);
        }
    }
    stages
}

/// All stages together.
pub fn totals(stages: &[StageStatus]) -> StageStatus {
    let mut total = StageStatus::default();
    let (mut before, mut after) = (0.0, 0.0);
    for s in stages {
        total.percent = total.percent.max(s.percent);
        total.targeted += s.targeted;
        total.confirmed += s.confirmed;
        total.failed += s.failed;
        total.timed_out += s.timed_out;
        total.pending += s.pending;
        total.paired += s.paired;
        before += s.baseline_confidence.unwrap_or(0.0) * s.paired as f64;
        after += s.new_confidence.unwrap_or(0.0) * s.paired as f64;
    }
    if total.paired > 0 {
        total.baseline_confidence = Some(before / total.paired as f64);
        total.new_confidence = Some(after / total.paired as f64);
    }
    total
}

/// The rule. Abort conditions are judged over every device the rollout reached, once
/// `min_reports` of them reported; a stage ends when its soak time is over and every targeted
/// device confirmed, failed or timed out.
pub fn decide(policy: &Policy, stage: usize, elapsed_ms: i64, total: &StageStatus) -> Decision {
    let abort = &policy.abort;
    let failures = total.failed + total.timed_out;
    let reported = total.confirmed + failures;
    if reported >= abort.min_reports && reported > 0 {
        let rate = failures as f64 / reported as f64;
        if rate > abort.max_failure_rate {
            return Decision::Abort(format!(
                "failure rate {:.1}% ({failures} of {reported} reported: {} failed, {} timed out) is above {:.1}%",
                rate * 100.0,
                total.failed,
                total.timed_out,
                abort.max_failure_rate * 100.0
            ));
        }
    }
    if total.paired >= abort.min_reports
        && let (Some(before), Some(after)) = (total.baseline_confidence, total.new_confidence)
        && before - after > abort.max_confidence_drop
    {
        return Decision::Abort(format!(
            "mean confidence dropped from {before:.4} to {after:.4} (-{:.4}) on {} devices, more than the allowed {}",
            before - after,
            total.paired,
            abort.max_confidence_drop
        ));
    }
    let soak = policy.stages[stage].soak_ms as i64;
    if elapsed_ms < soak {
        return Decision::Wait(format!("soaking: {} of {} ms", elapsed_ms.max(0), soak));
    }
    if total.pending > 0 {
        return Decision::Wait(format!("{} device(s) have not reported", total.pending));
    }
    // A rollout that reached nobody proves nothing: it does not complete on an empty fleet.
    if stage + 1 == policy.stages.len() && total.targeted == 0 {
        return Decision::Wait("no device enrolled yet".into());
    }
    let confidence = match (total.baseline_confidence, total.new_confidence) {
        (Some(b), Some(a)) => format!("; confidence {b:.4} -> {a:.4} on {} devices", total.paired),
        _ => String::new(),
    };
    let held = format!(
        "stage {} ({}%) held: {} confirmed, {} failed, {} timed out{confidence}",
        stage + 1,
        policy.stages[stage].percent,
        total.confirmed,
        total.failed,
        total.timed_out
    );
    if stage + 1 == policy.stages.len() {
        Decision::Complete(held)
    } else {
        Decision::Advance(held)
    }
}

/// Targets the devices the rollout's current share covers and has not reached yet.
fn target_share(store: &dyn FleetStore, rollout: &RolloutRow, now: i64) -> Result<(), FleetError> {
    let percent = rollout.policy.stages[rollout.stage].percent;
    let newly: Vec<String> = store
        .untargeted(rollout.id)?
        .into_iter()
        .filter(|d| super::in_share(super::cohort_bucket(rollout.id, d), percent))
        .collect();
    if !newly.is_empty() {
        store.add_targets(rollout.id, rollout.stage, &newly, now)?;
    }
    Ok(())
}

/// Stops a rollout: the devices it reached get the pre-signed rollback when there is one.
pub fn stop(
    store: &dyn FleetStore,
    rollout: &RolloutRow,
    now: i64,
    reason: &str,
) -> Result<bool, FleetError> {
    let (to, reason) = match rollout.rollback {
        Some(back) => (
            RolloutState::RolledBack,
            format!("{reason}; devices reached are sent rollback release {back}"),
        ),
        None => (
            RolloutState::Aborted,
            format!("{reason}; no rollback manifest (a first release): devices keep what they run"),
        ),
    };
    let abort = Transition {
        id: rollout.id,
        from: rollout.state,
        from_stage: rollout.stage,
        to,
        stage: rollout.stage,
        restart_clock: false,
        event: "abort",
        reason: &reason,
    };
    store.transition(&abort, now)
}

/// One pass of the controller over every active rollout.
pub fn tick(store: &dyn FleetStore, now: i64) -> Result<(), FleetError> {
    for rollout in store.rollouts(None)? {
        if !rollout.state.is_active() {
            continue;
        }
        if rollout.state == RolloutState::Running {
            target_share(store, &rollout, now)?;
        }
        let targets = store.targets(&rollout)?;
        let stages = stage_statuses(&rollout.policy, &targets, now);
        let decision = decide(
            &rollout.policy,
            rollout.stage,
            now - rollout.stage_started_ms,
            &totals(&stages),
        );
        match decision {
            Decision::Abort(reason) => {
                stop(store, &rollout, now, &reason)?;
            }
            // A paused rollout is still watched for aborts, but never moves on.
            _ if rollout.state == RolloutState::Paused => {}
            Decision::Wait(_) => {}
            Decision::Advance(reason) => {
                let next = rollout.stage + 1;
                let reason = format!(
                    "{reason}; stage {} starts ({}%)",
                    next + 1,
                    rollout.policy.stages[next].percent
                );
                let advance = Transition {
                    id: rollout.id,
                    from: RolloutState::Running,
                    from_stage: rollout.stage,
                    to: RolloutState::Running,
                    stage: next,
                    restart_clock: true,
                    event: "advance",
                    reason: &reason,
                };
                let moved = store.transition(&advance, now)?;
                if moved {
                    let advanced = RolloutRow {
                        stage: next,
                        ..rollout
                    };
                    target_share(store, &advanced, now)?;
                }
            }
            Decision::Complete(reason) => {
                let complete = Transition {
                    id: rollout.id,
                    from: RolloutState::Running,
                    from_stage: rollout.stage,
                    to: RolloutState::Completed,
                    stage: rollout.stage,
                    restart_clock: false,
                    event: "complete",
                    reason: &reason,
                };
                store.transition(&complete, now)?;
            }
        }
    }
    Ok(())
}

/// The manifest a device should run for a pipeline: the newest rollout that concerns it decides.
pub fn assignment(
    store: &dyn FleetStore,
    device: &str,
    pipeline: &str,
) -> Result<Option<SignedManifest>, FleetError> {
    for rollout in store.rollouts(Some(pipeline))? {
        let release = match rollout.state {
            RolloutState::Completed => Some(rollout.release),
            RolloutState::Running | RolloutState::Paused => store
                .is_targeted(rollout.id, device)?
                .then_some(rollout.release),
            RolloutState::RolledBack => match store.is_targeted(rollout.id, device)? {
                true => rollout.rollback,
                false => None,
            },
            RolloutState::Aborted => None,
        };
        if let Some(release) = release {
            return store.manifest(pipeline, release);
        }
    }
    Ok(None)
}

/// A rollout's status, as `rollout status` shows it.
pub fn status(
    store: &dyn FleetStore,
    rollout: &RolloutRow,
    now: i64,
) -> Result<RolloutStatus, FleetError> {
    let targets = store.targets(rollout)?;
    let stages = stage_statuses(&rollout.policy, &targets, now);
    let rolled_back = rollout.state == RolloutState::RolledBack;
    let version = store
        .manifest(&rollout.pipeline, rollout.release)?
        .map(|m| m.manifest.version)
        .unwrap_or_default();
    Ok(RolloutStatus {
        id: rollout.id,
        pipeline: rollout.pipeline.clone(),
        release: rollout.release,
        version,
        rollback: rollout.rollback,
        state: rollout.state,
        stage: rollout.stage,
        stages,
        rolled_back: if rolled_back { targets.len() as u64 } else { 0 },
        rollback_confirmed: targets
            .iter()
            .filter(|t| t.rollback_state == Some(DeviceState::Confirmed))
            .count() as u64,
        audit: store.audit(Some(rollout.id))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        super::super::policy::parse(
            "p",
            "version: 1\nstages: [{percent: 10, soak: 1s}, {percent: 100}]\nabort: {min_reports: 4, max_failure_rate: 0.25, confirm_timeout: 10s, max_confidence_drop: 0.01}\n",
        )
        .unwrap()
    }

    fn target(state: Option<DeviceState>, confidence: Option<(f64, f64)>) -> TargetRow {
        TargetRow {
            device: "d".into(),
            stage: 0,
            targeted_ms: 0,
            state,
            rollback_state: None,
            baseline_confidence: confidence.map(|c| c.0),
            new_confidence: confidence.map(|c| c.1),
        }
    }

    fn decide_at(targets: &[TargetRow], now: i64) -> Decision {
        let p = policy();
        decide(&p, 0, now, &totals(&stage_statuses(&p, targets, now)))
    }

    #[test]
    fn soak_then_every_device_accounted_for_then_advance() {
        let confirmed = || target(Some(DeviceState::Confirmed), Some((0.98, 0.978)));
        let mut targets = vec![
            confirmed(),
            confirmed(),
            target(Some(DeviceState::Installed), None),
        ];
        assert!(matches!(decide_at(&targets, 500), Decision::Wait(w) if w.contains("soaking")));
        assert!(matches!(decide_at(&targets, 2000), Decision::Wait(w) if w.contains("1 device")));
        targets[2] = confirmed();
        assert!(
            matches!(decide_at(&targets, 2000), Decision::Advance(r) if r.contains("3 confirmed"))
        );
    }

    #[test]
    fn failures_count_only_once_enough_devices_reported() {
        let failed = || target(Some(DeviceState::Failed), None);
        let ok = || target(Some(DeviceState::Confirmed), None);
        // 2 of 3 failed, but fewer than min_reports (4) reported: not judged yet.
        assert!(matches!(
            decide_at(&[failed(), failed(), ok()], 2000),
            Decision::Advance(_)
        ));
        let d = decide_at(&[failed(), failed(), ok(), ok()], 2000);
        assert!(
            matches!(&d, Decision::Abort(r) if r.contains("failure rate 50.0%")),
            "{d:?}"
        );
        // Silent devices count as failed once their time is up.
        let silent = || target(None, None);
        let d = decide_at(&[silent(), ok(), ok(), ok()], 20_000);
        assert!(
            matches!(&d, Decision::Advance(r) if r.contains("1 timed out")),
            "{d:?}: 1 of 4 is 25%, not above, and a timed-out device is accounted for"
        );
        let d = decide_at(&[silent(), silent(), ok(), ok()], 20_000);
        assert!(
            matches!(&d, Decision::Abort(r) if r.contains("2 timed out")),
            "{d:?}"
        );
    }

    #[test]
    fn an_empty_fleet_does_not_complete_a_rollout() {
        let p = policy();
        let none = totals(&stage_statuses(&p, &[], 5000));
        assert!(
            matches!(decide(&p, 0, 5000, &none), Decision::Advance(_)),
            "a small share may be empty"
        );
        assert!(matches!(decide(&p, 1, 5000, &none), Decision::Wait(w) if w.contains("no device")));
    }

    #[test]
    fn a_confidence_drop_on_the_same_devices_aborts() {
        let drop = || target(Some(DeviceState::Confirmed), Some((0.98, 0.95)));
        let d = decide_at(&[drop(), drop(), drop()], 2000);
        assert!(matches!(d, Decision::Advance(_)), "3 paired < min_reports");
        let d = decide_at(&[drop(), drop(), drop(), drop()], 2000);
        assert!(
            matches!(&d, Decision::Abort(r) if r.contains("dropped from 0.9800 to 0.9500")),
            "{d:?}"
        );
    }
}

//! The scheduler: which stage runs when. It knows the graph and the outcome of each finished
//! stage, nothing of what a stage does: the work is a [`Work`] value that prepares a stage on the
//! scheduling thread (from the results of its dependencies) and runs it on a worker of a pool of
//! `-j N` threads, reporting back through a channel.
//!
//! Ready stages start in topological order (ties broken by id). A stage whose dependency did not
//! succeed is blocked, never run. After a failure, without `--keep-going`, nothing new starts;
//! running stages finish. Stages never reached are reported as blocked (when something upstream
//! failed) or not started.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::sync::mpsc;

use super::Executor;
use super::locks::{invalidate_locks, write_locks};
use super::progress::{Progress, describe};
use super::report::{BuildOptions, BuildReport, Outcome, StageResult};
use crate::context::Context;
use crate::graph::Graph;
use crate::hash::PathHash;
use crate::plan;

/// What the scheduler runs. `R` is a finished stage's result.
pub trait Work<R>: Sync {
    /// What a worker needs of the scheduler's state to run `stage` (its dependencies' results).
    type Prepared: Send;
    fn prepare(&self, stage: usize, results: &[Option<R>]) -> Self::Prepared;
    fn run(&self, stage: usize, prepared: Self::Prepared) -> R;
    fn outcome(&self, result: &R) -> Outcome;
    /// The result of a stage that a dependency `by` blocked, or that never started (`by` is
    /// `None`) because the build stopped after a failure.
    fn not_run(&self, stage: usize, outcome: Outcome, by: Option<usize>) -> R;
    /// The result of a stage whose run panicked.
    fn panicked(&self, stage: usize, what: String) -> R;
    /// Called on the scheduling thread as stages start and finish, for progress output.
    fn started(&self, _running: &[usize]) {}
    fn finished(&self, _stage: usize, _result: &R, _running: &[usize]) {}
}

/// Runs the `selected` stages (in topological order) whose `results` are not known yet, up to
/// `jobs` at once, and returns every selected stage's result in `results`.
pub fn schedule<R: Send, W: Work<R>>(
    graph: &Graph,
    selected: &[usize],
    results: &mut [Option<R>],
    jobs: usize,
    keep_going: bool,
    work: &W,
) -> std::io::Result<()> {
    let n = results.len();
    let jobs = jobs.max(1);
    let mut in_build = vec![false; n];
    for &s in selected {
        in_build[s] = true;
    }
    let succeeded = |results: &[Option<R>], d: usize| {
        results[d]
            .as_ref()
            .is_some_and(|r| work.outcome(r).succeeded())
    };
    let mut waiting: Vec<usize> = (0..n)
        .map(|s| {
            if in_build[s] && results[s].is_none() {
                graph
                    .deps(s)
                    .filter(|(d, _)| in_build[*d] && results[*d].is_none())
                    .count()
            } else {
                0
            }
        })
        .collect();
    let mut ready: BinaryHeap<Reverse<(usize, usize)>> = selected
        .iter()
        .filter(|&&s| results[s].is_none() && waiting[s] == 0)
        .map(|&s| Reverse((graph.rank[s], s)))
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .thread_name(|i| format!("edgebuild-worker-{i}"))
        .build()
        .map_err(std::io::Error::other)?;
    let (tx, rx) = mpsc::channel::<(usize, R)>();
    let mut running: Vec<usize> = Vec::new();
    let mut stopped = false;

    pool.in_place_scope(|scope| {
        loop {
            while !stopped && running.len() < jobs {
                let Some(Reverse((_, stage))) = ready.pop() else {
                    break;
                };
                // A dependency that did not succeed blocks the stage.
                let blocker = graph
                    .deps(stage)
                    .filter(|(d, _)| in_build[*d])
                    .find(|(d, _)| !succeeded(results, *d));
                if let Some((dep, _)) = blocker {
                    let result = work.not_run(stage, Outcome::Blocked, Some(dep));
                    tx.send((stage, result))
                        .expect("receiver outlives the scope");
                    running.push(stage);
                    continue;
                }
                let prepared = work.prepare(stage, results);
                let tx = tx.clone();
                running.push(stage);
                scope.spawn(move |_| {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        work.run(stage, prepared)
                    }))
                    .unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".into());
                        work.panicked(stage, what)
                    });
                    let _ = tx.send((stage, result));
                });
            }
            work.started(&running);
            if running.is_empty() {
                break;
            }
            let (stage, result) = rx.recv().expect("a worker always reports");
            running.retain(|&s| s != stage);
            if matches!(work.outcome(&result), Outcome::Failed | Outcome::GateFailed) && !keep_going
            {
                stopped = true;
            }
            work.finished(stage, &result, &running);
            results[stage] = Some(result);
            for next in graph.dependents(stage) {
                if in_build[next] && results[next].is_none() {
                    waiting[next] -= 1;
                    if waiting[next] == 0 {
                        ready.push(Reverse((graph.rank[next], next)));
                    }
                }
            }
        }
    });

    // Stages never reached: blocked when something upstream did not succeed.
    for &s in selected {
        if results[s].is_none() {
            let blocker = graph.deps(s).find(|(d, _)| {
                results[*d].as_ref().is_some_and(|r| {
                    let outcome = work.outcome(r);
                    !outcome.succeeded() && outcome != Outcome::NotStarted
                })
            });
            results[s] = Some(match blocker {
                Some((d, _)) => work.not_run(s, Outcome::Blocked, Some(d)),
                None => work.not_run(s, Outcome::NotStarted, None),
            });
        }
    }
    Ok(())
}

/// A build's work: each stage is decided and then restored or run by [`super::stage::process`].
struct BuildWork<'a> {
    ctx: &'a Context,
    executor: &'a dyn Executor,
    progress: Progress,
}

impl BuildWork<'_> {
    fn ids(&self, stages: &[usize]) -> Vec<String> {
        stages
            .iter()
            .map(|&s| self.ctx.ws.stages[s].id.clone())
            .collect()
    }
}

impl Work<StageResult> for BuildWork<'_> {
    type Prepared = BTreeMap<usize, Arc<BTreeMap<String, PathHash>>>;

    fn prepare(&self, stage: usize, results: &[Option<StageResult>]) -> Self::Prepared {
        self.ctx
            .graph
            .deps(stage)
            .filter_map(|(d, _)| Some((d, results[d].as_ref()?.outputs.clone()?)))
            .collect()
    }

    fn run(&self, stage: usize, upstream: Self::Prepared) -> StageResult {
        super::stage::process(self.ctx, stage, &upstream, self.executor)
    }

    fn outcome(&self, result: &StageResult) -> Outcome {
        result.outcome
    }

    fn not_run(&self, stage: usize, outcome: Outcome, by: Option<usize>) -> StageResult {
        let mut result = StageResult::new(&self.ctx.ws.stages[stage], outcome);
        result.blocked_by = by.map(|d| self.ctx.ws.stages[d].id.clone());
        result
    }

    fn panicked(&self, stage: usize, what: String) -> StageResult {
        let mut failed = StageResult::new(&self.ctx.ws.stages[stage], Outcome::Failed);
        failed.error = Some(format!("internal error (panic): {what}"));
        failed
    }

    fn started(&self, running: &[usize]) {
        self.progress.set_running(&self.ids(running));
    }

    fn finished(&self, _stage: usize, result: &StageResult, running: &[usize]) {
        if let Some(text) = describe(result) {
            self.progress.line(&text);
        }
        self.progress.advance(&self.ids(running));
    }
}

/// Builds the selected stages (in topological order) and rewrites the lock files.
pub fn build(
    ctx: &Context,
    selected: &[usize],
    options: BuildOptions,
    executor: &dyn Executor,
) -> std::io::Result<BuildReport> {
    let n = ctx.ws.stages.len();
    let mut in_build = vec![false; n];
    for &s in selected {
        in_build[s] = true;
    }
    let mut results: Vec<Option<StageResult>> = vec![None; n];
    // Stages the plan found up to date are done already: nothing to hash again or dispatch.
    let plans = invalidate_locks(ctx, selected)?;
    for (plan, &stage) in plans.into_iter().zip(selected) {
        // Only when everything upstream (including `after`) is done and succeeded too.
        let deps_done = ctx.graph.deps(stage).all(|(d, _)| {
            !in_build[d] || results[d].as_ref().is_some_and(|r| r.outcome.succeeded())
        });
        if let (plan::Status::UpToDate, Some(outputs), true) =
            (plan.status, plan.outputs, deps_done)
        {
            let mut result = StageResult::new(&ctx.ws.stages[stage], Outcome::UpToDate);
            if plan.gate_failed {
                result.outcome = Outcome::GateFailed;
            }
            result.key = plan.key;
            result.locked = ctx.locked(stage).cloned();
            result.outputs = Some(Arc::new(outputs));
            results[stage] = Some(result);
        }
    }
    let pending = selected.iter().filter(|&&s| results[s].is_none()).count();
    let work = BuildWork {
        ctx,
        executor,
        progress: Progress::new(pending),
    };
    schedule(
        &ctx.graph,
        selected,
        &mut results,
        options.jobs,
        options.keep_going,
        &work,
    )?;
    work.progress.finish();
    ctx.save_stat_cache();
    let stages: Vec<StageResult> = selected
        .iter()
        .map(|&s| {
            results[s]
                .take()
                .expect("every selected stage has a result")
        })
        .collect();
    write_locks(ctx, &stages)?;
    Ok(BuildReport { stages })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::EdgeKind;
    use std::sync::Mutex;

    /// A stage of the in-memory graph: what it does when run.
    #[derive(Clone, Copy)]
    enum Does {
        Succeed,
        Fail,
        FailGate,
        Panic,
    }

    struct Recorded {
        outcome: Outcome,
        blocked_by: Option<usize>,
    }

    struct Fake {
        does: Vec<Does>,
        /// Stages in the order they started.
        started: Mutex<Vec<usize>>,
        /// How many ran at once, at most.
        peak: Mutex<(usize, usize)>,
    }

    impl Work<Recorded> for Fake {
        type Prepared = ();
        fn prepare(&self, _stage: usize, _results: &[Option<Recorded>]) {}
        fn run(&self, stage: usize, _: ()) -> Recorded {
            self.started.lock().unwrap().push(stage);
            {
                let mut peak = self.peak.lock().unwrap();
                peak.0 += 1;
                peak.1 = peak.1.max(peak.0);
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
            self.peak.lock().unwrap().0 -= 1;
            let outcome = match self.does[stage] {
                Does::Succeed => Outcome::Ran,
                Does::Fail => Outcome::Failed,
                Does::FailGate => Outcome::GateFailed,
                Does::Panic => panic!("stage {stage} panics"),
            };
            Recorded {
                outcome,
                blocked_by: None,
            }
        }
        fn outcome(&self, result: &Recorded) -> Outcome {
            result.outcome
        }
        fn not_run(&self, _stage: usize, outcome: Outcome, by: Option<usize>) -> Recorded {
            Recorded {
                outcome,
                blocked_by: by,
            }
        }
        fn panicked(&self, _stage: usize, _what: String) -> Recorded {
            Recorded {
                outcome: Outcome::Failed,
                blocked_by: None,
            }
        }
    }

    fn fake(does: Vec<Does>) -> Fake {
        Fake {
            does,
            started: Mutex::new(Vec::new()),
            peak: Mutex::new((0, 0)),
        }
    }

    fn run(
        graph: &Graph,
        work: &Fake,
        jobs: usize,
        keep_going: bool,
    ) -> Vec<(Outcome, Option<usize>)> {
        let mut results: Vec<Option<Recorded>> = (0..graph.order.len()).map(|_| None).collect();
        schedule(graph, &graph.order, &mut results, jobs, keep_going, work).unwrap();
        results
            .into_iter()
            .map(|r| {
                let r = r.unwrap();
                (r.outcome, r.blocked_by)
            })
            .collect()
    }

    /// 0 → 1 → 3, 0 → 2 → 3, and 4 alone; 5 runs after 2 (order only).
    fn diamond() -> Graph {
        Graph::from_edges(
            6,
            &[
                (0, 1, EdgeKind::Data),
                (0, 2, EdgeKind::Data),
                (1, 3, EdgeKind::Data),
                (2, 3, EdgeKind::Data),
                (2, 5, EdgeKind::Order),
            ],
        )
        .unwrap()
    }

    #[test]
    fn every_stage_runs_after_its_dependencies() {
        let graph = diamond();
        let work = fake(vec![Does::Succeed; 6]);
        let outcomes = run(&graph, &work, 1, false);
        assert!(outcomes.iter().all(|(o, _)| *o == Outcome::Ran));
        // One job: the topological order, ties broken by index.
        assert_eq!(*work.started.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
        let work = fake(vec![Does::Succeed; 6]);
        run(&graph, &work, 4, false);
        let started = work.started.lock().unwrap().clone();
        let at = |s: usize| started.iter().position(|&x| x == s).unwrap();
        assert!(at(0) < at(1) && at(0) < at(2) && at(1) < at(3) && at(2) < at(3));
        assert!(at(2) < at(5));
    }

    #[test]
    fn jobs_bound_the_stages_running_at_once() {
        let graph = Graph::from_edges(8, &[]).unwrap();
        let work = fake(vec![Does::Succeed; 8]);
        run(&graph, &work, 3, false);
        let peak = work.peak.lock().unwrap().1;
        assert!((1..=3).contains(&peak), "peak {peak}");
    }

    #[test]
    fn a_failure_blocks_its_dependents_and_stops_new_work() {
        let graph = diamond();
        let mut does = vec![Does::Succeed; 6];
        does[1] = Does::Fail;
        let work = fake(does);
        let outcomes = run(&graph, &work, 1, false);
        assert_eq!(outcomes[0], (Outcome::Ran, None));
        assert_eq!(outcomes[1], (Outcome::Failed, None));
        // Without --keep-going nothing new starts: 2 and 4 never start, 3 is blocked by 1.
        assert_eq!(outcomes[2], (Outcome::NotStarted, None));
        assert_eq!(outcomes[3], (Outcome::Blocked, Some(1)));
        assert_eq!(outcomes[4], (Outcome::NotStarted, None));
        assert_eq!(outcomes[5], (Outcome::NotStarted, None));
    }

    #[test]
    fn keep_going_runs_everything_a_failure_does_not_block() {
        let graph = diamond();
        let mut does = vec![Does::Succeed; 6];
        does[1] = Does::Fail;
        let work = fake(does);
        let outcomes = run(&graph, &work, 2, true);
        assert_eq!(outcomes[1].0, Outcome::Failed);
        assert_eq!(outcomes[2].0, Outcome::Ran);
        assert_eq!(outcomes[3], (Outcome::Blocked, Some(1)));
        assert_eq!(outcomes[4].0, Outcome::Ran);
        assert_eq!(outcomes[5].0, Outcome::Ran);
    }

    #[test]
    fn a_failed_gate_blocks_order_only_dependents_and_a_panic_is_a_failure() {
        let graph = diamond();
        let mut does = vec![Does::Succeed; 6];
        does[2] = Does::FailGate;
        does[4] = Does::Panic;
        let work = fake(does);
        let outcomes = run(&graph, &work, 1, true);
        assert_eq!(outcomes[2].0, Outcome::GateFailed);
        assert_eq!(outcomes[3], (Outcome::Blocked, Some(2)));
        assert_eq!(outcomes[5], (Outcome::Blocked, Some(2)));
        assert_eq!(outcomes[4].0, Outcome::Failed);
    }

    #[test]
    fn stages_known_before_the_build_are_not_run() {
        let graph = diamond();
        let work = fake(vec![Does::Succeed; 6]);
        let mut results: Vec<Option<Recorded>> = (0..6).map(|_| None).collect();
        results[0] = Some(Recorded {
            outcome: Outcome::UpToDate,
            blocked_by: None,
        });
        schedule(&graph, &graph.order, &mut results, 2, false, &work).unwrap();
        assert!(!work.started.lock().unwrap().contains(&0));
        assert_eq!(work.started.lock().unwrap().len(), 5);
    }
}

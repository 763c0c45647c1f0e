//! Static arena planning (SPEC.md, "`runtime`").  Each tensor has a size in
//! bytes and a lifetime `[first, last]` in node order (inclusive); two tensors
//! may share bytes only if their lifetimes are disjoint.  Sizes are rounded
//! up to the alignment, so every offset is a multiple of it.
//!
//! * [`plan_greedy_tflm`] is TFLM's GreedyMemoryPlanner, reproduced
//!   faithfully: tensors sorted by size, descending (a stable bubble sort, so
//!   ties keep input order), each placed at the lowest offset where it
//!   overlaps (in address and lifetime) no already placed tensor, scanning the
//!   already placed, simultaneously live tensors in offset order.
//! * [`plan_best`] returns a plan never larger than the greedy one: it runs
//!   several deterministic orderings with first-fit and best-fit placement,
//!   then a bounded, seeded local search on the order, and keeps the smallest
//!   total (the greedy plan first, so ties keep it).
//! * [`validate_plan`] checks a plan (used by the tests; cheap enough for a
//!   build tool to run on every plan).

/// One tensor to place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorLife {
    /// Size in bytes (rounded up to the alignment by the planner).
    pub size: usize,
    /// First node that uses it (writes it), inclusive.
    pub first: usize,
    /// Last node that uses it (reads it), inclusive.
    pub last: usize,
}

/// Offsets (one per tensor, same order as the input) and the arena size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub offsets: Vec<usize>,
    pub total: usize,
}

/// Why a plan could not be made (or is invalid).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// Alignment is zero or not a power of two.
    BadAlignment,
    /// Tensor `i` has `first > last`.
    BadLifetime(usize),
    /// Sizes or offsets overflow `usize`.
    Overflow,
    /// (validate_plan) Tensors `i` and `j` overlap in address and lifetime.
    Overlap(usize, usize),
    /// (validate_plan) Wrong number of offsets, a misaligned offset, or a
    /// total smaller than a tensor's end.
    Malformed,
}

fn prepare(tensors: &[TensorLife], align: usize) -> Result<Vec<usize>, PlanError> {
    if align == 0 || !align.is_power_of_two() {
        return Err(PlanError::BadAlignment);
    }
    tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.first > t.last {
                return Err(PlanError::BadLifetime(i));
            }
            t.size
                .checked_add(align - 1)
                .map(|s| s & !(align - 1))
                .ok_or(PlanError::Overflow)
        })
        .collect()
}

fn overlaps_in_time(a: &TensorLife, b: &TensorLife) -> bool {
    !(a.first > b.last || b.first > a.last)
}

/// How to choose among the gaps that fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fit {
    /// Lowest offset (TFLM).
    First,
    /// Smallest gap that fits (the top of the arena counts as infinite).
    Best,
}

/// Places tensors in `order`; returns offsets and total.
fn place(
    tensors: &[TensorLife],
    sizes: &[usize],
    order: &[usize],
    fit: Fit,
) -> Result<Plan, PlanError> {
    let n = tensors.len();
    let mut offsets = vec![0usize; n];
    // placed tensors, kept sorted by offset (stable for equal offsets)
    let mut placed: Vec<(usize, usize)> = Vec::with_capacity(n); // (offset, index)
    let mut total = 0usize;
    let mut live: Vec<(usize, usize)> = Vec::with_capacity(n);
    for &i in order {
        let want = sizes[i];
        live.clear();
        live.extend(
            placed
                .iter()
                .copied()
                .filter(|&(_, j)| overlaps_in_time(&tensors[i], &tensors[j])),
        );
        let mut candidate = 0usize;
        let mut chosen: Option<usize> = None;
        let mut best_gap = usize::MAX;
        for &(off, j) in &live {
            if off >= candidate {
                let gap = off - candidate;
                if gap >= want {
                    match fit {
                        Fit::First => {
                            chosen = Some(candidate);
                            break;
                        }
                        Fit::Best => {
                            if gap < best_gap {
                                best_gap = gap;
                                chosen = Some(candidate);
                            }
                        }
                    }
                }
            }
            let end = off.checked_add(sizes[j]).ok_or(PlanError::Overflow)?;
            candidate = candidate.max(end);
        }
        let off = chosen.unwrap_or(candidate);
        offsets[i] = off;
        let end = off.checked_add(want).ok_or(PlanError::Overflow)?;
        total = total.max(end);
        let pos = placed.partition_point(|&(o, _)| o <= off);
        placed.insert(pos, (off, i));
    }
    Ok(Plan { offsets, total })
}

/// Indices sorted by size descending with TFLM's stable bubble sort
/// semantics (ties keep input order).
fn order_size_desc(sizes: &[usize]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..sizes.len()).collect();
    idx.sort_by(|&a, &b| sizes[b].cmp(&sizes[a])); // stable
    idx
}

/// TFLM's GreedyMemoryPlanner (see the module docs).
pub fn plan_greedy_tflm(tensors: &[TensorLife], align: usize) -> Result<Plan, PlanError> {
    let sizes = prepare(tensors, align)?;
    place(tensors, &sizes, &order_size_desc(&sizes), Fit::First)
}

/// Deterministic 64-bit generator (SplitMix64) for the local search.
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A comparison of tensor indices that defines one candidate order.
type OrderKey<'a> = Box<dyn Fn(&usize, &usize) -> core::cmp::Ordering + 'a>;

/// Options of [`plan_best_with`].
#[derive(Clone, Copy, Debug)]
pub struct SearchOptions {
    /// Local-search steps after the heuristic orderings (0 = none).
    pub iterations: usize,
    /// Seed of the local search (the result is a function of the inputs and
    /// the seed only).
    pub seed: u64,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            iterations: 2000,
            seed: 0x0eb_a4e4a,
        }
    }
}

/// Best of several deterministic plans; never larger than
/// [`plan_greedy_tflm`].  Uses [`SearchOptions::default`].
pub fn plan_best(tensors: &[TensorLife], align: usize) -> Result<Plan, PlanError> {
    plan_best_with(tensors, align, SearchOptions::default())
}

/// [`plan_best`] with explicit search options.
pub fn plan_best_with(
    tensors: &[TensorLife],
    align: usize,
    opt: SearchOptions,
) -> Result<Plan, PlanError> {
    let sizes = prepare(tensors, align)?;
    let n = tensors.len();
    let base = order_size_desc(&sizes);
    let mut best = place(tensors, &sizes, &base, Fit::First)?;
    let mut best_order = base.clone();
    let consider = |order: Vec<usize>,
                    best: &mut Plan,
                    best_order: &mut Vec<usize>|
     -> Result<(), PlanError> {
        for fit in [Fit::First, Fit::Best] {
            let p = place(tensors, &sizes, &order, fit)?;
            if p.total < best.total {
                *best = p;
                *best_order = order.clone();
            }
        }
        Ok(())
    };
    let life = |i: usize| tensors[i].last - tensors[i].first + 1;
    // Heuristic orderings (all sorts are stable, so deterministic).
    let keyed: Vec<OrderKey> = vec![
        Box::new(|&a, &b| {
            sizes[b]
                .cmp(&sizes[a])
                .then(tensors[a].first.cmp(&tensors[b].first))
        }),
        Box::new(|&a, &b| {
            (sizes[b] as u128 * life(b) as u128).cmp(&(sizes[a] as u128 * life(a) as u128))
        }),
        Box::new(|&a, &b| life(b).cmp(&life(a)).then(sizes[b].cmp(&sizes[a]))),
        Box::new(|&a, &b| {
            tensors[a]
                .first
                .cmp(&tensors[b].first)
                .then(sizes[b].cmp(&sizes[a]))
        }),
        Box::new(|&a, &b| {
            tensors[b]
                .last
                .cmp(&tensors[a].last)
                .then(sizes[b].cmp(&sizes[a]))
        }),
    ];
    consider(base.clone(), &mut best, &mut best_order)?;
    for cmp in &keyed {
        let mut o: Vec<usize> = (0..n).collect();
        o.sort_by(|a, b| cmp(a, b));
        consider(o, &mut best, &mut best_order)?;
    }
    // Seeded local search: move one tensor earlier in the best order.
    if n >= 2 {
        let mut rng = SplitMix(opt.seed);
        for _ in 0..opt.iterations {
            let mut o = best_order.clone();
            let i = rng.below(n);
            let j = rng.below(n);
            if i == j {
                continue;
            }
            let t = o.remove(i);
            o.insert(j, t);
            for fit in [Fit::First, Fit::Best] {
                let p = place(tensors, &sizes, &o, fit)?;
                if p.total < best.total {
                    best = p;
                    best_order = o.clone();
                }
            }
        }
    }
    Ok(best)
}

/// Checks that `plan` is a valid placement of `tensors` with `align`.
pub fn validate_plan(tensors: &[TensorLife], align: usize, plan: &Plan) -> Result<(), PlanError> {
    let sizes = prepare(tensors, align)?;
    if plan.offsets.len() != tensors.len() {
        return Err(PlanError::Malformed);
    }
    for i in 0..tensors.len() {
        let end = plan.offsets[i]
            .checked_add(sizes[i])
            .ok_or(PlanError::Overflow)?;
        if !plan.offsets[i].is_multiple_of(align) || end > plan.total {
            return Err(PlanError::Malformed);
        }
        for j in 0..i {
            if sizes[i] == 0 || sizes[j] == 0 || !overlaps_in_time(&tensors[i], &tensors[j]) {
                continue;
            }
            let (a0, a1) = (plan.offsets[i], end);
            let (b0, b1) = (plan.offsets[j], plan.offsets[j] + sizes[j]);
            if a0 < b1 && b0 < a1 {
                return Err(PlanError::Overlap(j, i));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(size: usize, first: usize, last: usize) -> TensorLife {
        TensorLife { size, first, last }
    }

    #[test]
    fn greedy_matches_hand_computed_tflm_example() {
        // A chain a->b->c->d: sizes 100, 50, 100, 10 (lifetimes [0,1],[1,2],[2,3],[3,3]).
        let ts = [t(100, 0, 1), t(50, 1, 2), t(100, 2, 3), t(10, 3, 3)];
        let p = plan_greedy_tflm(&ts, 1).unwrap();
        // sorted: 0 (100), 2 (100), 1 (50), 3 (10)
        // 0 -> 0; 2 -> 0 (disjoint from 0); 1 overlaps 0 and 2 -> 100; 3 overlaps 2 -> 100
        assert_eq!(p.offsets, vec![0, 100, 0, 100]);
        assert_eq!(p.total, 150);
        validate_plan(&ts, 1, &p).unwrap();
    }

    #[test]
    fn alignment_rounds_sizes() {
        let ts = [t(3, 0, 0), t(5, 0, 0)];
        let p = plan_greedy_tflm(&ts, 16).unwrap();
        assert_eq!(p.total, 32);
        assert!(p.offsets.iter().all(|o| o % 16 == 0));
        assert_eq!(plan_greedy_tflm(&ts, 3), Err(PlanError::BadAlignment));
    }

    #[test]
    fn best_is_never_worse_and_can_be_better() {
        // A case where size-descending first-fit is suboptimal.
        let ts = [
            t(40, 0, 1),
            t(30, 1, 3),
            t(40, 2, 3),
            t(30, 0, 0),
            t(20, 3, 4),
            t(50, 4, 5),
        ];
        let g = plan_greedy_tflm(&ts, 1).unwrap();
        let b = plan_best(&ts, 1).unwrap();
        validate_plan(&ts, 1, &g).unwrap();
        validate_plan(&ts, 1, &b).unwrap();
        assert!(b.total <= g.total);
        assert_eq!(plan_best(&ts, 1).unwrap(), b, "deterministic");
    }

    #[test]
    fn empty_and_bad_lifetime() {
        assert_eq!(
            plan_best(&[], 16).unwrap(),
            Plan {
                offsets: vec![],
                total: 0
            }
        );
        assert_eq!(
            plan_greedy_tflm(&[t(1, 2, 1)], 16),
            Err(PlanError::BadLifetime(0))
        );
    }
}

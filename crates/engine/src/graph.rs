//! The dependency graph of a workspace's stages (SPEC.md, "Workspace" and "Pipeline files": one
//! graph per workspace; `after:` edges order without entering keys).
//!
//! Edges are inferred Make-style: a stage depends on every stage whose declared output is one of
//! its inputs, contains one of its inputs, or lies inside an input directory. `after:` adds an
//! order-only edge. This module owns cycle detection (with the cycle printed), a deterministic
//! topological order (ties broken by stage id) and target selection. It knows nothing of hashes.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use petgraph::graph::{DiGraph, NodeIndex};

use crate::spec::{SpecError, Workspace, paths_overlap};

/// Why one stage depends on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeKind {
    /// The dependent reads an output of the dependency.
    Data,
    /// `after:`: ordering only.
    Order,
}

/// Stage indices (into [`Workspace::stages`]) with their dependencies.
#[derive(Debug)]
pub struct Graph {
    pub dag: DiGraph<usize, EdgeKind>,
    /// All stages in topological order, ties broken by id.
    pub order: Vec<usize>,
    /// Position of each stage in `order`.
    pub rank: Vec<usize>,
}

impl Graph {
    pub fn build(ws: &Workspace) -> Result<Graph, SpecError> {
        let mut dag = DiGraph::with_capacity(ws.stages.len(), ws.stages.len());
        for i in 0..ws.stages.len() {
            dag.add_node(i);
        }
        // Index outputs by path for the common exact-match case; fall back to a prefix scan.
        let mut outputs: Vec<(&str, usize)> = ws
            .stages
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.outputs.iter().map(move |p| (p.path.as_str(), i)))
            .collect();
        outputs.sort();
        let mut errors = Vec::new();
        for (i, stage) in ws.stages.iter().enumerate() {
            let mut deps = BTreeSet::new();
            for port in &stage.inputs {
                deps.extend(producers_of(&outputs, &port.path));
            }
            for dep in deps {
                if dep != i {
                    dag.add_edge(NodeIndex::new(dep), NodeIndex::new(i), EdgeKind::Data);
                }
            }
            for target in &stage.after {
                if *target == stage.id {
                    let source = ws.source_of(stage);
                    errors.push(source.invalid(
                        source.key_before(&stage.name, stage.span),
                        format!("{} runs after itself", stage.id),
                        "remove it from its own `after`",
                        None,
                    ));
                    continue;
                }
                match ws.stage_index(target) {
                    Some(dep) => {
                        dag.add_edge(NodeIndex::new(dep), NodeIndex::new(i), EdgeKind::Order);
                    }
                    None => {
                        let source = ws.source_of(stage);
                        let written = target.split(':').next_back().unwrap_or(target);
                        let help = crate::spec::did_you_mean(
                            target,
                            ws.stages.iter().map(|s| s.id.as_str()),
                        )
                        .map(|s| format!("did you mean `{s}`?"));
                        errors.push(source.invalid(
                            source_find(source, stage.span.offset(), written, stage.span),
                            format!("{} runs after `{target}`, which is not a stage", stage.id),
                            "unknown stage",
                            help,
                        ));
                    }
                }
            }
        }
        SpecError::collect(errors)?;
        let order = topological_order(ws, &dag)?;
        let mut rank = vec![0; order.len()];
        for (pos, &i) in order.iter().enumerate() {
            rank[i] = pos;
        }
        Ok(Graph { dag, order, rank })
    }

    /// A graph of `n` stages from its edges (dependency, dependent, kind), for tests and tools
    /// that schedule work without a workspace. `None` when the edges form a cycle.
    pub fn from_edges(n: usize, edges: &[(usize, usize, EdgeKind)]) -> Option<Graph> {
        let mut dag = DiGraph::with_capacity(n, edges.len());
        for i in 0..n {
            dag.add_node(i);
        }
        for &(from, to, kind) in edges {
            if from >= n || to >= n {
                return None;
            }
            dag.add_edge(NodeIndex::new(from), NodeIndex::new(to), kind);
        }
        let order = kahn(&dag).ok()?;
        let mut rank = vec![0; n];
        for (pos, &i) in order.iter().enumerate() {
            rank[i] = pos;
        }
        Some(Graph { dag, order, rank })
    }

    /// Direct dependencies of a stage, with the kind of edge.
    pub fn deps(&self, stage: usize) -> impl Iterator<Item = (usize, EdgeKind)> + '_ {
        self.dag
            .edges_directed(NodeIndex::new(stage), petgraph::Direction::Incoming)
            .map(|e| (petgraph::visit::EdgeRef::source(&e).index(), *e.weight()))
    }

    /// Direct dependents of a stage.
    pub fn dependents(&self, stage: usize) -> impl Iterator<Item = usize> + '_ {
        self.dag
            .neighbors_directed(NodeIndex::new(stage), petgraph::Direction::Outgoing)
            .map(|n| n.index())
    }

    /// The stages `targets` need (themselves and everything upstream), in topological order.
    pub fn closure(&self, targets: &[usize]) -> Vec<usize> {
        let mut selected = vec![false; self.order.len()];
        let mut stack: Vec<usize> = targets.to_vec();
        while let Some(s) = stack.pop() {
            if !std::mem::replace(&mut selected[s], true) {
                stack.extend(self.deps(s).map(|(d, _)| d));
            }
        }
        self.order
            .iter()
            .copied()
            .filter(|&s| selected[s])
            .collect()
    }
}

fn source_find(
    source: &crate::spec::Source,
    from: usize,
    needle: &str,
    fallback: miette::SourceSpan,
) -> miette::SourceSpan {
    source
        .text
        .get(from..)
        .and_then(|rest| rest.find(needle))
        .map(|at| miette::SourceSpan::from((from + at, needle.len())))
        .unwrap_or(fallback)
}

/// Stages whose outputs overlap `path`.
fn producers_of(outputs: &[(&str, usize)], path: &str) -> Vec<usize> {
    let mut found = Vec::new();
    // Exact match and outputs inside `path/` sort at or after `path`.
    let start = outputs.partition_point(|(p, _)| *p < path);
    for &(p, i) in &outputs[start..] {
        if p == path || (p.starts_with(path) && p.as_bytes()[path.len()] == b'/') {
            found.push(i);
        } else if !p.starts_with(path) {
            break;
        }
    }
    // Outputs that are directories containing `path`: each ancestor of `path`.
    let mut prefix = path;
    while let Some((parent, _)) = prefix.rsplit_once('/') {
        let at = outputs.partition_point(|(p, _)| *p < parent);
        for &(p, i) in &outputs[at..] {
            if p != parent {
                break;
            }
            debug_assert!(paths_overlap(p, path));
            found.push(i);
        }
        prefix = parent;
    }
    found
}

/// The topological order of a workspace's stages, or the cycle that prevents one as an error.
fn topological_order(
    ws: &Workspace,
    dag: &DiGraph<usize, EdgeKind>,
) -> Result<Vec<usize>, SpecError> {
    let cycle = match kahn(dag) {
        Ok(order) => return Ok(order),
        Err(cycle) => cycle,
    };
    let path = cycle_path(dag, &cycle);
    let first = &ws.stages[path[0]];
    let mut names: Vec<&str> = path.iter().map(|&i| ws.stages[i].id.as_str()).collect();
    names.push(&first.id);
    let source = ws.source_of(first);
    let (src, span) = source.snippet(source.key_before(&first.name, first.span));
    Err(SpecError::Cycle {
        cycle: names.join(" → "),
        src,
        span,
    })
}

/// Kahn's algorithm with a min-heap on stage id (stages are sorted by id, so index order).
/// On a cycle: the strongly connected component with the smallest stage id, sorted.
fn kahn(dag: &DiGraph<usize, EdgeKind>) -> Result<Vec<usize>, Vec<usize>> {
    let n = dag.node_count();
    let mut indegree: Vec<usize> = (0..n)
        .map(|i| {
            dag.neighbors_directed(NodeIndex::new(i), petgraph::Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| indegree[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for next in dag.neighbors_directed(NodeIndex::new(i), petgraph::Direction::Outgoing) {
            let d = &mut indegree[next.index()];
            *d -= 1;
            if *d == 0 {
                ready.push(Reverse(next.index()));
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // A cycle: report the strongly connected component with the smallest stage id.
    let mut cycle: Vec<usize> = petgraph::algo::tarjan_scc(dag)
        .into_iter()
        .filter(|scc| scc.len() > 1)
        .map(|scc| scc.into_iter().map(|n| n.index()).collect::<Vec<_>>())
        .min_by_key(|scc| scc.iter().copied().min())
        .expect("an incomplete topological order implies a cycle");
    cycle.sort();
    Err(cycle)
}

/// A simple cycle through the smallest node of a strongly connected component.
fn cycle_path(dag: &DiGraph<usize, EdgeKind>, scc: &[usize]) -> Vec<usize> {
    let start = scc[0];
    let in_scc = |i: usize| scc.binary_search(&i).is_ok();
    // Breadth-first search back to `start`, staying inside the component.
    let mut parent = std::collections::BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        let mut next: Vec<usize> = dag
            .neighbors_directed(NodeIndex::new(node), petgraph::Direction::Outgoing)
            .map(|n| n.index())
            .filter(|&n| in_scc(n))
            .collect();
        next.sort();
        for n in next {
            if n == start {
                let mut path = vec![node];
                let mut cur = node;
                while let Some(&p) = parent.get(&cur) {
                    path.push(p);
                    cur = p;
                }
                path.reverse();
                return path;
            }
            if n != start && !parent.contains_key(&n) {
                parent.insert(n, node);
                queue.push_back(n);
            }
        }
    }
    scc.to_vec()
}

/// The graph as Graphviz dot or Mermaid text.
pub fn render(ws: &Workspace, graph: &Graph, mermaid: bool) -> String {
    let mut out = String::new();
    if mermaid {
        out.push_str("flowchart LR\n");
        for &i in &graph.order {
            out.push_str(&format!("  s{i}[\"{}\"]\n", ws.stages[i].id));
        }
    } else {
        out.push_str("digraph edgebuild {\n  rankdir=LR;\n  node [shape=box];\n");
        for &i in &graph.order {
            let shape = if matches!(ws.stages[i].action, crate::spec::Action::Op { .. }) {
                " style=rounded"
            } else {
                ""
            };
            out.push_str(&format!(
                "  \"{}\" [label=\"{}\"{shape}];\n",
                ws.stages[i].id, ws.stages[i].id
            ));
        }
    }
    for &i in &graph.order {
        let mut deps: Vec<(usize, EdgeKind)> = graph.deps(i).collect();
        deps.sort_by_key(|(d, _)| graph.rank[*d]);
        for (d, kind) in deps {
            let (a, b) = (&ws.stages[d].id, &ws.stages[i].id);
            out.push_str(&match (mermaid, kind) {
                (true, EdgeKind::Data) => format!("  s{d} --> s{i}\n"),
                (true, EdgeKind::Order) => format!("  s{d} -.-> s{i}\n"),
                (false, EdgeKind::Data) => format!("  \"{a}\" -> \"{b}\";\n"),
                (false, EdgeKind::Order) => format!("  \"{a}\" -> \"{b}\" [style=dashed];\n"),
            });
        }
    }
    if !mermaid {
        out.push_str("}\n");
    }
    out
}

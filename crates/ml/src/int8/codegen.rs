//! The C code of one int8 model (SPEC.md, "`runtime`"): a header with the model's API and
//! arena size macros, and a source with its constants as `const` arrays (in flash on a
//! microcontroller), its kernel parameters as `static const` structs, one static arena placed
//! at build time from the tensors' lifetimes, and `eb_model_invoke`, which calls the runtime's
//! kernels (`crates/ml/runtime/`) in node order. The generated text depends on the model alone:
//! the same model gives the same bytes on every host.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::inplace::{self, InPlace};
use super::planner::{Plan, TensorLife, plan_best, plan_greedy_tflm};
use super::{Blob, ConvParams, FcParams, Int8Model, Kernel};

/// Alignment of every arena offset (the runtime's `EB_SCRATCH_ALIGN`).
pub const ARENA_ALIGN: usize = 16;

/// The runtime's own sources, shipped beside the generated model.
pub const RUNTIME_FILES: &[(&str, &str)] = &[
    ("eb_kernels.h", include_str!("../../runtime/eb_kernels.h")),
    ("eb_internal.h", include_str!("../../runtime/eb_internal.h")),
    ("eb_kernels.c", include_str!("../../runtime/eb_kernels.c")),
    ("eb_conv.c", include_str!("../../runtime/eb_conv.c")),
];

/// What the arena planner optimizes (SPEC.md, "`runtime`").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ArenaGoal {
    /// Every kernel that has a faster path with scratch memory gets its scratch.
    #[default]
    Fast,
    /// A kernel whose scratch would raise the arena's peak runs its portable path instead
    /// (the same bits, more instructions).
    Small,
}

/// Where the arena puts each tensor and each node's scratch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArenaPlan {
    /// Bytes of the arena.
    pub bytes: usize,
    /// Bytes TFLM's greedy planner needs for the same tensors.
    pub greedy_bytes: usize,
    /// Offset of each model tensor (`None`: never computed or read).
    pub tensor_offsets: Vec<Option<usize>>,
    /// Offset of each node's scratch (`None`: it needs none, or runs without it).
    pub scratch_offsets: Vec<Option<usize>>,
    /// Nodes that have a scratch path but run without it (goal `small`).
    pub without_scratch: Vec<usize>,
    /// Per node: whether it writes its output over an input, and how.
    pub in_place: Vec<Option<InPlace>>,
}

/// The generated files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub header: String,
    pub source: String,
    pub arena: ArenaPlan,
}

/// The tensor whose memory a tensor shares: views are their input's bytes.
fn alias_roots(model: &Int8Model) -> Vec<usize> {
    let mut root: Vec<usize> = (0..model.tensors.len()).collect();
    for node in &model.nodes {
        if matches!(node.kernel, Kernel::View)
            && let Some(&src) = node.inputs.first()
        {
            root[node.output] = root[src];
        }
    }
    root
}

/// The planner's view of a model: alias roots, their lifetimes, each node's scratch size.
struct Tensors<'a> {
    model: &'a Int8Model,
    root: Vec<usize>,
    /// First and last node of each alias root that is ever computed or read.
    life: BTreeMap<usize, (usize, usize)>,
    scratch: Vec<usize>,
}

/// One candidate arrangement: which nodes get their scratch, which run in place.
#[derive(Clone)]
struct Choice {
    with_scratch: Vec<bool>,
    in_place: Vec<Option<InPlace>>,
}

/// A planned arrangement.
struct Layout {
    lives: Vec<TensorLife>,
    plan: Plan,
    /// Per tensor root: its offset in the arena.
    root_offsets: BTreeMap<usize, usize>,
    scratch_offsets: Vec<Option<usize>>,
}

impl<'a> Tensors<'a> {
    fn of(model: &'a Int8Model) -> Tensors<'a> {
        let n_nodes = model.nodes.len();
        let root = alias_roots(model);
        let mut life: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        let mut touch = |t: usize, at: usize| {
            let e = life.entry(root[t]).or_insert((at, at));
            e.0 = e.0.min(at);
            e.1 = e.1.max(at);
        };
        touch(model.input, 0);
        for (i, node) in model.nodes.iter().enumerate() {
            for &t in &node.inputs {
                touch(t, i);
            }
            touch(node.output, i);
        }
        touch(model.output, n_nodes.saturating_sub(1));
        let scratch = model
            .nodes
            .iter()
            .map(|n| n.kernel.scratch_bytes())
            .collect();
        Tensors {
            model,
            root,
            life,
            scratch,
        }
    }

    /// How node `i` may run in place: its output takes the bytes of an input that dies at
    /// this node (never the model's output, which must outlive it).
    fn in_place_option(&self, i: usize, with_scratch: bool) -> Option<InPlace> {
        let node = &self.model.nodes[i];
        let out_root = self.root[node.output];
        inplace::options(self.model, i, with_scratch, ARENA_ALIGN)
            .into_iter()
            .find(|o| {
                let r = self.root[node.inputs[o.input]];
                r != out_root
                    && r != self.root[self.model.output]
                    && self.life.get(&r).is_some_and(|l| l.1 == i)
            })
    }

    /// Plans `choice`: a node running in place joins its output to its input's block (the
    /// output `gap` bytes before the input); a block is one planner tensor that lives from
    /// its first member's birth to its last member's death.
    fn layout(&self, choice: &Choice) -> Result<Layout, String> {
        // block of each root, and each root's offset in its block
        let mut block: BTreeMap<usize, usize> = self.life.keys().map(|&r| (r, r)).collect();
        let mut rel: BTreeMap<usize, i64> = self.life.keys().map(|&r| (r, 0)).collect();
        for (i, option) in choice.in_place.iter().enumerate() {
            let Some(o) = option else { continue };
            let node = &self.model.nodes[i];
            let (a, b) = (self.root[node.inputs[o.input]], self.root[node.output]);
            let (Some(&ba), Some(&ra)) = (block.get(&a), rel.get(&a)) else {
                continue;
            };
            let rb = ra - o.gap as i64;
            if rb < 0 {
                for (r, off) in rel.iter_mut() {
                    if block[r] == ba {
                        *off -= rb;
                    }
                }
            }
            block.insert(b, ba);
            rel.insert(b, rb.max(0));
        }
        let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (&r, &b) in &block {
            members.entry(b).or_default().push(r);
        }
        let mut lives = Vec::new();
        let mut owners = Vec::new(); // Ok(block) or Err(node) for a scratch
        for (&b, roots) in &members {
            let first = roots.iter().map(|r| self.life[r].0).min().unwrap_or(0);
            let last = roots.iter().map(|r| self.life[r].1).max().unwrap_or(0);
            let size = roots
                .iter()
                .map(|r| rel[r] as usize + self.model.tensors[*r].len())
                .max()
                .unwrap_or(0);
            lives.push(TensorLife { size, first, last });
            owners.push(Ok(b));
        }
        for (i, &size) in self.scratch.iter().enumerate() {
            if size > 0 && choice.with_scratch[i] {
                lives.push(TensorLife {
                    size,
                    first: i,
                    last: i,
                });
                owners.push(Err(i));
            }
        }
        let plan = plan_best(&lives, ARENA_ALIGN)
            .map_err(|e| format!("the arena cannot be planned: {e:?}"))?;
        let mut root_offsets = BTreeMap::new();
        let mut scratch_offsets = vec![None; self.model.nodes.len()];
        for (owner, &off) in owners.iter().zip(&plan.offsets) {
            match owner {
                Ok(b) => {
                    for r in &members[b] {
                        root_offsets.insert(*r, off + rel[r] as usize);
                    }
                }
                Err(i) => scratch_offsets[*i] = Some(off),
            }
        }
        Ok(Layout {
            lives,
            plan,
            root_offsets,
            scratch_offsets,
        })
    }

    /// Checks a layout node by node: no two tensors live at a node share a byte, except an
    /// in-place node's input and output, which sit exactly `gap` apart, and a node's scratch
    /// shares no byte with a tensor live at that node.
    fn verify(&self, choice: &Choice, layout: &Layout) -> Result<(), String> {
        let range = |r: usize| -> Option<(usize, usize)> {
            let off = *layout.root_offsets.get(&r)?;
            Some((off, off + self.model.tensors[r].len()))
        };
        let apart = |a: (usize, usize), b: (usize, usize)| {
            a.1 <= b.0 || b.1 <= a.0 || a.0 == a.1 || b.0 == b.1
        };
        for (i, node) in self.model.nodes.iter().enumerate() {
            let live: Vec<usize> = self
                .life
                .iter()
                .filter(|(_, l)| l.0 <= i && i <= l.1)
                .map(|(&r, _)| r)
                .collect();
            let exempt = choice.in_place[i].map(|o| {
                (
                    self.root[node.inputs[o.input]],
                    self.root[node.output],
                    o.gap,
                )
            });
            if let Some((a, b, gap)) = exempt
                && range(b).map(|x| x.0 + gap) != range(a).map(|x| x.0)
            {
                return Err(format!("node {i} runs in place at the wrong distance"));
            }
            for (k, &a) in live.iter().enumerate() {
                let Some(ra) = range(a) else { continue };
                if let Some(s) = layout.scratch_offsets[i]
                    && !apart(ra, (s, s + self.scratch[i]))
                {
                    return Err(format!("node {i}: its scratch overlaps tensor {a}"));
                }
                for &b in &live[..k] {
                    let pair = exempt.is_some_and(|(x, y, _)| (x, y) == (a, b) || (x, y) == (b, a));
                    if !pair && range(b).is_some_and(|rb| !apart(ra, rb)) {
                        return Err(format!("node {i}: tensors {b} and {a} overlap"));
                    }
                }
            }
        }
        Ok(())
    }

    /// From `choice`, tries each node in order running in place (with its scratch, which
    /// in-place conv and depthwise need); keeps each that does not grow the arena.
    fn add_in_place(&self, choice: &mut Choice, layout: &mut Layout) -> Result<(), String> {
        for i in 0..self.model.nodes.len() {
            let has_path = self.scratch[i] > 0;
            let Some(option) = self.in_place_option(i, choice.with_scratch[i] || has_path) else {
                continue;
            };
            let mut trial = choice.clone();
            trial.in_place[i] = Some(option);
            trial.with_scratch[i] = trial.with_scratch[i] || has_path;
            let planned = self.layout(&trial)?;
            if planned.plan.total <= layout.plan.total {
                *choice = trial;
                *layout = planned;
            }
        }
        Ok(())
    }
}

/// Plans the arena: tensors (a view shares its input's bytes) live from the node that writes
/// them to the last that reads them (the input from the start, the output to the end); a
/// node's scratch lives during that node; a node may write its output over an input that dies
/// there (SPEC.md, "`runtime`", in place), where that does not grow the arena. With
/// [`ArenaGoal::Fast`] every node gets its scratch; with [`ArenaGoal::Small`], the plan starts
/// without any scratch, tries the nodes in place, and gives each remaining node its scratch
/// back, largest first, where the arena does not grow (and is never larger than the fast plan).
pub fn plan_arena(model: &Int8Model, goal: ArenaGoal) -> Result<ArenaPlan, String> {
    let n_nodes = model.nodes.len();
    let tensors = Tensors::of(model);
    let mut fast = Choice {
        with_scratch: vec![true; n_nodes],
        in_place: vec![None; n_nodes],
    };
    let mut fast_layout = tensors.layout(&fast)?;
    tensors.add_in_place(&mut fast, &mut fast_layout)?;
    let (choice, layout) = if goal == ArenaGoal::Small {
        let mut small = Choice {
            with_scratch: vec![false; n_nodes],
            in_place: vec![None; n_nodes],
        };
        let mut layout = tensors.layout(&small)?;
        tensors.add_in_place(&mut small, &mut layout)?;
        let mut order: Vec<usize> = (0..n_nodes)
            .filter(|&i| tensors.scratch[i] > 0 && !small.with_scratch[i])
            .collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tensors.scratch[i]));
        for i in order {
            let mut trial = small.clone();
            trial.with_scratch[i] = true;
            let planned = tensors.layout(&trial)?;
            if planned.plan.total <= layout.plan.total {
                small = trial;
                layout = planned;
            }
        }
        if fast_layout.plan.total < layout.plan.total {
            (fast, fast_layout)
        } else {
            (small, layout)
        }
    } else {
        (fast, fast_layout)
    };
    tensors.verify(&choice, &layout)?;
    let greedy = plan_greedy_tflm(&layout.lives, ARENA_ALIGN)
        .map_err(|e| format!("the arena cannot be planned: {e:?}"))?;
    let tensor_offsets = (0..model.tensors.len())
        .map(|t| layout.root_offsets.get(&tensors.root[t]).copied())
        .collect();
    Ok(ArenaPlan {
        bytes: layout.plan.total.max(ARENA_ALIGN),
        greedy_bytes: greedy.total.max(ARENA_ALIGN),
        tensor_offsets,
        scratch_offsets: layout.scratch_offsets,
        without_scratch: (0..n_nodes)
            .filter(|&i| tensors.scratch[i] > 0 && !choice.with_scratch[i])
            .collect(),
        in_place: choice.in_place,
    })
}

/// A name from the model, safe inside a C comment.
fn comment_text(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.:/-#[]".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    clean
}

fn ident_of(names: &BTreeMap<&str, String>, name: &str) -> Result<String, String> {
    names
        .get(name)
        .cloned()
        .ok_or_else(|| format!("constant `{name}` is missing"))
}

fn conv_params(out: &mut String, ident: &str, p: &ConvParams) {
    let _ = writeln!(
        out,
        "static const eb_conv_params {ident} = {{\n    .in_h = {}, .in_w = {}, .in_c = {}, .out_h = {}, .out_w = {}, .out_c = {},\n    .k_h = {}, .k_w = {}, .stride_h = {}, .stride_w = {}, .dil_h = {}, .dil_w = {},\n    .pad_top = {}, .pad_left = {}, .pad_bottom = {}, .pad_right = {},\n    .groups = {}, .depth_mult = {}, .in_zp = {}, .out_zp = {}, .act_min = {}, .act_max = {}}};",
        p.in_h,
        p.in_w,
        p.in_c,
        p.out_h,
        p.out_w,
        p.out_c,
        p.k_h,
        p.k_w,
        p.stride_h,
        p.stride_w,
        p.dil_h,
        p.dil_w,
        p.pad_top,
        p.pad_left,
        p.pad_bottom,
        p.pad_right,
        p.groups,
        p.depth_mult,
        p.in_zp,
        p.out_zp,
        p.act_min,
        p.act_max
    );
}

fn fc_params(out: &mut String, ident: &str, p: &FcParams) {
    let _ = writeln!(
        out,
        "static const eb_fc_params {ident} = {{\n    .batches = {}, .in_features = {}, .out_features = {},\n    .in_zp = {}, .out_zp = {}, .act_min = {}, .act_max = {}}};",
        p.batches, p.in_features, p.out_features, p.in_zp, p.out_zp, p.act_min, p.act_max
    );
}

fn dims(d: &[i32; 4]) -> String {
    format!("{{{}, {}, {}, {}}}", d[0], d[1], d[2], d[3])
}

/// The array of one constant.
fn blob_array(out: &mut String, ident: &str, name: &str, blob: &Blob) {
    let (ty, values): (&str, Vec<String>) = match blob {
        Blob::I8(v) => ("int8_t", v.iter().map(|x| x.to_string()).collect()),
        Blob::I32(v) => (
            "int32_t",
            v.iter()
                .map(|&x| {
                    if x == i32::MIN {
                        "(-2147483647 - 1)".to_string()
                    } else {
                        x.to_string()
                    }
                })
                .collect(),
        ),
        Blob::U32(v) => ("uint32_t", v.iter().map(|x| format!("{x}u")).collect()),
    };
    let _ = writeln!(
        out,
        "/* {} */\nstatic const {ty} {ident}[{}] = {{",
        comment_text(name),
        values.len().max(1)
    );
    if values.is_empty() {
        out.push_str("    0\n");
    }
    for chunk in values.chunks(24) {
        let _ = writeln!(out, "    {},", chunk.join(", "));
    }
    out.push_str("};\n");
}

/// The requantization table and bias of a MAC kernel (conv, depthwise, fully connected) as C,
/// and the init check that the runtime's scratch fits its planned place.
#[allow(clippy::too_many_arguments)]
fn mac_constants(
    src: &mut String,
    scratch_checks: &mut String,
    model: &Int8Model,
    idents: &BTreeMap<&str, String>,
    i: usize,
    (mult, shift, bias): (&str, &str, Option<&String>),
    scratch_fn: &str,
    has_scratch: bool,
) -> Result<String, String> {
    let n = match model.blobs.get(mult) {
        Some(b) => b.bytes() / 4,
        None => return Err(format!("constant `{mult}` is missing")),
    };
    let _ = writeln!(
        src,
        "static const eb_requant eb_rq{i} = {{{}, {}, {n}}};",
        ident_of(idents, mult)?,
        ident_of(idents, shift)?
    );
    if has_scratch {
        let planned = model.nodes[i].kernel.scratch_bytes();
        let _ = writeln!(
            scratch_checks,
            "    if ({scratch_fn}(&eb_p{i}) > {planned}u) {{\n        return EB_ERR_PARAM;\n    }}"
        );
    }
    match bias {
        Some(b) => ident_of(idents, b),
        None => Ok("(const int32_t *)0".to_string()),
    }
}

/// The model's C header and source.
pub fn generate(model: &Int8Model, goal: ArenaGoal) -> Result<Generated, String> {
    model.check()?;
    let arena = plan_arena(model, goal)?;
    let input = &model.tensors[model.input];
    let output = &model.tensors[model.output];
    let at = |t: usize| -> Result<String, String> {
        arena.tensor_offsets[t]
            .map(|o| format!("EB_A({o})"))
            .ok_or_else(|| format!("tensor {t} has no place in the arena"))
    };
    let input_off = at(model.input)?;
    let output_off = at(model.output)?;

    let mut header = String::new();
    let _ = write!(
        header,
        "/*
 * eb_model.h -- the int8 model `{name}`, generated by edgebuild (SPEC.md, \"`runtime`\").
 *
 * Call eb_model_init() once, then for each inference: write EB_MODEL_INPUT_BYTES int8 values
 * to eb_model_input() (real = EB_MODEL_INPUT_SCALE * (q - EB_MODEL_INPUT_ZERO_POINT), layout
 * {in_layout:?}), call eb_model_invoke(), read EB_MODEL_OUTPUT_BYTES values at eb_model_output().
 * Everything lives in one static arena of EB_MODEL_ARENA_BYTES bytes; nothing is allocated.
 */
#ifndef EB_MODEL_H
#define EB_MODEL_H

#include <stdint.h>

#ifdef __cplusplus
extern \"C\" {{
#endif

#define EB_MODEL_ARENA_BYTES {arena_bytes}
#define EB_MODEL_INPUT_BYTES {in_bytes}
#define EB_MODEL_OUTPUT_BYTES {out_bytes}
#define EB_MODEL_NODES {nodes}
#define EB_MODEL_INPUT_SCALE {in_scale:e}
#define EB_MODEL_INPUT_ZERO_POINT ({in_zp})
#define EB_MODEL_OUTPUT_SCALE {out_scale:e}
#define EB_MODEL_OUTPUT_ZERO_POINT ({out_zp})

/* 0, or EB_ERR_PARAM when a kernel's scratch does not fit its planned place. */
int eb_model_init(void);
/* 0, or -(k + 2) when node k refused its parameters. */
int eb_model_invoke(void);
int8_t *eb_model_input(void);
const int8_t *eb_model_output(void);

#ifdef EB_MODEL_TRACE
/* Defined by the caller when the model is compiled with EB_MODEL_TRACE: called after every
 * node with its output (SPEC.md, \"`runtime`\", debug dumps). */
void eb_model_trace(int32_t node, const int8_t *data, int32_t n);
#endif

#ifdef __cplusplus
}}
#endif

#endif /* EB_MODEL_H */
",
        name = comment_text(&model.name),
        in_layout = input.layout,
        arena_bytes = arena.bytes,
        in_bytes = input.len(),
        out_bytes = output.len(),
        nodes = model.nodes.len(),
        in_scale = input.scale,
        in_zp = input.zero_point,
        out_scale = output.scale,
        out_zp = output.zero_point,
    );

    let mut src = String::new();
    let _ = write!(
        src,
        "/*
 * eb_model.c -- the int8 model `{name}`, generated by edgebuild (SPEC.md, \"`runtime`\"):
 * {n_nodes} kernel calls, {const_bytes} bytes of constants, an arena of {arena_bytes} bytes
 * (TFLM's greedy planner: {greedy} bytes).
 */
#include \"eb_model.h\"
#include \"eb_kernels.h\"

#ifdef EB_MODEL_TRACE
#define EB_TRACE(node, data, n) eb_model_trace((node), (data), (n))
#else
#define EB_TRACE(node, data, n) ((void)0)
#endif

#if defined(__GNUC__)
static int8_t eb_arena[EB_MODEL_ARENA_BYTES] __attribute__((aligned(EB_SCRATCH_ALIGN)));
#define EB_ARENA eb_arena
#else
static union {{
    int64_t align;
    int8_t bytes[EB_MODEL_ARENA_BYTES];
}} eb_arena_u;
#define EB_ARENA eb_arena_u.bytes
#endif
#define EB_A(offset) (EB_ARENA + (offset))

",
        name = comment_text(&model.name),
        n_nodes = model.nodes.len(),
        const_bytes = model.constant_bytes(),
        arena_bytes = arena.bytes,
        greedy = arena.greedy_bytes,
    );

    // constants, in the order the nodes first use them
    let mut idents: BTreeMap<&str, String> = BTreeMap::new();
    for node in &model.nodes {
        for name in model.constants_of(&node.kernel) {
            if idents.contains_key(name) {
                continue;
            }
            let ident = format!("eb_k{}", idents.len());
            let blob = model
                .blobs
                .get(name)
                .ok_or_else(|| format!("constant `{name}` is missing"))?;
            blob_array(&mut src, &ident, name, blob);
            idents.insert(name, ident);
        }
    }
    src.push('\n');

    // parameters and calls
    let mut calls = String::new();
    let mut scratch_checks = String::new();
    for (i, node) in model.nodes.iter().enumerate() {
        let p = format!("eb_p{i}");
        let x = |k: usize| -> Result<String, String> {
            node.inputs
                .get(k)
                .ok_or_else(|| format!("node `{}` lacks input {k}", node.name))
                .and_then(|&t| at(t))
        };
        let y = at(node.output)?;
        let scratch = match arena.scratch_offsets[i] {
            Some(o) => format!("EB_A({o})"),
            None => "(void *)0".to_string(),
        };
        let in_place = match arena.in_place[i] {
            Some(o) if o.gap > 0 => format!(", in place: {} bytes before input {}", o.gap, o.input),
            Some(o) => format!(", in place over input {}", o.input),
            None => String::new(),
        };
        let _ = writeln!(
            src,
            "/* node {i}: {} ({}{in_place}) */",
            comment_text(&node.name),
            node.kernel.name()
        );
        let call = match &node.kernel {
            Kernel::Conv {
                params,
                weights,
                bias,
                mult,
                shift,
            }
            | Kernel::Depthwise {
                params,
                weights,
                bias,
                mult,
                shift,
            } => {
                conv_params(&mut src, &p, params);
                let (f, sf) = if matches!(node.kernel, Kernel::Conv { .. }) {
                    ("eb_conv2d", "eb_conv2d_scratch_bytes")
                } else {
                    ("eb_depthwise_conv2d", "eb_depthwise_conv2d_scratch_bytes")
                };
                let bias = mac_constants(
                    &mut src,
                    &mut scratch_checks,
                    model,
                    &idents,
                    i,
                    (mult, shift, bias.as_ref()),
                    sf,
                    arena.scratch_offsets[i].is_some(),
                )?;
                format!(
                    "{f}(&{p}, &eb_rq{i}, {}, {}, {bias}, {y}, {scratch})",
                    x(0)?,
                    ident_of(&idents, weights)?
                )
            }
            Kernel::FullyConnected {
                params,
                weights,
                bias,
                mult,
                shift,
            } => {
                fc_params(&mut src, &p, params);
                let bias = mac_constants(
                    &mut src,
                    &mut scratch_checks,
                    model,
                    &idents,
                    i,
                    (mult, shift, bias.as_ref()),
                    "eb_fully_connected_scratch_bytes",
                    arena.scratch_offsets[i].is_some(),
                )?;
                format!(
                    "eb_fully_connected(&{p}, &eb_rq{i}, {}, {}, {bias}, {y}, {scratch})",
                    x(0)?,
                    ident_of(&idents, weights)?
                )
            }
            Kernel::Add {
                params: a,
                constant,
            } => {
                let _ = writeln!(
                    src,
                    "static const eb_add_params {p} = {{\n    .out_shape = {}, .in1_shape = {}, .in2_shape = {},\n    .in1_zp = {}, .in2_zp = {}, .out_zp = {}, .left_shift = {},\n    .in1_mult = {}, .in1_shift = {}, .in2_mult = {}, .in2_shift = {},\n    .out_mult = {}, .out_shift = {}, .act_min = {}, .act_max = {}}};",
                    dims(&a.out_shape),
                    dims(&a.in1_shape),
                    dims(&a.in2_shape),
                    a.in1_zp,
                    a.in2_zp,
                    a.out_zp,
                    a.left_shift,
                    a.in1_mult,
                    a.in1_shift,
                    a.in2_mult,
                    a.in2_shift,
                    a.out_mult,
                    a.out_shift,
                    a.act_min,
                    a.act_max
                );
                let second = match constant {
                    Some(c) => ident_of(&idents, c)?,
                    None => x(1)?,
                };
                format!("eb_add(&{p}, {}, {second}, {y})", x(0)?)
            }
            Kernel::Mul {
                params: m,
                constant,
            } => {
                let _ = writeln!(
                    src,
                    "static const eb_mul_params {p} = {{\n    .out_shape = {}, .in1_shape = {}, .in2_shape = {},\n    .in1_zp = {}, .in2_zp = {}, .out_zp = {},\n    .out_mult = {}, .out_shift = {}, .act_min = {}, .act_max = {}}};",
                    dims(&m.out_shape),
                    dims(&m.in1_shape),
                    dims(&m.in2_shape),
                    m.in1_zp,
                    m.in2_zp,
                    m.out_zp,
                    m.out_mult,
                    m.out_shift,
                    m.act_min,
                    m.act_max
                );
                let second = match constant {
                    Some(c) => ident_of(&idents, c)?,
                    None => x(1)?,
                };
                format!("eb_mul(&{p}, {}, {second}, {y})", x(0)?)
            }
            Kernel::MaxPool { params: q } | Kernel::AvgPool { params: q } => {
                let _ = writeln!(
                    src,
                    "static const eb_pool_params {p} = {{\n    .in_h = {}, .in_w = {}, .channels = {}, .out_h = {}, .out_w = {},\n    .k_h = {}, .k_w = {}, .stride_h = {}, .stride_w = {},\n    .pad_top = {}, .pad_left = {}, .pad_bottom = {}, .pad_right = {},\n    .count_include_pad = {}, .zp = {}, .act_min = {}, .act_max = {}}};",
                    q.in_h,
                    q.in_w,
                    q.channels,
                    q.out_h,
                    q.out_w,
                    q.k_h,
                    q.k_w,
                    q.stride_h,
                    q.stride_w,
                    q.pad_top,
                    q.pad_left,
                    q.pad_bottom,
                    q.pad_right,
                    q.count_include_pad,
                    q.zp,
                    q.act_min,
                    q.act_max
                );
                let f = if matches!(node.kernel, Kernel::MaxPool { .. }) {
                    "eb_max_pool2d"
                } else {
                    "eb_avg_pool2d"
                };
                format!("{f}(&{p}, {}, {y})", x(0)?)
            }
            Kernel::GlobalAvgPool { params: g } => {
                let _ = writeln!(
                    src,
                    "static const eb_global_pool_params {p} = {{\n    .in_h = {}, .in_w = {}, .channels = {}, .act_min = {}, .act_max = {}}};",
                    g.in_h, g.in_w, g.channels, g.act_min, g.act_max
                );
                format!("eb_global_avg_pool(&{p}, {}, {y})", x(0)?)
            }
            Kernel::Softmax { rows, cols, table } => {
                let _ = writeln!(
                    src,
                    "static const eb_softmax_params {p} = {{.rows = {rows}, .cols = {cols}}};"
                );
                format!(
                    "eb_softmax(&{p}, {}, {}, {y})",
                    ident_of(&idents, table)?,
                    x(0)?
                )
            }
            Kernel::Lut { table } => format!(
                "eb_lut({}, {}, {}, {y})",
                model.tensors[node.output].len(),
                ident_of(&idents, table)?,
                x(0)?
            ),
            Kernel::Concat {
                outer,
                inner,
                out_zp,
                inputs,
            } => {
                let _ = writeln!(src, "static const eb_concat_input eb_ci{i}[] = {{");
                for (k, c) in inputs.iter().enumerate() {
                    let _ = writeln!(
                        src,
                        "    {{.data = {}, .axis_size = {}, .requant = {}, .zp = {}, .mult = {}, .shift = {}}},",
                        x(k)?,
                        c.axis_size,
                        i32::from(c.requant),
                        c.zp,
                        c.mult,
                        c.shift
                    );
                }
                src.push_str("};\n");
                let _ = writeln!(
                    src,
                    "static const eb_concat_params {p} = {{.outer = {outer}, .inner = {inner}, .n_inputs = {}, .out_zp = {out_zp}}};",
                    inputs.len()
                );
                format!("eb_concat(&{p}, eb_ci{i}, {y})")
            }
            Kernel::Transpose { in_shape, perm } => {
                let _ = writeln!(
                    src,
                    "static const eb_transpose_params {p} = {{.in_shape = {}, .perm = {}}};",
                    dims(in_shape),
                    dims(perm)
                );
                format!("eb_transpose(&{p}, {}, {y})", x(0)?)
            }
            Kernel::Pad {
                in_shape,
                before,
                after,
                value,
            } => {
                let _ = writeln!(
                    src,
                    "static const eb_pad_params {p} = {{.in_shape = {}, .pad_before = {}, .pad_after = {}, .value = {value}}};",
                    dims(in_shape),
                    dims(before),
                    dims(after)
                );
                format!("eb_pad(&{p}, {}, {y})", x(0)?)
            }
            Kernel::View => String::new(),
        };
        let n_out = model.tensors[node.output].len();
        if call.is_empty() {
            let _ = writeln!(calls, "    /* node {i}: a view, no code */");
        } else {
            let _ = writeln!(
                calls,
                "    if ({call} != EB_OK) {{\n        return -{};\n    }}",
                i + 2
            );
        }
        let _ = writeln!(calls, "    EB_TRACE({i}, {y}, {n_out});");
    }

    let _ = write!(
        src,
        "
int eb_model_init(void)
{{
{scratch_checks}    return EB_OK;
}}

int eb_model_invoke(void)
{{
{calls}    return EB_OK;
}}

int8_t *eb_model_input(void)
{{
    return {input_off};
}}

const int8_t *eb_model_output(void)
{{
    return {output_off};
}}
"
    );
    Ok(Generated {
        header,
        source: src,
        arena,
    })
}

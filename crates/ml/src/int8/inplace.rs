//! Which kernel calls may write their output over their own input, and where the output
//! must then start (SPEC.md, "`runtime`", in place). The arena planner asks this module per
//! node; the answer is a *gap*: the output starts `gap` bytes before the input it takes over,
//! so that no byte the kernel still has to read is written first. The answers follow the
//! order in which the C kernels (`crates/ml/runtime/`) read and write:
//!
//! * conv (groups 1, scratch path): output pixels in raster order, each written only after
//!   its own input window was read into the scratch column. After `n` output pixels, the
//!   bytes written are `[0, n·out_c)` from the output's start, and the first input byte still
//!   to be read is that of the lowest input pixel any later output pixel reads. The gap is
//!   the largest difference over `n`, rounded up to the arena's alignment (a larger gap is as
//!   safe).
//! * depthwise (depth multiplier 1, scratch path): input channels go into the scratch planes
//!   four at a time, then those four channels are written at every output pixel. An output
//!   byte at the input's start + `p·C + c` only ever lands on channel `c` of input pixel
//!   `p`, already copied: gap 0.
//! * add, mul (an input of the output's shape) and table lookups read element `i` before
//!   writing element `i`: gap 0.
//!
//! Everything else runs out of place.

use super::conv::ConvParams;
use super::{Int8Model, Kernel};

/// The input (by position in the node's inputs) whose bytes the output may take, and the gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InPlace {
    pub input: usize,
    pub gap: usize,
}

/// The ways node `i` may run in place; `with_scratch`: it runs its scratch path. The caller
/// still checks that the input dies at this node.
pub fn options(model: &Int8Model, i: usize, with_scratch: bool, align: usize) -> Vec<InPlace> {
    let Some(node) = model.nodes.get(i) else {
        return Vec::new();
    };
    let out_len = model.tensors[node.output].len();
    let same_len = |k: usize| {
        node.inputs
            .get(k)
            .is_some_and(|&t| model.tensors[t].len() == out_len)
    };
    match &node.kernel {
        Kernel::Conv { params, .. } if with_scratch && params.groups == 1 => conv_gap(params)
            .map(|gap| {
                vec![InPlace {
                    input: 0,
                    gap: gap.next_multiple_of(align.max(1)),
                }]
            })
            .unwrap_or_default(),
        Kernel::Depthwise { params, .. }
            if with_scratch && params.depth_mult == 1 && params.in_c == params.out_c =>
        {
            vec![InPlace { input: 0, gap: 0 }]
        }
        Kernel::Add { params, constant } => elementwise(
            [params.in1_shape, params.in2_shape],
            params.out_shape,
            constant.is_some(),
        ),
        Kernel::Mul { params, constant } => elementwise(
            [params.in1_shape, params.in2_shape],
            params.out_shape,
            constant.is_some(),
        ),
        Kernel::Lut { .. } if same_len(0) => vec![InPlace { input: 0, gap: 0 }],
        _ => Vec::new(),
    }
}

/// The inputs of a broadcasting binary kernel that have the output's shape (the second is
/// no tensor when it is a constant).
fn elementwise(inputs: [[i32; 4]; 2], out: [i32; 4], constant: bool) -> Vec<InPlace> {
    let n = if constant { 1 } else { 2 };
    (0..n)
        .filter(|&k| inputs[k] == out)
        .map(|k| InPlace { input: k, gap: 0 })
        .collect()
}

/// The gap of a conv's scratch path (see the module docs); `None` when the geometry is not
/// one the kernel accepts.
pub fn conv_gap(p: &ConvParams) -> Option<usize> {
    let d = |v: i32| i64::from(v);
    let (in_h, in_w, in_c) = (d(p.in_h), d(p.in_w), d(p.in_c));
    let (out_h, out_w, out_c) = (d(p.out_h), d(p.out_w), d(p.out_c));
    if [in_h, in_w, in_c, out_h, out_w, out_c]
        .iter()
        .any(|&v| v <= 0)
        || [p.k_h, p.k_w, p.stride_h, p.stride_w, p.dil_h, p.dil_w]
            .iter()
            .any(|&v| v <= 0)
    {
        return None;
    }
    // the first input row (column) a window reads: its first tap inside the input
    let first_inside = |o: i64, stride: i32, pad: i32, k: i32, dil: i32, n: i64| {
        (0..d(k))
            .map(|t| o * d(stride) - d(pad) + t * d(dil))
            .find(|x| (0..n).contains(x))
    };
    let rows: Vec<Option<i64>> = (0..out_h)
        .map(|oy| first_inside(oy, p.stride_h, p.pad_top, p.k_h, p.dil_h, in_h))
        .collect();
    let cols: Vec<Option<i64>> = (0..out_w)
        .map(|ox| first_inside(ox, p.stride_w, p.pad_left, p.k_w, p.dil_w, in_w))
        .collect();
    // walk the output pixels backwards, keeping the lowest input pixel read from here on
    let mut lowest: Option<i64> = None;
    let mut gap = 0i64;
    for n in (1..out_h * out_w).rev() {
        let (oy, ox) = ((n / out_w) as usize, (n % out_w) as usize);
        if let (Some(y), Some(x)) = (rows[oy], cols[ox]) {
            let pixel = y * in_w + x;
            lowest = Some(lowest.map_or(pixel, |l| l.min(pixel)));
        }
        if let Some(l) = lowest {
            gap = gap.max(n * out_c - l * in_c);
        }
    }
    usize::try_from(gap).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(in_hw: i32, c: [i32; 2], k: i32, stride: i32, pad: i32) -> ConvParams {
        let out = (in_hw + 2 * pad - k) / stride + 1;
        ConvParams {
            in_h: in_hw,
            in_w: in_hw,
            in_c: c[0],
            out_h: out,
            out_w: out,
            out_c: c[1],
            k_h: k,
            k_w: k,
            stride_h: stride,
            stride_w: stride,
            dil_h: 1,
            dil_w: 1,
            pad_top: pad,
            pad_left: pad,
            pad_bottom: pad,
            pad_right: pad,
            groups: 1,
            depth_mult: 1,
            in_zp: 0,
            out_zp: 0,
            act_min: -128,
            act_max: 127,
        }
    }

    /// Runs a conv's access order on one shared buffer (the output `gap` bytes before the
    /// input) and reports whether any input byte is overwritten before its last read.
    fn clobbers(p: &ConvParams, gap: usize) -> bool {
        let in_len = (p.in_h * p.in_w * p.in_c) as usize;
        // last output pixel that reads each input pixel
        let mut last_read = vec![None::<usize>; (p.in_h * p.in_w) as usize];
        for oy in 0..p.out_h {
            for ox in 0..p.out_w {
                for ky in 0..p.k_h {
                    for kx in 0..p.k_w {
                        let y = oy * p.stride_h - p.pad_top + ky * p.dil_h;
                        let x = ox * p.stride_w - p.pad_left + kx * p.dil_w;
                        if (0..p.in_h).contains(&y) && (0..p.in_w).contains(&x) {
                            last_read[(y * p.in_w + x) as usize] =
                                Some((oy * p.out_w + ox) as usize);
                        }
                    }
                }
            }
        }
        // output pixel n writes bytes [n·out_c, (n+1)·out_c) after reading its window
        (0..(p.out_h * p.out_w) as usize).any(|n| {
            let (w0, w1) = (n * p.out_c as usize, (n + 1) * p.out_c as usize);
            (0..in_len).any(|b| {
                let at = gap + b;
                let pixel = b / p.in_c as usize;
                at >= w0 && at < w1 && last_read[pixel].is_some_and(|l| l > n)
            })
        })
    }

    #[test]
    fn the_gap_of_a_conv_is_the_smallest_that_clobbers_nothing() {
        for p in [
            conv(8, [4, 4], 3, 1, 1),
            conv(8, [4, 8], 3, 2, 1),
            conv(8, [8, 4], 1, 1, 0),
            conv(8, [4, 8], 1, 1, 0),
            conv(9, [3, 5], 5, 2, 2),
            conv(6, [2, 2], 3, 1, 0),
        ] {
            let gap = conv_gap(&p).unwrap();
            assert!(!clobbers(&p, gap), "{p:?}: gap {gap} clobbers");
            if gap > 0 {
                assert!(
                    clobbers(&p, gap - 1),
                    "{p:?}: gap {gap} is not the smallest"
                );
            }
        }
        // ResNet-8's 3x3 convs: one row and one pixel of channels before the input
        assert_eq!(conv_gap(&conv(32, [16, 16], 3, 1, 1)), Some(33 * 16));
        // a pointwise conv that does not widen writes over what it has read
        assert_eq!(conv_gap(&conv(8, [8, 8], 1, 1, 0)), Some(0));
    }
}

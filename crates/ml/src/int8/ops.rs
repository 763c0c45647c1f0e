//! Reference light kernels of SPEC.md, "int8 arithmetic": Add and Mul with NumPy
//! broadcasting (up to 4-D), MaxPool / AveragePool (both count_include_pad
//! modes) / GlobalAveragePool, Softmax (table method), unary table lookup,
//! Concat, Transpose and constant Pad.  Parameter structs mirror the C
//! runtime's structs of the same names; all of these kernels need no scratch.

use super::KernelError;
use super::conv::conv_out_dim;
use super::quant::{mbqm, requantize};

/// Maximum rank of the broadcasting / shape kernels.
pub const MAX_DIMS: usize = 4;

fn product(d: &[i32]) -> Option<usize> {
    d.iter()
        .try_fold(1usize, |a, &x| a.checked_mul(usize::try_from(x).ok()?))
}

fn check_len(what: &'static str, got: usize, expected: Option<usize>) -> Result<(), KernelError> {
    match expected {
        Some(e) if e == got => Ok(()),
        Some(e) => Err(KernelError::BadLength {
            what,
            expected: e,
            got,
        }),
        None => Err(KernelError::BadParams("size overflow")),
    }
}

fn act_ok(lo: i32, hi: i32) -> bool {
    lo >= -128 && hi <= 127 && lo <= hi
}

/// Element strides of `shape` when iterating `out` (0 on broadcast dims).
fn bcast_strides(
    shape: &[i32; MAX_DIMS],
    out: &[i32; MAX_DIMS],
) -> Result<[usize; MAX_DIMS], KernelError> {
    let mut st = [0usize; MAX_DIMS];
    let mut s = 1usize;
    for d in (0..MAX_DIMS).rev() {
        if shape[d] <= 0 || out[d] <= 0 {
            return Err(KernelError::BadParams("non-positive dim"));
        }
        if shape[d] == out[d] {
            st[d] = s;
        } else if shape[d] == 1 {
            st[d] = 0;
        } else {
            return Err(KernelError::BadParams("shapes do not broadcast"));
        }
        s = s
            .checked_mul(shape[d] as usize)
            .ok_or(KernelError::BadParams("size overflow"))?;
    }
    Ok(st)
}

/// Visits every output index in row-major order with the two input offsets.
fn for_each_bcast<F: FnMut(usize, usize)>(
    out: &[i32; MAX_DIMS],
    s1: &[usize; 4],
    s2: &[usize; 4],
    mut f: F,
) {
    for i0 in 0..out[0] as usize {
        for i1 in 0..out[1] as usize {
            for i2 in 0..out[2] as usize {
                let b1 = i0 * s1[0] + i1 * s1[1] + i2 * s1[2];
                let b2 = i0 * s2[0] + i1 * s2[1] + i2 * s2[2];
                for i3 in 0..out[3] as usize {
                    f(b1 + i3 * s1[3], b2 + i3 * s2[3]);
                }
            }
        }
    }
}

/// Add parameters (mirrors `eb_add_params`; see `quant::add_multipliers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AddParams {
    pub out_shape: [i32; MAX_DIMS],
    pub in1_shape: [i32; MAX_DIMS],
    pub in2_shape: [i32; MAX_DIMS],
    pub in1_zp: i32,
    pub in2_zp: i32,
    pub out_zp: i32,
    pub left_shift: i32,
    pub in1_mult: i32,
    pub in1_shift: i32,
    pub in2_mult: i32,
    pub in2_shift: i32,
    pub out_mult: i32,
    pub out_shift: i32,
    pub act_min: i32,
    pub act_max: i32,
}

/// The int8 arithmetic's int8 Add with broadcasting.
pub fn add(p: &AddParams, in1: &[i8], in2: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    let s1 = bcast_strides(&p.in1_shape, &p.out_shape)?;
    let s2 = bcast_strides(&p.in2_shape, &p.out_shape)?;
    if !(0..=30).contains(&p.left_shift) || !act_ok(p.act_min, p.act_max) {
        return Err(KernelError::BadParams("add params"));
    }
    check_len("in1", in1.len(), product(&p.in1_shape))?;
    check_len("in2", in2.len(), product(&p.in2_shape))?;
    check_len("output", output.len(), product(&p.out_shape))?;
    let mut k = 0;
    for_each_bcast(&p.out_shape, &s1, &s2, |a, b| {
        let x1 = (in1[a] as i32 - p.in1_zp).wrapping_shl(p.left_shift as u32);
        let x2 = (in2[b] as i32 - p.in2_zp).wrapping_shl(p.left_shift as u32);
        let sa = mbqm(x1, p.in1_mult, p.in1_shift);
        let sb = mbqm(x2, p.in2_mult, p.in2_shift);
        output[k] = requantize(
            sa.wrapping_add(sb),
            p.out_mult,
            p.out_shift,
            p.out_zp,
            p.act_min,
            p.act_max,
        ) as i8;
        k += 1;
    });
    Ok(())
}

/// Mul parameters (mirrors `eb_mul_params`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MulParams {
    pub out_shape: [i32; MAX_DIMS],
    pub in1_shape: [i32; MAX_DIMS],
    pub in2_shape: [i32; MAX_DIMS],
    pub in1_zp: i32,
    pub in2_zp: i32,
    pub out_zp: i32,
    pub out_mult: i32,
    pub out_shift: i32,
    pub act_min: i32,
    pub act_max: i32,
}

/// The int8 arithmetic's int8 Mul with broadcasting.
pub fn mul(p: &MulParams, in1: &[i8], in2: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    let s1 = bcast_strides(&p.in1_shape, &p.out_shape)?;
    let s2 = bcast_strides(&p.in2_shape, &p.out_shape)?;
    if !act_ok(p.act_min, p.act_max) {
        return Err(KernelError::BadParams("mul params"));
    }
    check_len("in1", in1.len(), product(&p.in1_shape))?;
    check_len("in2", in2.len(), product(&p.in2_shape))?;
    check_len("output", output.len(), product(&p.out_shape))?;
    let mut k = 0;
    for_each_bcast(&p.out_shape, &s1, &s2, |a, b| {
        let acc = (in1[a] as i32 - p.in1_zp) * (in2[b] as i32 - p.in2_zp);
        output[k] = requantize(acc, p.out_mult, p.out_shift, p.out_zp, p.act_min, p.act_max) as i8;
        k += 1;
    });
    Ok(())
}

/// Pooling parameters (mirrors `eb_pool_params`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolParams {
    pub in_h: i32,
    pub in_w: i32,
    pub channels: i32,
    pub out_h: i32,
    pub out_w: i32,
    pub k_h: i32,
    pub k_w: i32,
    pub stride_h: i32,
    pub stride_w: i32,
    pub pad_top: i32,
    pub pad_left: i32,
    pub pad_bottom: i32,
    pub pad_right: i32,
    pub count_include_pad: i32,
    pub zp: i32,
    pub act_min: i32,
    pub act_max: i32,
}

impl PoolParams {
    fn check(&self, input: usize, output: usize) -> Result<(), KernelError> {
        let oh = conv_out_dim(
            self.in_h,
            self.k_h,
            self.stride_h,
            1,
            self.pad_top,
            self.pad_bottom,
        );
        let ow = conv_out_dim(
            self.in_w,
            self.k_w,
            self.stride_w,
            1,
            self.pad_left,
            self.pad_right,
        );
        if self.channels <= 0 || oh <= 0 || ow <= 0 || oh != self.out_h || ow != self.out_w {
            return Err(KernelError::BadParams("pool geometry"));
        }
        if !act_ok(self.act_min, self.act_max) || !(0..=1).contains(&self.count_include_pad) {
            return Err(KernelError::BadParams("pool params"));
        }
        check_len(
            "input",
            input,
            product(&[self.in_h, self.in_w, self.channels]),
        )?;
        check_len(
            "output",
            output,
            product(&[self.out_h, self.out_w, self.channels]),
        )
    }
    /// Valid window rows/cols [a, b) of output (oy, ox).
    fn window(&self, oy: i32, ox: i32) -> (i32, i32, i32, i32) {
        let y0 = oy * self.stride_h - self.pad_top;
        let x0 = ox * self.stride_w - self.pad_left;
        (
            y0.max(0),
            (y0 + self.k_h).min(self.in_h),
            x0.max(0),
            (x0 + self.k_w).min(self.in_w),
        )
    }
}

/// MaxPool: max over valid taps, then the fused clamp.
pub fn max_pool2d(p: &PoolParams, input: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    p.check(input.len(), output.len())?;
    let (w, ch) = (p.in_w as usize, p.channels as usize);
    for oy in 0..p.out_h {
        for ox in 0..p.out_w {
            let (ya, yb, xa, xb) = p.window(oy, ox);
            for c in 0..ch {
                let mut m = -128i32;
                for y in ya..yb {
                    for x in xa..xb {
                        m = m.max(input[(y as usize * w + x as usize) * ch + c] as i32);
                    }
                }
                output[(oy as usize * p.out_w as usize + ox as usize) * ch + c] =
                    m.clamp(p.act_min, p.act_max) as i8;
            }
        }
    }
    Ok(())
}

/// The int8 arithmetic's rounding division of a tap sum by a count.
fn round_div(acc: i32, count: i32) -> i32 {
    if acc > 0 {
        (acc + count / 2) / count
    } else {
        (acc - count / 2) / count
    }
}

/// AveragePool with count_include_pad 0 (valid taps) or 1 (full kernel area,
/// padded taps adding zp).
pub fn avg_pool2d(p: &PoolParams, input: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    p.check(input.len(), output.len())?;
    let (w, ch) = (p.in_w as usize, p.channels as usize);
    for oy in 0..p.out_h {
        for ox in 0..p.out_w {
            let (ya, yb, xa, xb) = p.window(oy, ox);
            let valid = (yb - ya) * (xb - xa);
            let (count, pad_add) = if p.count_include_pad == 1 {
                (p.k_h * p.k_w, (p.k_h * p.k_w - valid) * p.zp)
            } else {
                (valid, 0)
            };
            for c in 0..ch {
                let mut acc = pad_add;
                for y in ya..yb {
                    for x in xa..xb {
                        acc += input[(y as usize * w + x as usize) * ch + c] as i32;
                    }
                }
                output[(oy as usize * p.out_w as usize + ox as usize) * ch + c] =
                    round_div(acc, count).clamp(p.act_min, p.act_max) as i8;
            }
        }
    }
    Ok(())
}

/// GlobalAveragePool parameters (mirrors `eb_global_pool_params`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GlobalPoolParams {
    pub in_h: i32,
    pub in_w: i32,
    pub channels: i32,
    pub act_min: i32,
    pub act_max: i32,
}

/// GlobalAveragePool: the average pool over the whole H x W.
pub fn global_avg_pool(
    p: &GlobalPoolParams,
    input: &[i8],
    output: &mut [i8],
) -> Result<(), KernelError> {
    if p.in_h <= 0 || p.in_w <= 0 || p.channels <= 0 || !act_ok(p.act_min, p.act_max) {
        return Err(KernelError::BadParams("global pool params"));
    }
    check_len("input", input.len(), product(&[p.in_h, p.in_w, p.channels]))?;
    check_len("output", output.len(), Some(p.channels as usize))?;
    let n = (p.in_h * p.in_w) as usize;
    let ch = p.channels as usize;
    for c in 0..ch {
        let acc: i32 = (0..n).map(|i| input[i * ch + c] as i32).sum();
        output[c] = round_div(acc, n as i32).clamp(p.act_min, p.act_max) as i8;
    }
    Ok(())
}

/// Softmax over rows of `cols` values with the int8 arithmetic's table method.
pub fn softmax(
    rows: i32,
    cols: i32,
    table: &[u32; 256],
    input: &[i8],
    output: &mut [i8],
) -> Result<(), KernelError> {
    if rows <= 0 || cols <= 0 {
        return Err(KernelError::BadParams("softmax dims"));
    }
    let n = product(&[rows, cols]);
    check_len("input", input.len(), n)?;
    check_len("output", output.len(), n)?;
    let c = cols as usize;
    for (x, o) in input.chunks(c).zip(output.chunks_mut(c)) {
        let mx = x.iter().map(|&v| v as i32).max().unwrap_or(-128);
        let sum: u64 = x
            .iter()
            .map(|&v| table[(mx - v as i32) as usize] as u64)
            .sum();
        if sum == 0 {
            return Err(KernelError::BadParams("softmax table sums to 0"));
        }
        for (xi, oi) in x.iter().zip(o.iter_mut()) {
            let e = table[(mx - *xi as i32) as usize] as u64;
            let q = ((e * 256 + sum / 2) / sum) as i64 - 128;
            *oi = q.clamp(-128, 127) as i8;
        }
    }
    Ok(())
}

/// Unary table lookup: `out[i] = table[in[i] + 128]`.
pub fn lut(table: &[i8; 256], input: &[i8], output: &mut [i8]) -> Result<(), KernelError> {
    check_len("output", output.len(), Some(input.len()))?;
    for (x, o) in input.iter().zip(output.iter_mut()) {
        *o = table[(*x as i32 + 128) as usize];
    }
    Ok(())
}

/// One input of a Concat (mirrors `eb_concat_input`, without the pointer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConcatInput {
    pub axis_size: i32,
    /// false: copied; true: requantized with (zp, mult, shift).
    pub requant: bool,
    pub zp: i32,
    pub mult: i32,
    pub shift: i32,
}

/// Concat: output viewed as `[outer][sum of axis_size_i * inner]`.
pub fn concat(
    outer: i32,
    inner: i32,
    out_zp: i32,
    inputs: &[(ConcatInput, &[i8])],
    output: &mut [i8],
) -> Result<(), KernelError> {
    if outer < 0 || inner < 0 || inputs.is_empty() {
        return Err(KernelError::BadParams("concat params"));
    }
    let (outer, inner) = (outer as usize, inner as usize);
    let mut total = 0usize;
    for (ci, data) in inputs {
        let a = usize::try_from(ci.axis_size).map_err(|_| KernelError::BadParams("axis size"))?;
        let chunk = a
            .checked_mul(inner)
            .ok_or(KernelError::BadParams("size overflow"))?;
        check_len("concat input", data.len(), chunk.checked_mul(outer))?;
        total = total
            .checked_add(chunk)
            .ok_or(KernelError::BadParams("size overflow"))?;
    }
    check_len("output", output.len(), total.checked_mul(outer))?;
    let mut k = 0;
    for o in 0..outer {
        for (ci, data) in inputs {
            let chunk = ci.axis_size as usize * inner;
            for &q in &data[o * chunk..(o + 1) * chunk] {
                output[k] = if ci.requant {
                    requantize(q as i32 - ci.zp, ci.mult, ci.shift, out_zp, -128, 127) as i8
                } else {
                    q
                };
                k += 1;
            }
        }
    }
    Ok(())
}

/// Transpose of up to 4 dims: `out_shape[i] = in_shape[perm[i]]`.
pub fn transpose(
    in_shape: &[i32; MAX_DIMS],
    perm: &[i32; MAX_DIMS],
    input: &[i8],
    output: &mut [i8],
) -> Result<(), KernelError> {
    let mut seen = [false; MAX_DIMS];
    for &p in perm {
        if !(0..MAX_DIMS as i32).contains(&p) || seen[p as usize] {
            return Err(KernelError::BadParams("perm is not a permutation"));
        }
        seen[p as usize] = true;
    }
    if in_shape.iter().any(|&d| d <= 0) {
        return Err(KernelError::BadParams("non-positive dim"));
    }
    let n = product(in_shape);
    check_len("input", input.len(), n)?;
    check_len("output", output.len(), n)?;
    let mut in_st = [1usize; MAX_DIMS];
    for d in (0..MAX_DIMS - 1).rev() {
        in_st[d] = in_st[d + 1] * in_shape[d + 1] as usize;
    }
    let os: [i32; MAX_DIMS] = core::array::from_fn(|d| in_shape[perm[d] as usize]);
    let st: [usize; MAX_DIMS] = core::array::from_fn(|d| in_st[perm[d] as usize]);
    let zero = [0usize; 4];
    let mut k = 0;
    for_each_bcast(&os, &st, &zero, |a, _| {
        output[k] = input[a];
        k += 1;
    });
    Ok(())
}

/// Constant pad: `out_shape[i] = before[i] + in_shape[i] + after[i]`, filled
/// with `value` (the zero point).
pub fn pad(
    in_shape: &[i32; MAX_DIMS],
    before: &[i32; MAX_DIMS],
    after: &[i32; MAX_DIMS],
    value: i32,
    input: &[i8],
    output: &mut [i8],
) -> Result<(), KernelError> {
    if in_shape.iter().any(|&d| d <= 0)
        || before.iter().chain(after).any(|&d| d < 0)
        || !(-128..=127).contains(&value)
    {
        return Err(KernelError::BadParams("pad params"));
    }
    let mut os = [0i32; MAX_DIMS];
    for d in 0..MAX_DIMS {
        os[d] = in_shape[d]
            .checked_add(before[d])
            .and_then(|v| v.checked_add(after[d]))
            .ok_or(KernelError::BadParams("size overflow"))?;
    }
    check_len("input", input.len(), product(in_shape))?;
    check_len("output", output.len(), product(&os))?;
    let mut ost = [1usize; MAX_DIMS];
    for d in (0..MAX_DIMS - 1).rev() {
        ost[d] = ost[d + 1] * os[d + 1] as usize;
    }
    output.fill(value as i8);
    let mut s = 0;
    let row = in_shape[3] as usize;
    for i0 in 0..in_shape[0] as usize {
        for i1 in 0..in_shape[1] as usize {
            for i2 in 0..in_shape[2] as usize {
                let d = (i0 + before[0] as usize) * ost[0]
                    + (i1 + before[1] as usize) * ost[1]
                    + (i2 + before[2] as usize) * ost[2]
                    + before[3] as usize;
                output[d..d + row].copy_from_slice(&input[s..s + row]);
                s += row;
            }
        }
    }
    Ok(())
}

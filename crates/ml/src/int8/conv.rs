//! Reference MAC kernels of SPEC.md, "int8 arithmetic": Conv2D (plain and grouped),
//! DepthwiseConv2D and FullyConnected, over NHWC slices (batch 1).  Each is
//! the int8 arithmetic's formula written literally (sum over valid taps of
//! `w * (x - zp_in)` plus bias, then per-channel requantization and the fused
//! clamp).  Parameter structs mirror the C runtime's `eb_conv_params` /
//! `eb_fc_params` field for field, and the `*_scratch_bytes` functions return
//! exactly what the C functions of the same name return, so that an arena
//! plan made here is valid for the C runtime.

use super::KernelError;
use super::quant::requantize;

/// Geometry and quantization of a conv-like kernel (mirrors `eb_conv_params`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConvParams {
    pub in_h: i32,
    pub in_w: i32,
    pub in_c: i32,
    pub out_h: i32,
    pub out_w: i32,
    pub out_c: i32,
    pub k_h: i32,
    pub k_w: i32,
    pub stride_h: i32,
    pub stride_w: i32,
    pub dil_h: i32,
    pub dil_w: i32,
    pub pad_top: i32,
    pub pad_left: i32,
    pub pad_bottom: i32,
    pub pad_right: i32,
    /// Conv2D: number of groups (1 = plain conv).
    pub groups: i32,
    /// DepthwiseConv2D: out_c = in_c * depth_mult.
    pub depth_mult: i32,
    pub in_zp: i32,
    pub out_zp: i32,
    pub act_min: i32,
    pub act_max: i32,
}

/// Per-channel (len = out channels) or per-tensor (len 1) requantization.
#[derive(Clone, Copy, Debug)]
pub struct Requant<'a> {
    pub mult: &'a [i32],
    pub shift: &'a [i32],
}

impl Requant<'_> {
    fn check(&self, n_out: usize) -> Result<(), KernelError> {
        let n = self.mult.len();
        if n != self.shift.len() || !(n == 1 || n == n_out) {
            return Err(KernelError::BadParams(
                "requant arrays must have length 1 or out channels",
            ));
        }
        Ok(())
    }
    fn get(&self, c: usize) -> (i32, i32) {
        let i = if self.mult.len() == 1 { 0 } else { c };
        (self.mult[i], self.shift[i])
    }
}

/// Output size of one spatial dim (the formula of SPEC.md, "int8 arithmetic"); 0 if empty/invalid.
pub fn conv_out_dim(input: i32, k: i32, stride: i32, dil: i32, pad0: i32, pad1: i32) -> i32 {
    if input <= 0 || k <= 0 || stride <= 0 || dil <= 0 || pad0 < 0 || pad1 < 0 {
        return 0;
    }
    let span = input as i64 + pad0 as i64 + pad1 as i64 - dil as i64 * (k as i64 - 1) - 1;
    if span < 0 {
        return 0;
    }
    i32::try_from(span / stride as i64 + 1).unwrap_or(0)
}

fn act_ok(lo: i32, hi: i32) -> bool {
    lo >= -128 && hi <= 127 && lo <= hi
}

fn dims_product(d: &[i32]) -> Option<usize> {
    d.iter().try_fold(1usize, |acc, &x| {
        let x = usize::try_from(x).ok()?;
        acc.checked_mul(x)
    })
}

impl ConvParams {
    fn check_geometry(&self) -> Result<(), KernelError> {
        if self.in_h <= 0 || self.in_w <= 0 || self.in_c <= 0 || self.out_c <= 0 {
            return Err(KernelError::BadParams("non-positive dims"));
        }
        let oh = conv_out_dim(
            self.in_h,
            self.k_h,
            self.stride_h,
            self.dil_h,
            self.pad_top,
            self.pad_bottom,
        );
        let ow = conv_out_dim(
            self.in_w,
            self.k_w,
            self.stride_w,
            self.dil_w,
            self.pad_left,
            self.pad_right,
        );
        if oh <= 0 || ow <= 0 || oh != self.out_h || ow != self.out_w {
            return Err(KernelError::BadParams(
                "output size does not follow the int8 arithmetic formula",
            ));
        }
        if !act_ok(self.act_min, self.act_max) {
            return Err(KernelError::BadParams("activation range"));
        }
        Ok(())
    }
    pub fn input_len(&self) -> Option<usize> {
        dims_product(&[self.in_h, self.in_w, self.in_c])
    }
    pub fn output_len(&self) -> Option<usize> {
        dims_product(&[self.out_h, self.out_w, self.out_c])
    }
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

const SCRATCH_ALIGN: usize = 16;
const RQ_CHANNEL_BYTES: usize = 24;

fn align_up(n: usize) -> Option<usize> {
    Some(n.checked_add(SCRATCH_ALIGN - 1)? & !(SCRATCH_ALIGN - 1))
}

/// Scratch bytes of `eb_conv2d` (same value as the C function).
pub fn conv2d_scratch_bytes(p: &ConvParams) -> Option<usize> {
    if p.groups != 1 {
        return Some(0);
    }
    let k = dims_product(&[p.k_h, p.k_w, p.in_c])?;
    let rq = align_up(
        usize::try_from(p.out_c)
            .ok()?
            .checked_mul(RQ_CHANNEL_BYTES)?,
    )?;
    let gather = align_up(k)?;
    let cols = align_up(k.checked_mul(4)?.checked_add(16)?.checked_mul(2)?)?;
    let last_row = align_up(k.checked_add(3)?)?;
    rq.checked_add(gather)?
        .checked_add(cols)?
        .checked_add(last_row)
}

/// Scratch bytes of `eb_depthwise_conv2d` (same value as the C function).
pub fn depthwise_conv2d_scratch_bytes(p: &ConvParams) -> Option<usize> {
    let hp = p.in_h.checked_add(p.pad_top)?.checked_add(p.pad_bottom)?;
    let wp = p.in_w.checked_add(p.pad_left)?.checked_add(p.pad_right)?;
    let plane = align_up(dims_product(&[hp, wp])?.checked_mul(2)?)?;
    let rq = align_up(
        usize::try_from(p.out_c)
            .ok()?
            .checked_mul(RQ_CHANNEL_BYTES)?,
    )?;
    rq.checked_add(plane.checked_mul(4)?)
}

/// Scratch bytes of `eb_fully_connected` (same value as the C function).
pub fn fully_connected_scratch_bytes(p: &FcParams) -> Option<usize> {
    let rq = align_up(
        usize::try_from(p.out_features)
            .ok()?
            .checked_mul(RQ_CHANNEL_BYTES)?,
    )?;
    let col = align_up(usize::try_from(p.in_features).ok()?.checked_mul(2)?)?;
    rq.checked_add(col)
}

/// Conv2D (groups == 1) or grouped conv. Weights `[out_c][k_h][k_w][in_c/groups]`.
pub fn conv2d(
    p: &ConvParams,
    rq: &Requant,
    input: &[i8],
    weights: &[i8],
    bias: Option<&[i32]>,
    output: &mut [i8],
) -> Result<(), KernelError> {
    p.check_geometry()?;
    if p.groups <= 0 || p.in_c % p.groups != 0 || p.out_c % p.groups != 0 {
        return Err(KernelError::BadParams("groups must divide in_c and out_c"));
    }
    let cin_g = (p.in_c / p.groups) as usize;
    let cout_g = (p.out_c / p.groups) as usize;
    let (kh, kw) = (p.k_h as usize, p.k_w as usize);
    let out_c = p.out_c as usize;
    check_len("input", input.len(), p.input_len())?;
    check_len("output", output.len(), p.output_len())?;
    check_len(
        "weights",
        weights.len(),
        dims_product(&[p.out_c, p.k_h, p.k_w, cin_g as i32]),
    )?;
    if let Some(b) = bias {
        check_len("bias", b.len(), Some(out_c))?;
    }
    rq.check(out_c)?;
    let (ih, iw, ic_all) = (p.in_h as i64, p.in_w as i64, p.in_c as usize);
    for oy in 0..p.out_h as i64 {
        for ox in 0..p.out_w as i64 {
            for c in 0..out_c {
                let g = c / cout_g;
                let mut acc: i32 = bias.map_or(0, |b| b[c]);
                for ky in 0..kh {
                    let iy = oy * p.stride_h as i64 - p.pad_top as i64 + ky as i64 * p.dil_h as i64;
                    if iy < 0 || iy >= ih {
                        continue;
                    }
                    for kx in 0..kw {
                        let ix =
                            ox * p.stride_w as i64 - p.pad_left as i64 + kx as i64 * p.dil_w as i64;
                        if ix < 0 || ix >= iw {
                            continue;
                        }
                        let xb = (iy as usize * iw as usize + ix as usize) * ic_all + g * cin_g;
                        let wb = ((c * kh + ky) * kw + kx) * cin_g;
                        for ic in 0..cin_g {
                            let prod = weights[wb + ic] as i32 * (input[xb + ic] as i32 - p.in_zp);
                            acc = acc.wrapping_add(prod);
                        }
                    }
                }
                let (m, s) = rq.get(c);
                let o = (oy as usize * p.out_w as usize + ox as usize) * out_c + c;
                output[o] = requantize(acc, m, s, p.out_zp, p.act_min, p.act_max) as i8;
            }
        }
    }
    Ok(())
}

/// DepthwiseConv2D. Weights `[k_h][k_w][out_c]`; output channel c reads input
/// channel `c / depth_mult`.
pub fn depthwise_conv2d(
    p: &ConvParams,
    rq: &Requant,
    input: &[i8],
    weights: &[i8],
    bias: Option<&[i32]>,
    output: &mut [i8],
) -> Result<(), KernelError> {
    p.check_geometry()?;
    if p.depth_mult <= 0 || p.in_c.checked_mul(p.depth_mult) != Some(p.out_c) {
        return Err(KernelError::BadParams("out_c must be in_c * depth_mult"));
    }
    let out_c = p.out_c as usize;
    let (kh, kw) = (p.k_h as usize, p.k_w as usize);
    check_len("input", input.len(), p.input_len())?;
    check_len("output", output.len(), p.output_len())?;
    check_len(
        "weights",
        weights.len(),
        dims_product(&[p.k_h, p.k_w, p.out_c]),
    )?;
    if let Some(b) = bias {
        check_len("bias", b.len(), Some(out_c))?;
    }
    rq.check(out_c)?;
    let (ih, iw, in_c) = (p.in_h as i64, p.in_w as i64, p.in_c as usize);
    let dm = p.depth_mult as usize;
    for oy in 0..p.out_h as i64 {
        for ox in 0..p.out_w as i64 {
            for c in 0..out_c {
                let ic = c / dm;
                let mut acc: i32 = bias.map_or(0, |b| b[c]);
                for ky in 0..kh {
                    let iy = oy * p.stride_h as i64 - p.pad_top as i64 + ky as i64 * p.dil_h as i64;
                    if iy < 0 || iy >= ih {
                        continue;
                    }
                    for kx in 0..kw {
                        let ix =
                            ox * p.stride_w as i64 - p.pad_left as i64 + kx as i64 * p.dil_w as i64;
                        if ix < 0 || ix >= iw {
                            continue;
                        }
                        let x = input[(iy as usize * iw as usize + ix as usize) * in_c + ic] as i32;
                        let w = weights[(ky * kw + kx) * out_c + c] as i32;
                        acc = acc.wrapping_add(w * (x - p.in_zp));
                    }
                }
                let (m, s) = rq.get(c);
                let o = (oy as usize * p.out_w as usize + ox as usize) * out_c + c;
                output[o] = requantize(acc, m, s, p.out_zp, p.act_min, p.act_max) as i8;
            }
        }
    }
    Ok(())
}

/// FullyConnected parameters (mirrors `eb_fc_params`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FcParams {
    pub batches: i32,
    pub in_features: i32,
    pub out_features: i32,
    pub in_zp: i32,
    pub out_zp: i32,
    pub act_min: i32,
    pub act_max: i32,
}

/// FullyConnected: `acc[o] = bias[o] + sum_i w[o][i] (x[i] - zp_in)`.
pub fn fully_connected(
    p: &FcParams,
    rq: &Requant,
    input: &[i8],
    weights: &[i8],
    bias: Option<&[i32]>,
    output: &mut [i8],
) -> Result<(), KernelError> {
    if p.batches <= 0 || p.in_features <= 0 || p.out_features <= 0 || !act_ok(p.act_min, p.act_max)
    {
        return Err(KernelError::BadParams("fc params"));
    }
    let (nb, ni, no) = (
        p.batches as usize,
        p.in_features as usize,
        p.out_features as usize,
    );
    check_len(
        "input",
        input.len(),
        dims_product(&[p.batches, p.in_features]),
    )?;
    check_len(
        "output",
        output.len(),
        dims_product(&[p.batches, p.out_features]),
    )?;
    check_len(
        "weights",
        weights.len(),
        dims_product(&[p.out_features, p.in_features]),
    )?;
    if let Some(b) = bias {
        check_len("bias", b.len(), Some(no))?;
    }
    rq.check(no)?;
    for b in 0..nb {
        let x = &input[b * ni..(b + 1) * ni];
        for o in 0..no {
            let w = &weights[o * ni..(o + 1) * ni];
            let mut acc: i32 = bias.map_or(0, |bb| bb[o]);
            for i in 0..ni {
                acc = acc.wrapping_add(w[i] as i32 * (x[i] as i32 - p.in_zp));
            }
            let (m, s) = rq.get(o);
            output[b * no + o] = requantize(acc, m, s, p.out_zp, p.act_min, p.act_max) as i8;
        }
    }
    Ok(())
}

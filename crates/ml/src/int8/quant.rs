//! Integer requantization arithmetic of the int8 arithmetic (SPEC.md, "int8 arithmetic") and the
//! build-time constant builders: `quantize_multiplier` (TFLite's
//! QuantizeMultiplier), the fused-activation clamp range, the Add/Mul/Concat
//! multiplier sets, the softmax exp table and the generic 256-entry unary
//! table.  The integer functions are the int8 arithmetic's reference code written
//! literally; wherever that code would overflow an `i32` (`x * (1 << left)`,
//! `MBQM(..) + zp`), the result wraps (two's complement), as in the C runtime.
//! Table builders use `libm` so that tables are identical on every host.

/// `SaturatingRoundingDoublingHighMul` of the int8 arithmetic.
pub fn srdhm(a: i32, b: i32) -> i32 {
    if a == b && a == i32::MIN {
        return i32::MAX;
    }
    let ab = (a as i64) * (b as i64);
    let nudge: i64 = if ab >= 0 { 1 << 30 } else { 1 - (1 << 30) };
    // Rust's `/` on i64 truncates toward zero like C's.
    ((ab + nudge) / (1i64 << 31)) as i32
}

/// `RoundingDivideByPOT` of the int8 arithmetic (`exponent` in 0..=31).
pub fn rdbp(x: i32, exponent: i32) -> i32 {
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + if x < 0 { 1 } else { 0 };
    (x >> exponent) + if remainder > threshold { 1 } else { 0 }
}

/// `MultiplyByQuantizedMultiplier(x, M, S)` of the int8 arithmetic.
pub fn mbqm(x: i32, mult: i32, shift: i32) -> i32 {
    let left = if shift > 0 { shift } else { 0 };
    let right = if shift > 0 { 0 } else { -shift };
    rdbp(srdhm(x.wrapping_shl(left as u32), mult), right)
}

/// `clamp(MBQM(acc, M, S) + zp, act_min, act_max)`.
pub fn requantize(acc: i32, mult: i32, shift: i32, zp: i32, act_min: i32, act_max: i32) -> i32 {
    mbqm(acc, mult, shift)
        .wrapping_add(zp)
        .clamp(act_min, act_max)
}

/// Splits a finite non-zero `x` into `(q, e)` with `x = q * 2^e`,
/// `0.5 <= |q| < 1` (C's `frexp`).
fn frexp(x: f64) -> (f64, i32) {
    if x == 0.0 || !x.is_finite() {
        return (x, 0);
    }
    let bits = x.to_bits();
    let exp_bits = ((bits >> 52) & 0x7ff) as i32;
    if exp_bits == 0 {
        // subnormal: scale into the normal range first
        let (q, e) = frexp(x * 2f64.powi(64));
        return (q, e - 64);
    }
    let e = exp_bits - 1022;
    let q_bits = (bits & !(0x7ffu64 << 52)) | (1022u64 << 52);
    (f64::from_bits(q_bits), e)
}

/// A scale as the float32 a `.tflite` file stores (SPEC.md, "int8 arithmetic"): every scale
/// of an int8 model is a float32 value, so that the multipliers computed from them in double
/// precision are the ones TFLite computes from its file.
pub fn as_f32(scale: f64) -> f64 {
    scale as f32 as f64
}

/// The smallest float32 at or above `scale`.
fn as_f32_up(scale: f64) -> f64 {
    let s = scale as f32;
    if (s as f64) < scale {
        s.next_up() as f64
    } else {
        s as f64
    }
}

/// The largest |bias| in units of its scale: 2^30, half of int32, so that adding the
/// accumulated products cannot overflow on any layer of the sizes the planner accepts.
pub const BIAS_LIMIT: f64 = (1u64 << 30) as f64;

/// Symmetric int8 of `values` at one scale, `max |v| / 127` (1 for all zeros): values in
/// −127..=127.
pub fn symmetric(values: &[f32]) -> (Vec<i8>, f64) {
    let max = values.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    let scale = if max > 0.0 { as_f32(max / 127.0) } else { 1.0 };
    (quantize_symmetric(values, scale), scale)
}

fn quantize_symmetric(values: &[f32], scale: f64) -> Vec<i8> {
    values
        .iter()
        .map(|&v| ((v as f64) / scale).round().clamp(-127.0, 127.0) as i8)
        .collect()
}

/// Weights `w`, viewed `[out, k]`, per output channel symmetric int8 (SPEC.md, "int8
/// arithmetic"), and their biases (one per channel) as int32 at input × weight scale.
///
/// A channel's scale is `max |w| / 127`, raised where the bias would not fit `BIAS_LIMIT`
/// at it (a channel whose weights are all but zero, as in a pruned channel): then the
/// smallest scale at which it fits, as TFLite's converter adjusts weight scales for biases.
/// Returns the int8 weights, the scales and the int32 biases; `Err(channel)` for a bias
/// that is not finite.
pub fn per_channel(
    w: &[f32],
    out: usize,
    bias: Option<&[f32]>,
    s_in: f64,
) -> Result<(Vec<i8>, Vec<f64>, Vec<i32>), usize> {
    let k = (w.len() / out.max(1)).max(1);
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(out);
    let mut biases = Vec::with_capacity(out);
    for (c, row) in w.chunks(k).enumerate() {
        let max = row.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
        let mut s = if max > 0.0 { as_f32(max / 127.0) } else { 1.0 };
        if let Some(b) = bias {
            let b = b.get(c).copied().unwrap_or(0.0) as f64;
            if !b.is_finite() {
                return Err(c);
            }
            if (b / (s_in * s)).abs() > BIAS_LIMIT {
                s = as_f32_up(b.abs() / (s_in * BIAS_LIMIT));
            }
            biases.push((b / (s_in * s)).round().clamp(-BIAS_LIMIT, BIAS_LIMIT) as i32);
        }
        scales.push(s);
        q.extend(quantize_symmetric(row, s));
    }
    Ok((q, scales, biases))
}

/// TFLite's `QuantizeMultiplier`: real multiplier `m` -> `(M, S)` with
/// `m ~= M * 2^(S - 31)`, `M` in `[2^30, 2^31)` (or 0).  Exactly the int8 arithmetic:
/// `q = frexp(m, &S); M = round(q * 2^31)` (half away from zero); `M == 2^31`
/// -> `M /= 2, S += 1`; `S < -31` -> `(0, 0)`; `m == 0` -> `(0, 0)`.
/// Non-finite `m` gives `(0, 0)`.
pub fn quantize_multiplier(m: f64) -> (i32, i32) {
    if m == 0.0 || !m.is_finite() {
        return (0, 0);
    }
    let (q, mut shift) = frexp(m);
    let mut q_fixed = (q * (1i64 << 31) as f64).round() as i64;
    if q_fixed == (1i64 << 31) {
        q_fixed /= 2;
        shift += 1;
    }
    if shift < -31 {
        shift = 0;
        q_fixed = 0;
    }
    (q_fixed as i32, shift)
}

/// Quantizes a real value `v` to the int8 grid of (scale, zp), clamped.
pub fn quantize_value(v: f64, scale: f64, zp: i32) -> i32 {
    let q = (v / scale).round() + zp as f64;
    q.clamp(-128.0, 127.0) as i32
}

/// Fused activation of a conv/fc/add output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    None,
    Relu,
    /// Clip to the real interval [lo, hi] (ReLU6 is `Clip(0, 6)`).
    Clip(f64, f64),
}

/// `(act_min, act_max)` of the int8 arithmetic for an output with (scale, zp).
pub fn activation_range(act: Activation, scale: f64, zp: i32) -> (i32, i32) {
    match act {
        Activation::None => (-128, 127),
        Activation::Relu => (zp.max(-128), 127),
        Activation::Clip(lo, hi) => {
            let q = |v: f64| (zp as f64 + (v / scale).round()).clamp(-128.0, 127.0) as i32;
            (q(lo), q(hi))
        }
    }
}

/// Per-channel `(M, S)` for a conv / fc output: `m[c] = s_in * s_w[c] / s_out`.
pub fn conv_multipliers(s_in: f64, s_w: &[f64], s_out: f64) -> (Vec<i32>, Vec<i32>) {
    s_w.iter()
        .map(|&sw| quantize_multiplier(s_in * sw / s_out))
        .unzip()
}

/// The constants of the int8 arithmetic's Add (each multiplier as `(M, S)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddMultipliers {
    pub left_shift: i32,
    pub in1: (i32, i32),
    pub in2: (i32, i32),
    pub out: (i32, i32),
}

/// Multipliers of the int8 arithmetic's Add: `left_shift = 20`, `twice_max =
/// 2 max(s1, s2)`, `m1 = s1 / twice_max`, `m2 = s2 / twice_max`,
/// `mo = twice_max / (2^20 s_out)`.
pub fn add_multipliers(s1: f64, s2: f64, s_out: f64) -> AddMultipliers {
    let left_shift = 20;
    let twice_max = 2.0 * s1.max(s2);
    AddMultipliers {
        left_shift,
        in1: quantize_multiplier(s1 / twice_max),
        in2: quantize_multiplier(s2 / twice_max),
        out: quantize_multiplier(twice_max / ((1i64 << left_shift) as f64 * s_out)),
    }
}

/// Multiplier of the int8 arithmetic's Mul: `m = s1 s2 / s_out`.
pub fn mul_multiplier(s1: f64, s2: f64, s_out: f64) -> (i32, i32) {
    quantize_multiplier(s1 * s2 / s_out)
}

/// Softmax table of the int8 arithmetic: `T[d] = round(2^24 exp(-s_in d))`.
pub fn softmax_table(s_in: f64) -> [u32; 256] {
    let mut t = [0u32; 256];
    for (d, e) in t.iter_mut().enumerate() {
        let v = (16777216.0 * libm::exp(-s_in * d as f64)).round();
        *e = v.clamp(0.0, u32::MAX as f64) as u32;
    }
    t
}

/// Generic unary table: entry `q + 128` holds
/// `clamp(round(f(s_in (q - zp_in)) / s_out) + zp_out, -128, 127)`.
/// A NaN result maps to `zp_out` (real 0).
pub fn unary_table<F: Fn(f64) -> f64>(
    f: F,
    s_in: f64,
    zp_in: i32,
    s_out: f64,
    zp_out: i32,
) -> [i8; 256] {
    let mut t = [0i8; 256];
    for (i, e) in t.iter_mut().enumerate() {
        let q = i as i32 - 128;
        let y = f(s_in * (q - zp_in) as f64);
        let v = if y.is_nan() {
            zp_out as f64
        } else {
            (y / s_out).round() + zp_out as f64
        };
        *e = v.clamp(-128.0, 127.0) as i8;
    }
    t
}

/// Deterministic activation functions (libm) for `unary_table`.
pub mod funcs {
    pub fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + libm::exp(-x))
    }
    pub fn tanh(x: f64) -> f64 {
        libm::tanh(x)
    }
    pub fn hard_sigmoid(x: f64) -> f64 {
        (x / 6.0 + 0.5).clamp(0.0, 1.0)
    }
    pub fn hard_swish(x: f64) -> f64 {
        x * hard_sigmoid(x)
    }
    pub fn silu(x: f64) -> f64 {
        x * sigmoid(x)
    }
    pub fn gelu(x: f64) -> f64 {
        0.5 * x * (1.0 + libm::erf(x / core::f64::consts::SQRT_2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_weights_and_biases() {
        // Channel 0: ordinary; channel 1: weights all but zero under a real bias (a pruned
        // channel of MobileNet); channel 2: all zero.
        let w = [1.27f32, -0.5, 1e-33, -1e-33, 0.0, 0.0];
        let b = [0.25f32, 0.146, 0.0];
        let (q, s, qb) = per_channel(&w, 3, Some(&b), 0.5).unwrap();
        assert_eq!(&q[..2], &[127, -50]);
        assert!((s[0] - 0.01).abs() < 1e-7);
        assert_eq!(qb[0], 50);
        // Raised so that the bias fits: |b| / (s_in · s) = 2^30 exactly.
        assert!((s[1] - 0.146f32 as f64 / (0.5 * BIAS_LIMIT)).abs() < 1e-20);
        assert_eq!(qb[1], 1 << 30);
        assert_eq!(&q[2..4], &[0, 0]);
        assert_eq!((s[2], qb[2]), (1.0, 0));
        assert_eq!(per_channel(&w, 3, Some(&[0.0, f32::NAN, 0.0]), 0.5), Err(1));
        assert_eq!(symmetric(&[0.0, 254.0, -64.0]), (vec![0, 127, -32], 2.0));
    }

    #[test]
    fn quantize_multiplier_known_values() {
        assert_eq!(quantize_multiplier(0.0), (0, 0));
        assert_eq!(quantize_multiplier(0.5), (1 << 30, 0));
        assert_eq!(quantize_multiplier(1.0), (1 << 30, 1));
        assert_eq!(quantize_multiplier(0.25), (1 << 30, -1));
        // largest q below 1 rounds up to 2^31 -> halved, shift + 1
        assert_eq!(quantize_multiplier(1.0 - 1e-12), (1 << 30, 1));
        assert_eq!(quantize_multiplier(1e-12), (0, 0));
        let (m, s) = quantize_multiplier(0.0123);
        assert!(m >= 1 << 30);
        let back = m as f64 * 2f64.powi(s - 31);
        assert!((back - 0.0123).abs() < 1e-9);
    }

    #[test]
    fn mbqm_reference_values() {
        // 100 * 0.5 = 50
        assert_eq!(mbqm(100, 1 << 30, 0), 50);
        // -3 * 0.5 = -1.5: SRDHM gives -1 (half up at the doubling step,
        // here exact), RDBP exponent 0 -> -1... check against direct formula
        assert_eq!(mbqm(-3, 1 << 30, 0), -1);
        assert_eq!(rdbp(-3, 1), -2);
        assert_eq!(rdbp(3, 1), 2);
        assert_eq!(rdbp(5, 2), 1);
        assert_eq!(srdhm(i32::MIN, i32::MIN), i32::MAX);
    }

    #[test]
    fn activation_ranges() {
        assert_eq!(activation_range(Activation::None, 0.1, 3), (-128, 127));
        assert_eq!(activation_range(Activation::Relu, 0.1, -128), (-128, 127));
        assert_eq!(activation_range(Activation::Relu, 0.1, 5), (5, 127));
        assert_eq!(
            activation_range(Activation::Clip(0.0, 6.0), 0.05, -128),
            (-128, -8)
        );
    }

    #[test]
    fn softmax_table_head() {
        let t = softmax_table(0.1);
        assert_eq!(t[0], 1 << 24);
        assert!(t[1] < t[0] && t[255] < t[1]);
    }
}

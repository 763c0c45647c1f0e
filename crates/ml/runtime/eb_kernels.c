/*
 * eb_kernels.c -- requantization primitives and the light kernels:
 * pooling, Add, Mul, Softmax, table lookup, Concat, Transpose, Pad
 * (SPEC.md, "int8 arithmetic").  One code path for every target:
 * these kernels are memory-bound, not MAC-bound.
 */
#include "eb_internal.h"

/* ------------------------------------------------------------------------ */
/* Requantization (SPEC.md, "int8 arithmetic"), reference form                      */
/* ------------------------------------------------------------------------ */

static int32_t eb_srdhm(int32_t a, int32_t b)
{
    int64_t ab;
    int64_t nudge;
    if (a == b && a == INT32_MIN) {
        return INT32_MAX;
    }
    ab = (int64_t)a * (int64_t)b;
    nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

static int32_t eb_rdbp(int32_t x, int32_t exponent)
{
    const int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

int32_t eb_mbqm(int32_t x, int32_t mult, int32_t shift)
{
    const int32_t left = shift > 0 ? shift : 0;
    const int32_t right = shift > 0 ? 0 : -shift;
    return eb_rdbp(eb_srdhm(eb_wrap_shl(x, left), mult), right);
}

int32_t eb_requantize(int32_t acc, int32_t mult, int32_t shift, int32_t zp,
                      int32_t act_min, int32_t act_max)
{
    return eb_clamp(eb_wrap_add(eb_mbqm(acc, mult, shift), zp), act_min, act_max);
}

int eb_rq_prepare(const eb_requant *rq, int32_t n_out, eb_rq_channel *tab,
                  int32_t zp_out, int *all_folded)
{
    const int32_t step = rq->n == 1 ? 0 : 1;
    const int zp_ok = zp_out >= -128 && zp_out <= 127;
    const int32_t *mp = rq->mult, *sp = rq->shift;
    int fast = 1, folded = 1;
    int32_t c;
    for (c = 0; c < n_out; ++c, mp += step, sp += step) {
        const int32_t m = *mp;
        int32_t s = *sp;
        eb_rq_channel *t = &tab[c];
        t->mult = m;
        t->bias = 0;
        if (m == 0 && s >= 0) {
            /* a channel whose weights are all zero: MBQM = 0 at every shift, and so are the
             * closed forms with M = 0 at any exponent from 2 up */
            s = -2;
        }
        if (s < 0 && s >= -31 && m >= 0) {
            /* B = 2^30 + 2^(30+e) as two words; the folded form (eb_rq2_make) for
             * 2 <= e <= 24 */
            const int32_t e = -s;
            t->b_lo = e == 1 ? 0xC0000000u : 0x40000000u;
            t->b_hi = e == 1 ? 0 : (int32_t)(1u << (e - 2));
            t->sh = e - 1;
            if (e >= 2 && e <= 24 && zp_ok) {
                t->h2 = (int32_t)((1 << (e - 2)) + zp_out * (1 << (e - 1)));
            } else {
                t->h2 = 0;
                folded = 0;
            }
        } else {
            t->b_lo = 0;
            t->b_hi = 0;
            t->sh = 0;
            t->h2 = 0;
            fast = 0;
            folded = 0;
        }
    }
    if (all_folded != NULL) {
        *all_folded = fast && folded;
    }
    return fast;
}

int eb_kernels_dsp_path(void)
{
    return EB_DSP;
}

/* ------------------------------------------------------------------------ */
/* Broadcasting helpers                                                      */
/* ------------------------------------------------------------------------ */

/* Element strides of `shape` for iteration over `out` (0 where broadcast).
 * Returns 0 if the shapes are not broadcast-compatible. */
static int eb_bcast_strides(const int32_t *shape, const int32_t *out, int32_t *st)
{
    int32_t d, s = 1;
    for (d = EB_MAX_DIMS - 1; d >= 0; --d) {
        if (shape[d] <= 0 || out[d] <= 0) {
            return 0;
        }
        if (shape[d] == out[d]) {
            st[d] = s;
        } else if (shape[d] == 1) {
            st[d] = 0;
        } else {
            return 0;
        }
        s *= shape[d];
    }
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Add / Mul                                                                 */
/* ------------------------------------------------------------------------ */

size_t eb_add_scratch_bytes(const eb_add_params *p)
{
    (void)p;
    return 0;
}

/* Input rescaling of Add, MBQM(x, M, S) for S <= 0 and M >= 0, in exact
 * 64-bit form (the derivation of eb_rq_fast; e == 0 is SRDHM alone):
 *   e == 0: (x*M + 2^30) >> 31
 *   e >= 1: hi32(x*M + 2^30 + 2^(30+e) - [x < 0] 2^31) >> (e - 1). */
typedef struct {
    int32_t m, e, sh;
    int64_t b;
} eb_add_in;

EB_INLINE int32_t eb_add_scale(int32_t x, const eb_add_in *c)
{
    int64_t t = (int64_t)x * (int64_t)c->m + c->b;
    if (c->e == 0) {
        return (int32_t)(t >> 31);
    }
    if (x < 0) {
        t -= (int64_t)1 << 31;
    }
    return (int32_t)(t >> 32) >> c->sh;
}

static void eb_add_in_make(int32_t m, int32_t shift, eb_add_in *c)
{
    c->m = m;
    c->e = -shift;
    c->sh = c->e > 0 ? c->e - 1 : 0;
    c->b = ((int64_t)1 << 30) + (c->e > 0 ? ((int64_t)1 << (30 + c->e)) : 0);
}

/* Add plan: fast when both input multipliers shift right (the usual case,
 * m1, m2 <= 0.5) and the output has the folded form. */
typedef struct {
    int fast;
    eb_add_in in1, in2;
    eb_rq2_const out;
} eb_add_plan;

EB_INLINE int8_t eb_add_one(const eb_add_params *p, const eb_add_plan *k, int32_t x1, int32_t x2)
{
    const int32_t a = eb_wrap_shl(x1 - p->in1_zp, p->left_shift);
    const int32_t b = eb_wrap_shl(x2 - p->in2_zp, p->left_shift);
    if (k->fast) {
        const int32_t sum = eb_wrap_add(eb_add_scale(a, &k->in1), eb_add_scale(b, &k->in2));
        return (int8_t)eb_clamp(eb_rq2_apply(sum, k->out.mult, k->out.h, k->out.sh),
                                p->act_min, p->act_max);
    }
    return (int8_t)eb_requantize(eb_wrap_add(eb_mbqm(a, p->in1_mult, p->in1_shift),
                                             eb_mbqm(b, p->in2_mult, p->in2_shift)),
                                 p->out_mult, p->out_shift, p->out_zp, p->act_min, p->act_max);
}

/* One innermost row of n elements (element strides sa, sb: 0 or 1). */
static void eb_add_row(const eb_add_params *p, const eb_add_plan *k, const int8_t *a,
                       int32_t sa, const int8_t *b, int32_t sb, int8_t *o, int32_t n)
{
    int32_t i;
    if (k->fast && sa == 1 && sb == 1) {
        const eb_add_in c1 = k->in1, c2 = k->in2;
        const eb_rq2_const q = k->out;
        const int32_t z1 = p->in1_zp, z2 = p->in2_zp, ls = p->left_shift;
        const int32_t lo = p->act_min, hi = p->act_max;
        for (i = 0; i < n; ++i) {
            const int32_t x1 = eb_add_scale(eb_wrap_shl(a[i] - z1, ls), &c1);
            const int32_t x2 = eb_add_scale(eb_wrap_shl(b[i] - z2, ls), &c2);
            o[i] = (int8_t)eb_clamp(eb_rq2_apply(eb_wrap_add(x1, x2), q.mult, q.h, q.sh), lo, hi);
        }
        return;
    }
    for (i = 0; i < n; ++i) {
        o[i] = eb_add_one(p, k, a[i * sa], b[i * sb]);
    }
}

int eb_add(const eb_add_params *p, const int8_t *in1, const int8_t *in2,
           int8_t *output)
{
    int32_t s1[EB_MAX_DIMS], s2[EB_MAX_DIMS];
    int32_t i0, i1, i2;
    int8_t *o = output;
    eb_add_plan k;
    if (p == NULL || in1 == NULL || in2 == NULL || output == NULL ||
        !eb_bcast_strides(p->in1_shape, p->out_shape, s1) ||
        !eb_bcast_strides(p->in2_shape, p->out_shape, s2) ||
        p->left_shift < 0 || p->left_shift > 30 || p->act_min < -128 ||
        p->act_max > 127 || p->act_min > p->act_max) {
        return EB_ERR_PARAM;
    }
    k.fast = p->in1_shift <= 0 && p->in1_shift >= -31 && p->in1_mult >= 0 &&
             p->in2_shift <= 0 && p->in2_shift >= -31 && p->in2_mult >= 0;
    eb_add_in_make(p->in1_mult, k.fast ? p->in1_shift : 0, &k.in1);
    eb_add_in_make(p->in2_mult, k.fast ? p->in2_shift : 0, &k.in2);
    k.fast = eb_rq2_make(p->out_mult, p->out_shift, p->out_zp, &k.out) && k.fast;
    for (i0 = 0; i0 < p->out_shape[0]; ++i0) {
        for (i1 = 0; i1 < p->out_shape[1]; ++i1) {
            for (i2 = 0; i2 < p->out_shape[2]; ++i2) {
                const int8_t *a = in1 + i0 * s1[0] + i1 * s1[1] + i2 * s1[2];
                const int8_t *b = in2 + i0 * s2[0] + i1 * s2[1] + i2 * s2[2];
                eb_add_row(p, &k, a, s1[3], b, s2[3], o, p->out_shape[3]);
                o += p->out_shape[3];
            }
        }
    }
    return EB_OK;
}

size_t eb_mul_scratch_bytes(const eb_mul_params *p)
{
    (void)p;
    return 0;
}

int eb_mul(const eb_mul_params *p, const int8_t *in1, const int8_t *in2,
           int8_t *output)
{
    int32_t s1[EB_MAX_DIMS], s2[EB_MAX_DIMS];
    int32_t i0, i1, i2, i3;
    int8_t *o = output;
    eb_rq2_const q;
    int folded;
    if (p == NULL || in1 == NULL || in2 == NULL || output == NULL ||
        !eb_bcast_strides(p->in1_shape, p->out_shape, s1) ||
        !eb_bcast_strides(p->in2_shape, p->out_shape, s2) ||
        p->act_min < -128 || p->act_max > 127 || p->act_min > p->act_max) {
        return EB_ERR_PARAM;
    }
    folded = eb_rq2_make(p->out_mult, p->out_shift, p->out_zp, &q);
    for (i0 = 0; i0 < p->out_shape[0]; ++i0) {
        for (i1 = 0; i1 < p->out_shape[1]; ++i1) {
            for (i2 = 0; i2 < p->out_shape[2]; ++i2) {
                const int8_t *a = in1 + i0 * s1[0] + i1 * s1[1] + i2 * s1[2];
                const int8_t *b = in2 + i0 * s2[0] + i1 * s2[1] + i2 * s2[2];
                for (i3 = 0; i3 < p->out_shape[3]; ++i3) {
                    const int32_t acc = (a[i3 * s1[3]] - p->in1_zp) * (b[i3 * s2[3]] - p->in2_zp);
                    *o++ = (int8_t)(folded ? eb_clamp(eb_rq2_apply(acc, q.mult, q.h, q.sh),
                                                      p->act_min, p->act_max)
                                           : eb_requantize(acc, p->out_mult, p->out_shift,
                                                           p->out_zp, p->act_min, p->act_max));
                }
            }
        }
    }
    return EB_OK;
}

/* ------------------------------------------------------------------------ */
/* Pooling                                                                   */
/* ------------------------------------------------------------------------ */

static int eb_pool_ok(const eb_pool_params *p)
{
    return p != NULL && p->channels > 0 &&
           p->out_h == eb_conv_out_dim(p->in_h, p->k_h, p->stride_h, 1, p->pad_top, p->pad_bottom) &&
           p->out_w == eb_conv_out_dim(p->in_w, p->k_w, p->stride_w, 1, p->pad_left, p->pad_right) &&
           p->out_h > 0 && p->out_w > 0 && p->act_min >= -128 && p->act_max <= 127 &&
           p->act_min <= p->act_max;
}

size_t eb_max_pool2d_scratch_bytes(const eb_pool_params *p)
{
    (void)p;
    return 0;
}

size_t eb_avg_pool2d_scratch_bytes(const eb_pool_params *p)
{
    (void)p;
    return 0;
}

int eb_max_pool2d(const eb_pool_params *p, const int8_t *input, int8_t *output)
{
    int32_t oy, ox, c, y, x;
    if (!eb_pool_ok(p) || input == NULL || output == NULL) {
        return EB_ERR_PARAM;
    }
    for (oy = 0; oy < p->out_h; ++oy) {
        const int32_t y0 = oy * p->stride_h - p->pad_top;
        const int32_t ya = EB_MAX(y0, 0), yb = EB_MIN(y0 + p->k_h, p->in_h);
        for (ox = 0; ox < p->out_w; ++ox) {
            const int32_t x0 = ox * p->stride_w - p->pad_left;
            const int32_t xa = EB_MAX(x0, 0), xb = EB_MIN(x0 + p->k_w, p->in_w);
            int8_t *o = output + ((size_t)oy * p->out_w + ox) * p->channels;
            for (c = 0; c < p->channels; ++c) {
                int32_t m = -128; /* a window always has >= 1 valid tap */
                for (y = ya; y < yb; ++y) {
                    for (x = xa; x < xb; ++x) {
                        const int32_t v = input[((size_t)y * p->in_w + x) * p->channels + c];
                        m = v > m ? v : m;
                    }
                }
                o[c] = (int8_t)eb_clamp(m, p->act_min, p->act_max);
            }
        }
    }
    return EB_OK;
}

/* The int8 arithmetic's rounding division of a tap sum by a tap count. */
EB_INLINE int32_t eb_round_div(int32_t acc, int32_t count)
{
    return acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
}

int eb_avg_pool2d(const eb_pool_params *p, const int8_t *input, int8_t *output)
{
    int32_t oy, ox, c, y, x;
    if (!eb_pool_ok(p) || input == NULL || output == NULL ||
        (p->count_include_pad != 0 && p->count_include_pad != 1)) {
        return EB_ERR_PARAM;
    }
    for (oy = 0; oy < p->out_h; ++oy) {
        const int32_t y0 = oy * p->stride_h - p->pad_top;
        const int32_t ya = EB_MAX(y0, 0), yb = EB_MIN(y0 + p->k_h, p->in_h);
        for (ox = 0; ox < p->out_w; ++ox) {
            const int32_t x0 = ox * p->stride_w - p->pad_left;
            const int32_t xa = EB_MAX(x0, 0), xb = EB_MIN(x0 + p->k_w, p->in_w);
            const int32_t valid = (yb - ya) * (xb - xa);
            const int32_t count = p->count_include_pad ? p->k_h * p->k_w : valid;
            const int32_t pad_add = p->count_include_pad ? (count - valid) * p->zp : 0;
            int8_t *o = output + ((size_t)oy * p->out_w + ox) * p->channels;
            for (c = 0; c < p->channels; ++c) {
                int32_t acc = pad_add;
                for (y = ya; y < yb; ++y) {
                    const int8_t *row = input + ((size_t)y * p->in_w) * p->channels + c;
                    for (x = xa; x < xb; ++x) {
                        acc += row[(size_t)x * p->channels];
                    }
                }
                o[c] = (int8_t)eb_clamp(eb_round_div(acc, count), p->act_min, p->act_max);
            }
        }
    }
    return EB_OK;
}

size_t eb_global_avg_pool_scratch_bytes(const eb_global_pool_params *p)
{
    (void)p;
    return 0;
}

int eb_global_avg_pool(const eb_global_pool_params *p, const int8_t *input,
                       int8_t *output)
{
    int32_t c, i;
    int32_t n;
    if (p == NULL || input == NULL || output == NULL || p->in_h <= 0 ||
        p->in_w <= 0 || p->channels <= 0 || p->act_min < -128 ||
        p->act_max > 127 || p->act_min > p->act_max) {
        return EB_ERR_PARAM;
    }
    n = p->in_h * p->in_w;
    for (c = 0; c < p->channels; ++c) {
        const int8_t *s = input + c;
        int32_t acc = 0;
        for (i = 0; i < n; ++i) {
            acc += s[(size_t)i * p->channels];
        }
        output[c] = (int8_t)eb_clamp(eb_round_div(acc, n), p->act_min, p->act_max);
    }
    return EB_OK;
}

/* ------------------------------------------------------------------------ */
/* Softmax and table lookup                                                  */
/* ------------------------------------------------------------------------ */

size_t eb_softmax_scratch_bytes(const eb_softmax_params *p)
{
    (void)p;
    return 0;
}

/* floor(n / d) for d > 0 and n < 512 d (a quotient of 9 bits): binary long
 * division, so that the firmware links no 64-bit division routine. */
static uint32_t eb_div_u9(uint64_t n, uint64_t d)
{
    uint32_t q = 0;
    int b;
    for (b = 8; b >= 0; --b) {
        if ((n >> b) >= d) {
            n -= d << b;
            q |= 1u << b;
        }
    }
    return q;
}

int eb_softmax(const eb_softmax_params *p, const uint32_t *table,
               const int8_t *input, int8_t *output)
{
    int32_t r, i;
    if (p == NULL || table == NULL || input == NULL || output == NULL ||
        p->rows <= 0 || p->cols <= 0) {
        return EB_ERR_PARAM;
    }
    for (r = 0; r < p->rows; ++r) {
        const int8_t *x = input + (size_t)r * p->cols;
        int8_t *o = output + (size_t)r * p->cols;
        int32_t mx = -128;
        uint64_t sum = 0;
        for (i = 0; i < p->cols; ++i) {
            mx = x[i] > mx ? x[i] : mx;
        }
        for (i = 0; i < p->cols; ++i) {
            sum += table[mx - x[i]];
        }
        /* sum >= table[0] > 0 for any sane table; guard anyway */
        if (sum == 0) {
            return EB_ERR_PARAM;
        }
        for (i = 0; i < p->cols; ++i) {
            const uint64_t e = table[mx - x[i]];
            /* e <= sum, so the quotient is at most 256 */
            const int64_t q = (int64_t)eb_div_u9(e * 256u + sum / 2u, sum) - 128;
            o[i] = (int8_t)(q < -128 ? -128 : (q > 127 ? 127 : q));
        }
    }
    return EB_OK;
}

size_t eb_lut_scratch_bytes(int32_t n)
{
    (void)n;
    return 0;
}

int eb_lut(int32_t n, const int8_t *table, const int8_t *input, int8_t *output)
{
    int32_t i;
    if (n < 0 || table == NULL || input == NULL || output == NULL) {
        return EB_ERR_PARAM;
    }
    for (i = 0; i < n; ++i) {
        output[i] = table[input[i] + 128];
    }
    return EB_OK;
}

/* ------------------------------------------------------------------------ */
/* Concat, Transpose, Pad                                                    */
/* ------------------------------------------------------------------------ */

size_t eb_concat_scratch_bytes(const eb_concat_params *p)
{
    (void)p;
    return 0;
}

int eb_concat(const eb_concat_params *p, const eb_concat_input *inputs,
              int8_t *output)
{
    int32_t o, i, k;
    int8_t *dst = output;
    if (p == NULL || inputs == NULL || output == NULL || p->outer < 0 ||
        p->inner < 0 || p->n_inputs <= 0) {
        return EB_ERR_PARAM;
    }
    for (i = 0; i < p->n_inputs; ++i) {
        if (inputs[i].data == NULL || inputs[i].axis_size < 0) {
            return EB_ERR_PARAM;
        }
    }
    for (o = 0; o < p->outer; ++o) {
        for (i = 0; i < p->n_inputs; ++i) {
            const eb_concat_input *in = &inputs[i];
            const size_t chunk = (size_t)in->axis_size * (size_t)p->inner;
            const int8_t *src = in->data + (size_t)o * chunk;
            if (!in->requant) {
                memcpy(dst, src, chunk);
            } else {
                for (k = 0; k < (int32_t)chunk; ++k) {
                    dst[k] = (int8_t)eb_requantize(src[k] - in->zp, in->mult, in->shift,
                                                   p->out_zp, -128, 127);
                }
            }
            dst += chunk;
        }
    }
    return EB_OK;
}

size_t eb_transpose_scratch_bytes(const eb_transpose_params *p)
{
    (void)p;
    return 0;
}

int eb_transpose(const eb_transpose_params *p, const int8_t *input,
                 int8_t *output)
{
    int32_t in_st[EB_MAX_DIMS], st[EB_MAX_DIMS], os[EB_MAX_DIMS];
    int32_t d, seen = 0, i0, i1, i2, i3;
    int8_t *o = output;
    if (p == NULL || input == NULL || output == NULL) {
        return EB_ERR_PARAM;
    }
    for (d = 0; d < EB_MAX_DIMS; ++d) {
        if (p->perm[d] < 0 || p->perm[d] >= EB_MAX_DIMS || p->in_shape[d] <= 0 ||
            (seen & (1 << p->perm[d]))) {
            return EB_ERR_PARAM;
        }
        seen |= 1 << p->perm[d];
    }
    in_st[EB_MAX_DIMS - 1] = 1;
    for (d = EB_MAX_DIMS - 2; d >= 0; --d) {
        in_st[d] = in_st[d + 1] * p->in_shape[d + 1];
    }
    for (d = 0; d < EB_MAX_DIMS; ++d) {
        os[d] = p->in_shape[p->perm[d]];
        st[d] = in_st[p->perm[d]];
    }
    for (i0 = 0; i0 < os[0]; ++i0) {
        for (i1 = 0; i1 < os[1]; ++i1) {
            for (i2 = 0; i2 < os[2]; ++i2) {
                const int8_t *s = input + i0 * st[0] + i1 * st[1] + i2 * st[2];
                for (i3 = 0; i3 < os[3]; ++i3) {
                    *o++ = s[i3 * st[3]];
                }
            }
        }
    }
    return EB_OK;
}

size_t eb_pad_scratch_bytes(const eb_pad_params *p)
{
    (void)p;
    return 0;
}

int eb_pad(const eb_pad_params *p, const int8_t *input, int8_t *output)
{
    int32_t os[EB_MAX_DIMS], ost[EB_MAX_DIMS];
    int32_t d, i0, i1, i2;
    size_t total = 1;
    const int8_t *s = input;
    if (p == NULL || input == NULL || output == NULL || p->value < -128 || p->value > 127) {
        return EB_ERR_PARAM;
    }
    for (d = 0; d < EB_MAX_DIMS; ++d) {
        if (p->in_shape[d] <= 0 || p->pad_before[d] < 0 || p->pad_after[d] < 0) {
            return EB_ERR_PARAM;
        }
        os[d] = p->pad_before[d] + p->in_shape[d] + p->pad_after[d];
        total *= (size_t)os[d];
    }
    ost[EB_MAX_DIMS - 1] = 1;
    for (d = EB_MAX_DIMS - 2; d >= 0; --d) {
        ost[d] = ost[d + 1] * os[d + 1];
    }
    memset(output, p->value, total);
    for (i0 = 0; i0 < p->in_shape[0]; ++i0) {
        for (i1 = 0; i1 < p->in_shape[1]; ++i1) {
            for (i2 = 0; i2 < p->in_shape[2]; ++i2) {
                int8_t *dst = output + (size_t)(i0 + p->pad_before[0]) * ost[0] +
                              (size_t)(i1 + p->pad_before[1]) * ost[1] +
                              (size_t)(i2 + p->pad_before[2]) * ost[2] + p->pad_before[3];
                memcpy(dst, s, (size_t)p->in_shape[3]);
                s += p->in_shape[3];
            }
        }
    }
    return EB_OK;
}

/*
 * eb_conv.c -- the MAC-heavy kernels: Conv2D (plain and grouped),
 * DepthwiseConv2D and FullyConnected (SPEC.md, "int8 arithmetic").
 *
 * Two code paths give identical integers:
 *  - portable: the int8 arithmetic's formulas, literally (loops over valid taps,
 *    eb_requantize per output);
 *  - scratch (every build; DSP intrinsics, native or emulated): CMSIS-NN-style.
 *    Conv: im2col of output pixels into int16 (x - zp, padding 0) in the quad
 *    layouts described below; 1x1 stride-1 convs skip im2col (the column is
 *    the pixel).  With the Arm assembly, four pixels at a time run against
 *    one weight row at a time (eb_mm1x4_*_asm), and a 3-channel 3x3 window
 *    inside the input is read as words; the pixels left over, and every
 *    pixel on other builds, go two at a time through a 2x2 (2 channels x 2
 *    pixels) SMLAD block.
 *    Depthwise: up to 4 channels are spread into zero-point-padded int16
 *    planes, laid out as the input or transposed (eb_dwgeo), then each
 *    channel is convolved with its weights in registers (SMLAD on tap pairs;
 *    four outputs share their loads in the assembly, two in C).
 *    Requantization uses the exact closed forms of eb_internal.h (fast and
 *    folded) for the channels that allow them, else the int8 arithmetic code.
 *    With GCC (-O1 and up) on Arm the innermost loops are inline assembly
 *    (they need all 14 allocatable registers); elsewhere the same algorithm
 *    runs as C with intrinsics.  The tests run both: the host path against
 *    the reference kernels, the assembly on the emulated boards.
 *
 * Scratch layout (scratch path; the portable path needs none but the size
 * functions report the same number on every build so that a plan made on the
 * host is valid on any target):
 *  conv:      [rq table: out_c x 24 B][int8 gather: K B][4 columns: (4K + 16) x int16]
 *             [last weight row, zero-padded to a multiple of 4]
 *  depthwise: [rq table: out_c x 24 B][4 planes: Hp x Wp x int16 each]
 *  fc:        [rq table: out x 24 B][col: in_features x int16]
 */
#include "eb_internal.h"

/* ------------------------------------------------------------------------ */
/* Parameter checks and sizes                                                */
/* ------------------------------------------------------------------------ */

int32_t eb_conv_out_dim(int32_t in, int32_t k, int32_t stride, int32_t dil,
                        int32_t pad0, int32_t pad1)
{
    int32_t span;
    if (in <= 0 || k <= 0 || stride <= 0 || dil <= 0 || pad0 < 0 || pad1 < 0) {
        return 0;
    }
    span = in + pad0 + pad1 - dil * (k - 1) - 1;
    if (span < 0) {
        return 0;
    }
    return span / stride + 1;
}

static int eb_act_ok(int32_t lo, int32_t hi)
{
    return lo >= -128 && hi <= 127 && lo <= hi;
}

/* Shared geometry check for conv-like kernels. */
static int eb_conv_geom_ok(const eb_conv_params *p)
{
    if (p->in_h <= 0 || p->in_w <= 0 || p->in_c <= 0 || p->out_c <= 0) {
        return 0;
    }
    if (p->out_h != eb_conv_out_dim(p->in_h, p->k_h, p->stride_h, p->dil_h,
                                    p->pad_top, p->pad_bottom) ||
        p->out_w != eb_conv_out_dim(p->in_w, p->k_w, p->stride_w, p->dil_w,
                                    p->pad_left, p->pad_right) ||
        p->out_h <= 0 || p->out_w <= 0) {
        return 0;
    }
    return eb_act_ok(p->act_min, p->act_max);
}

static int eb_rq_ok(const eb_requant *rq, int32_t n_out)
{
    return rq != NULL && rq->mult != NULL && rq->shift != NULL &&
           (rq->n == 1 || rq->n == n_out);
}

static size_t eb_rq_table_bytes(int32_t n_out)
{
    return EB_ALIGN_UP((size_t)n_out * sizeof(eb_rq_channel));
}

size_t eb_conv2d_scratch_bytes(const eb_conv_params *p)
{
    size_t k;
    if (p->groups != 1) {
        return 0; /* grouped conv runs the portable loops on every build */
    }
    k = (size_t)p->k_h * (size_t)p->k_w * (size_t)p->in_c;
    return eb_rq_table_bytes(p->out_c) + EB_ALIGN_UP(k) +
           EB_ALIGN_UP((4 * k + 16) * sizeof(int16_t)) + EB_ALIGN_UP(k + 3);
}

static size_t eb_dw_plane_elems(const eb_conv_params *p)
{
    return (size_t)(p->in_h + p->pad_top + p->pad_bottom) *
           (size_t)(p->in_w + p->pad_left + p->pad_right);
}

size_t eb_depthwise_conv2d_scratch_bytes(const eb_conv_params *p)
{
    return eb_rq_table_bytes(p->out_c) +
           4 * EB_ALIGN_UP(eb_dw_plane_elems(p) * sizeof(int16_t));
}

size_t eb_fully_connected_scratch_bytes(const eb_fc_params *p)
{
    return eb_rq_table_bytes(p->out_features) +
           EB_ALIGN_UP((size_t)p->in_features * sizeof(int16_t));
}

/* ------------------------------------------------------------------------ */
/* Portable paths: the int8 arithmetic, literally                                   */
/* ------------------------------------------------------------------------ */

static void eb_conv2d_portable(const eb_conv_params *p, const eb_requant *rq,
                               const int8_t *in, const int8_t *w,
                               const int32_t *bias, int8_t *out)
{
    const int32_t cin_g = p->in_c / p->groups;
    const int32_t cout_g = p->out_c / p->groups;
    int32_t oy, ox, c, ky, kx, ic;
    for (oy = 0; oy < p->out_h; ++oy) {
        for (ox = 0; ox < p->out_w; ++ox) {
            for (c = 0; c < p->out_c; ++c) {
                const int32_t g = c / cout_g;
                const int32_t qi = rq->n == 1 ? 0 : c;
                int32_t acc = bias ? bias[c] : 0;
                for (ky = 0; ky < p->k_h; ++ky) {
                    const int32_t iy = oy * p->stride_h - p->pad_top + ky * p->dil_h;
                    if (iy < 0 || iy >= p->in_h) {
                        continue;
                    }
                    for (kx = 0; kx < p->k_w; ++kx) {
                        const int32_t ix = ox * p->stride_w - p->pad_left + kx * p->dil_w;
                        const int8_t *xs;
                        const int8_t *ws;
                        if (ix < 0 || ix >= p->in_w) {
                            continue;
                        }
                        xs = in + ((size_t)iy * p->in_w + ix) * p->in_c + (size_t)g * cin_g;
                        ws = w + (((size_t)c * p->k_h + ky) * p->k_w + kx) * cin_g;
                        for (ic = 0; ic < cin_g; ++ic) {
                            acc += (int32_t)ws[ic] * ((int32_t)xs[ic] - p->in_zp);
                        }
                    }
                }
                out[((size_t)oy * p->out_w + ox) * p->out_c + c] = (int8_t)eb_requantize(
                    acc, rq->mult[qi], rq->shift[qi], p->out_zp, p->act_min, p->act_max);
            }
        }
    }
}

static void eb_dw_portable(const eb_conv_params *p, const eb_requant *rq,
                           const int8_t *in, const int8_t *w,
                           const int32_t *bias, int8_t *out)
{
    int32_t oy, ox, c, ky, kx;
    for (oy = 0; oy < p->out_h; ++oy) {
        for (ox = 0; ox < p->out_w; ++ox) {
            for (c = 0; c < p->out_c; ++c) {
                const int32_t ic = c / p->depth_mult;
                const int32_t qi = rq->n == 1 ? 0 : c;
                int32_t acc = bias ? bias[c] : 0;
                for (ky = 0; ky < p->k_h; ++ky) {
                    const int32_t iy = oy * p->stride_h - p->pad_top + ky * p->dil_h;
                    if (iy < 0 || iy >= p->in_h) {
                        continue;
                    }
                    for (kx = 0; kx < p->k_w; ++kx) {
                        const int32_t ix = ox * p->stride_w - p->pad_left + kx * p->dil_w;
                        if (ix < 0 || ix >= p->in_w) {
                            continue;
                        }
                        acc += (int32_t)w[((size_t)ky * p->k_w + kx) * p->out_c + c] *
                               ((int32_t)in[((size_t)iy * p->in_w + ix) * p->in_c + ic] - p->in_zp);
                    }
                }
                out[((size_t)oy * p->out_w + ox) * p->out_c + c] = (int8_t)eb_requantize(
                    acc, rq->mult[qi], rq->shift[qi], p->out_zp, p->act_min, p->act_max);
            }
        }
    }
}

static void eb_fc_portable(const eb_fc_params *p, const eb_requant *rq,
                           const int8_t *in, const int8_t *w,
                           const int32_t *bias, int8_t *out)
{
    int32_t b, o, i;
    for (b = 0; b < p->batches; ++b) {
        const int8_t *x = in + (size_t)b * p->in_features;
        for (o = 0; o < p->out_features; ++o) {
            const int8_t *wr = w + (size_t)o * p->in_features;
            const int32_t qi = rq->n == 1 ? 0 : o;
            int32_t acc = bias ? bias[o] : 0;
            for (i = 0; i < p->in_features; ++i) {
                acc += (int32_t)wr[i] * ((int32_t)x[i] - p->in_zp);
            }
            out[(size_t)b * p->out_features + o] = (int8_t)eb_requantize(
                acc, rq->mult[qi], rq->shift[qi], p->out_zp, p->act_min, p->act_max);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Scratch paths (DSP intrinsics, native or emulated)                        */
/* ------------------------------------------------------------------------ */

/* Requantization of one output: fast form when the table allows it. */
typedef struct {
    int fast;
    const eb_rq_channel *tab;
    const eb_requant *rq;
    int32_t zp, lo, hi;
    int full;   /* lo == -128 && hi == 127 */
    int folded; /* full, and every channel has the folded form (h2) */
} eb_outq;

EB_INLINE int8_t eb_outq_apply(const eb_outq *o, int32_t acc, int32_t c)
{
    int32_t r;
    if (o->fast) {
        r = eb_rq_fast(acc, &o->tab[c]);
    } else {
        int32_t i = o->rq->n == 1 ? 0 : c;
        r = eb_mbqm(acc, o->rq->mult[i], o->rq->shift[i]);
    }
    return (int8_t)eb_out8(r, o->zp, o->lo, o->hi);
}

/* Column layout (int16, value x - zp_in, 0 for padding).  K positions are
 * grouped in quads (the last one padded with zeros when K % 4 != 0).  Within
 * a quad the order is (x0, x2, x1, x3): that is what SXTB16 and SXTB16-ROR8
 * of a weight word pair with, so one weight word costs two SXTB16 and feeds
 * two SMLAD per column.  In the two-column ("pair") layout the quads of the
 * two columns alternate (col0 quad j at 8j, col1 quad j at 8j + 4); in the
 * four-column layout quad j of column i is at 16j + 4i; the one-column
 * layout has quad j at 4j. */

/* Within-quad position of element t (0..3) of a quad. */
static const int8_t eb_qperm[4] = {0, 2, 1, 3};

/* Widen n4 int8 values (n4 % 4 == 0) into quads at dst, dst + qstride, ... */
EB_INLINE int16_t *eb_widen_quads(const int8_t *src, int32_t n4, int32_t off2,
                                  int16_t *dst, int32_t qstride)
{
    int32_t j;
    for (j = n4 >> 2; j > 0; --j) {
        const int32_t v = eb_read32(src);
        eb_write32(dst, eb_sadd16(eb_sxtb16(v), off2));
        eb_write32(dst + 2, eb_sadd16(eb_sxtb16_ror8(v), off2));
        src += 4;
        dst += qstride;
    }
    return dst;
}

EB_INLINE int32_t eb_off2(int32_t zp)
{
    return (int32_t)(((uint32_t)(-zp) & 0xFFFFu) * 0x10001u);
}

/* Widen a K-long int8 vector (any K) into ceil(K/4) quads. */
static void eb_widen_vec(const int8_t *src, int32_t K, int32_t zp, int16_t *quads,
                         int32_t qstride)
{
    const int32_t k4 = K & ~3;
    int16_t *q = eb_widen_quads(src, k4, eb_off2(zp), quads, qstride);
    if (K > k4) {
        int32_t t;
        for (t = 0; t < 4; ++t) {
            q[eb_qperm[t]] = (int16_t)(k4 + t < K ? src[k4 + t] - zp : 0);
        }
    }
}

/* Short copy (gather of small-channel im2col rows). */
EB_INLINE int8_t *eb_copy_short(int8_t *d, const int8_t *s, int32_t n)
{
    for (; n >= 4; n -= 4) {
        eb_write32(d, eb_read32(s));
        d += 4;
        s += 4;
    }
    for (; n > 0; --n) {
        *d++ = *s++;
    }
    return d;
}

/* Gather the kw taps of one kernel row (input row `row`, first column x0)
 * into g (kw * cin bytes); taps outside the input get zp. */
static int8_t *eb_gather_row(const eb_conv_params *p, const int8_t *row, int32_t x0,
                             int8_t *g)
{
    const int32_t cin = p->in_c;
    int32_t kx, i;
    for (kx = 0; kx < p->k_w; ++kx) {
        const int32_t ix = x0 + kx * p->dil_w;
        if (ix < 0 || ix >= p->in_w) {
            for (i = 0; i < cin; ++i) {
                g[i] = (int8_t)p->in_zp;
            }
            g += cin;
        } else {
            g = eb_copy_short(g, row + (size_t)ix * cin, cin);
        }
    }
    return g;
}

/* im2col of a 3x3 window on 3 channels (an RGB stem) that lies inside the
 * input: its 27 bytes are 3 runs of 9 at r0, r0 + rstep, r0 + 2 rstep.
 * Quads 2 and 4 straddle two runs and quad 6 ends with the zero point; the
 * words are read inside the input (row 1's byte -1 and bytes 9..10 belong to
 * the pixels beside the window, or to the row below), then widened. */
#if defined(EB_ARM_ASM) && defined(__GNUC__) && !defined(__clang__) && defined(__OPTIMIZE__)
/* (Only the four-pixel assembly path reads windows this way.) */
#define EB_RGB_QUAD(V)                                                     \
    do {                                                                   \
        const int32_t v_ = (V);                                            \
        eb_write32(quads, eb_sadd16(eb_sxtb16(v_), off2));                 \
        eb_write32(quads + 2, eb_sadd16(eb_sxtb16_ror8(v_), off2));        \
        quads += qstride;                                                  \
    } while (0)
EB_INLINE void eb_im2col_rgb3x3(const int8_t *r0, size_t rstep, int32_t zp, int32_t off2,
                                int16_t *quads, int32_t qstride)
{
    const int8_t *r1 = r0 + rstep, *r2 = r1 + rstep;
    EB_RGB_QUAD(eb_read32(r0));
    EB_RGB_QUAD(eb_read32(r0 + 4));
    EB_RGB_QUAD((int32_t)(((uint32_t)eb_read32(r1 - 1) & 0xFFFFFF00u) | (uint8_t)r0[8]));
    EB_RGB_QUAD(eb_read32(r1 + 3));
    EB_RGB_QUAD(eb_pack_lo(eb_read32(r1 + 7), eb_read32(r2)));
    EB_RGB_QUAD(eb_read32(r2 + 2));
    EB_RGB_QUAD((int32_t)((uint32_t)(uint8_t)r2[6] | ((uint32_t)(uint8_t)r2[7] << 8) |
                          ((uint32_t)(uint8_t)r2[8] << 16) | ((uint32_t)(uint8_t)zp << 24)));
}
#undef EB_RGB_QUAD
#endif

/* im2col of output pixel (oy, ox) into ceil(K/4) quads.
 *  - k_w * in_c % 4 == 0 and dilation_w 1 (pointwise, in_c % 4 == 0 convs,
 *    DS-CNN's 10x4 kernel on 1 channel): every kernel row is whole quads and
 *    is widened straight from the input (a row with padding taps is gathered
 *    first; a row outside the input is zero quads);
 *  - in_c % 4 == 0: per tap;
 *  - otherwise: gather the whole int8 column (padding = zp, which widens to
 *    0; K rounded up to 4 with zp) into g8, then widen. */
static void eb_im2col(const eb_conv_params *p, const int8_t *in, int32_t oy,
                      int32_t ox, int16_t *quads, int32_t qstride, int8_t *g8)
{
    const int32_t cin = p->in_c;
    const int32_t y0 = oy * p->stride_h - p->pad_top;
    const int32_t x0 = ox * p->stride_w - p->pad_left;
    const int32_t kw = p->k_w;
    const int32_t run = kw * cin;
    const int32_t off2 = eb_off2(p->in_zp);
    const size_t row_bytes = (size_t)p->in_w * cin;
    int32_t ky, kx, i;
    if ((run & 3) == 0 && p->dil_w == 1) {
        const int inside = x0 >= 0 && x0 + kw <= p->in_w;
        for (ky = 0; ky < p->k_h; ++ky) {
            const int32_t iy = y0 + ky * p->dil_h;
            if (iy < 0 || iy >= p->in_h) {
                for (i = run >> 2; i > 0; --i) {
                    eb_write32(quads, 0);
                    eb_write32(quads + 2, 0);
                    quads += qstride;
                }
            } else if (inside) {
                quads = eb_widen_quads(in + (size_t)iy * row_bytes + (size_t)x0 * cin, run, off2,
                                       quads, qstride);
            } else {
                eb_gather_row(p, in + (size_t)iy * row_bytes, x0, g8);
                quads = eb_widen_quads(g8, run, off2, quads, qstride);
            }
        }
    } else if ((cin & 3) == 0) {
        for (ky = 0; ky < p->k_h; ++ky) {
            const int32_t iy = y0 + ky * p->dil_h;
            for (kx = 0; kx < kw; ++kx) {
                const int32_t ix = x0 + kx * p->dil_w;
                if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) {
                    for (i = cin >> 2; i > 0; --i) {
                        eb_write32(quads, 0);
                        eb_write32(quads + 2, 0);
                        quads += qstride;
                    }
                } else {
                    quads = eb_widen_quads(in + (size_t)iy * row_bytes + (size_t)ix * cin, cin,
                                           off2, quads, qstride);
                }
            }
        }
    } else {
        const int32_t K = p->k_h * run;
        const int inside = p->dil_w == 1 && x0 >= 0 && x0 + kw <= p->in_w;
        int8_t *g = g8;
        const int all_inside = inside && y0 >= 0 && y0 + (p->k_h - 1) * p->dil_h < p->in_h;
        if (all_inside) {
            /* the whole window inside (a first layer's 3-channel 3x3 at
             * almost every pixel): k_h runs of contiguous bytes */
            const int8_t *s = in + (size_t)y0 * row_bytes + (size_t)x0 * cin;
            const size_t rstep = (size_t)p->dil_h * row_bytes;
            for (ky = p->k_h; ky > 0; --ky) {
                const int8_t *r = s;
                for (i = run; i >= 4; i -= 4) {
                    eb_write32(g, eb_read32(r));
                    g += 4;
                    r += 4;
                }
                for (; i > 0; --i) {
                    *g++ = *r++;
                }
                s += rstep;
            }
        } else {
            for (ky = 0; ky < p->k_h; ++ky) {
                const int32_t iy = y0 + ky * p->dil_h;
                if (iy < 0 || iy >= p->in_h) {
                    for (i = 0; i < run; ++i) {
                        g[i] = (int8_t)p->in_zp;
                    }
                    g += run;
                } else if (inside) {
                    g = eb_copy_short(g, in + (size_t)iy * row_bytes + (size_t)x0 * cin, run);
                } else {
                    g = eb_gather_row(p, in + (size_t)iy * row_bytes, x0, g);
                }
            }
        }
        for (i = K; i & 3; ++i) {
            g8[i] = (int8_t)p->in_zp;
        }
        eb_widen_quads(g8, (K + 3) & ~3, off2, quads, qstride);
    }
}

/* acc{pixel}{row} += sum over nq quads: the 2x2 SMLAD block kernel.
 * wa, wb: weight rows; pc: pair-layout columns (advanced by 8 per quad). */
/* GCC with optimization: hand-scheduled loop (14 registers: GCC can give
 * them; clang reserves more, so it gets the intrinsic version below). */
#if defined(EB_ARM_ASM) && defined(__GNUC__) && !defined(__clang__) && defined(__OPTIMIZE__)
#define EB_MM2X2(A00, A01, A10, A11, WA, WB, PC, NQ)                              \
    do {                                                                          \
        int32_t t0_, t1_, x0_, x1_, y0_, y1_;                                     \
        int32_t n_ = (NQ);                                                        \
        if (n_ > 0) {                                                             \
            __asm__ volatile(                                                     \
                "tst    %[n], #1\n\t" \
                "beq    2f\n\t" \
                "ldr    %[t0], [%[wa]], #4\n\t" \
                "ldrd   %[x0], %[x1], [%[pc]], #8\n\t" \
                "ldrd   %[y0], %[y1], [%[pc]], #8\n\t" \
                "sxtb16 %[t1], %[t0], ror #8\n\t" \
                "sxtb16 %[t0], %[t0]\n\t" \
                "smlad  %[a00], %[t0], %[x0], %[a00]\n\t" \
                "smlad  %[a00], %[t1], %[x1], %[a00]\n\t" \
                "smlad  %[a10], %[t0], %[y0], %[a10]\n\t" \
                "smlad  %[a10], %[t1], %[y1], %[a10]\n\t" \
                "ldr    %[t0], [%[wb]], #4\n\t" \
                "sxtb16 %[t1], %[t0], ror #8\n\t" \
                "sxtb16 %[t0], %[t0]\n\t" \
                "smlad  %[a01], %[t0], %[x0], %[a01]\n\t" \
                "smlad  %[a01], %[t1], %[x1], %[a01]\n\t" \
                "smlad  %[a11], %[t0], %[y0], %[a11]\n\t" \
                "smlad  %[a11], %[t1], %[y1], %[a11]\n\t" \
                "subs   %[n], %[n], #1\n\t" \
                "beq    3f\n\t" \
                "2:\n\t" \
                "ldr    %[t0], [%[wa]], #4\n\t" \
                "ldrd   %[x0], %[x1], [%[pc]], #8\n\t" \
                "ldrd   %[y0], %[y1], [%[pc]], #8\n\t" \
                "sxtb16 %[t1], %[t0], ror #8\n\t" \
                "sxtb16 %[t0], %[t0]\n\t" \
                "smlad  %[a00], %[t0], %[x0], %[a00]\n\t" \
                "smlad  %[a00], %[t1], %[x1], %[a00]\n\t" \
                "smlad  %[a10], %[t0], %[y0], %[a10]\n\t" \
                "smlad  %[a10], %[t1], %[y1], %[a10]\n\t" \
                "ldr    %[t0], [%[wb]], #4\n\t" \
                "sxtb16 %[t1], %[t0], ror #8\n\t" \
                "sxtb16 %[t0], %[t0]\n\t" \
                "smlad  %[a01], %[t0], %[x0], %[a01]\n\t" \
                "smlad  %[a01], %[t1], %[x1], %[a01]\n\t" \
                "smlad  %[a11], %[t0], %[y0], %[a11]\n\t" \
                "smlad  %[a11], %[t1], %[y1], %[a11]\n\t" \
                "ldr    %[t0], [%[wa]], #4\n\t" \
                "ldrd   %[x0], %[x1], [%[pc]], #8\n\t" \
                "ldrd   %[y0], %[y1], [%[pc]], #8\n\t" \
                "sxtb16 %[t1], %[t0], ror #8\n\t" \
                "sxtb16 %[t0], %[t0]\n\t" \
                "smlad  %[a00], %[t0], %[x0], %[a00]\n\t" \
                "smlad  %[a00], %[t1], %[x1], %[a00]\n\t" \
                "smlad  %[a10], %[t0], %[y0], %[a10]\n\t" \
                "smlad  %[a10], %[t1], %[y1], %[a10]\n\t" \
                "ldr    %[t0], [%[wb]], #4\n\t" \
                "sxtb16 %[t1], %[t0], ror #8\n\t" \
                "sxtb16 %[t0], %[t0]\n\t" \
                "smlad  %[a01], %[t0], %[x0], %[a01]\n\t" \
                "smlad  %[a01], %[t1], %[x1], %[a01]\n\t" \
                "smlad  %[a11], %[t0], %[y0], %[a11]\n\t" \
                "smlad  %[a11], %[t1], %[y1], %[a11]\n\t" \
                "subs   %[n], %[n], #2\n\t" \
                "bne    2b\n\t" \
                "3:\n\t" \
                : [a00] "+r"(A00), [a01] "+r"(A01), [a10] "+r"(A10),              \
                  [a11] "+r"(A11), [wa] "+r"(WA), [wb] "+r"(WB), [pc] "+r"(PC),   \
                  [n] "+r"(n_), [t0] "=&r"(t0_), [t1] "=&r"(t1_),                 \
                  [x0] "=&r"(x0_), [x1] "=&r"(x1_), [y0] "=&r"(y0_),              \
                  [y1] "=&r"(y1_)                                                 \
                :                                                                 \
                : "cc", "memory");                                                \
        }                                                                         \
    } while (0)
#else
#define EB_MM2X2(A00, A01, A10, A11, WA, WB, PC, NQ)                              \
    do {                                                                          \
        int32_t n_;                                                               \
        for (n_ = (NQ); n_ > 0; --n_) {                                           \
            const int32_t ra_ = eb_read32(WA), rb_ = eb_read32(WB);              \
            const int32_t ra02_ = eb_sxtb16(ra_), ra13_ = eb_sxtb16_ror8(ra_);   \
            const int32_t rb02_ = eb_sxtb16(rb_), rb13_ = eb_sxtb16_ror8(rb_);   \
            const int32_t x0_ = eb_read32(PC), x1_ = eb_read32(PC + 2);          \
            const int32_t y0_ = eb_read32(PC + 4), y1_ = eb_read32(PC + 6);      \
            A00 = eb_smlad(ra13_, x1_, eb_smlad(ra02_, x0_, A00));               \
            A10 = eb_smlad(ra13_, y1_, eb_smlad(ra02_, y0_, A10));               \
            A01 = eb_smlad(rb13_, x1_, eb_smlad(rb02_, x0_, A01));               \
            A11 = eb_smlad(rb13_, y1_, eb_smlad(rb02_, y0_, A11));               \
            WA += 4;                                                              \
            WB += 4;                                                              \
            PC += 8;                                                              \
        }                                                                         \
    } while (0)
#endif

#if defined(EB_ARM_ASM)
#define EB_SSAT8(x) __ssat((x), 8)
#else
#define EB_SSAT8(x) eb_clamp((x), -128, 127)
#endif

/* Requantize and store one output (full int8 range: a single SSAT). */
EB_INLINE int8_t eb_rq_store(const eb_outq *oq, int32_t acc, int32_t c)
{
    if (oq->fast) {
        const int32_t r = eb_wrap_add(eb_rq_fast(acc, &oq->tab[c]), oq->zp);
        if (oq->full) {
#if defined(EB_ARM_ASM)
            return (int8_t)__ssat(r, 8);
#else
            return (int8_t)eb_clamp(r, -128, 127);
#endif
        }
        return (int8_t)eb_clamp(r, oq->lo, oq->hi);
    }
    return eb_outq_apply(oq, acc, c);
}

#if defined(EB_ARM_ASM) && defined(__GNUC__) && !defined(__clang__) && defined(__OPTIMIZE__)
/* State of the assembly row-pair loop of eb_mm_2col (byte offsets are used
 * by the asm: keep the order). */
typedef struct {
    const int8_t *wa;       /*  0: weights of row r (advanced by 2K)       */
    const int8_t *wb;       /*  4: weights of row r + 1 (advanced by 2K)   */
    int32_t k2;             /*  8: 2K                                       */
    const int16_t *pc;      /* 12: pair-layout columns                      */
    int32_t nqp;            /* 16: quads per column (>= 1)                  */
    const int32_t *bias;    /* 20: &bias[r]                                 */
    const eb_rq_channel *q; /* 24: &tab[r] (24-byte entries)                */
    int8_t *o0;             /* 28: &out0[r]                                 */
    int8_t *o1;             /* 32: &out1[r]                                 */
    int32_t blocks;         /* 36: row pairs left (>= 1)                    */
} eb_mmk;

/* All row pairs of eb_mm_2col's folded path in one loop: per pair of rows
 * the 2x2 SMLAD kernel over nqp quads, then four folded requantizations
 * (AND/SUB/ORR/SMLAL/ASR/SSAT).  The context pointer doubles as the quad
 * counter (pushed meanwhile) so that the loop has 14 registers. */
static void eb_mm2x2_folded_asm(eb_mmk *k)
{
    eb_mmk *c = k;
    int32_t a00, a01, a10, a11, t0, t1, x0, x1, y0, y1;
    const int8_t *wa, *wb;
    const int16_t *pc;
    __asm__ volatile(
        "0:\n\t"
        "ldrd   %[wa], %[wb], [%[c]]\n\t"
        "ldr    %[t0], [%[c], #8]\n\t"
        "add    %[t1], %[wa], %[t0]\n\t"
        "add    %[t0], %[wb], %[t0]\n\t"
        "strd   %[t1], %[t0], [%[c]]\n\t"
        "ldr    %[pc], [%[c], #12]\n\t"
        "ldr    %[t0], [%[c], #20]\n\t"
        "ldrd   %[a00], %[a01], [%[t0]], #8\n\t"
        "str    %[t0], [%[c], #20]\n\t"
        "mov    %[a10], %[a00]\n\t"
        "mov    %[a11], %[a01]\n\t"
        "push   {%[c]}\n\t"
        "ldr    %[c], [%[c], #16]\n\t"
        "tst    %[c], #1\n\t"
        "beq    2f\n\t"
        "ldr    %[t0], [%[wa]], #4\n\t"
        "ldrd   %[x0], %[x1], [%[pc]], #8\n\t"
        "ldrd   %[y0], %[y1], [%[pc]], #8\n\t"
        "sxtb16 %[t1], %[t0], ror #8\n\t"
        "sxtb16 %[t0], %[t0]\n\t"
        "smlad  %[a00], %[t0], %[x0], %[a00]\n\t"
        "smlad  %[a00], %[t1], %[x1], %[a00]\n\t"
        "smlad  %[a10], %[t0], %[y0], %[a10]\n\t"
        "smlad  %[a10], %[t1], %[y1], %[a10]\n\t"
        "ldr    %[t0], [%[wb]], #4\n\t"
        "sxtb16 %[t1], %[t0], ror #8\n\t"
        "sxtb16 %[t0], %[t0]\n\t"
        "smlad  %[a01], %[t0], %[x0], %[a01]\n\t"
        "smlad  %[a01], %[t1], %[x1], %[a01]\n\t"
        "smlad  %[a11], %[t0], %[y0], %[a11]\n\t"
        "smlad  %[a11], %[t1], %[y1], %[a11]\n\t"
        "subs   %[c], %[c], #1\n\t"
        "beq    3f\n\t"
        "2:\n\t"
        "ldr    %[t0], [%[wa]], #4\n\t"
        "ldrd   %[x0], %[x1], [%[pc]], #8\n\t"
        "ldrd   %[y0], %[y1], [%[pc]], #8\n\t"
        "sxtb16 %[t1], %[t0], ror #8\n\t"
        "sxtb16 %[t0], %[t0]\n\t"
        "smlad  %[a00], %[t0], %[x0], %[a00]\n\t"
        "smlad  %[a00], %[t1], %[x1], %[a00]\n\t"
        "smlad  %[a10], %[t0], %[y0], %[a10]\n\t"
        "smlad  %[a10], %[t1], %[y1], %[a10]\n\t"
        "ldr    %[t0], [%[wb]], #4\n\t"
        "sxtb16 %[t1], %[t0], ror #8\n\t"
        "sxtb16 %[t0], %[t0]\n\t"
        "smlad  %[a01], %[t0], %[x0], %[a01]\n\t"
        "smlad  %[a01], %[t1], %[x1], %[a01]\n\t"
        "smlad  %[a11], %[t0], %[y0], %[a11]\n\t"
        "smlad  %[a11], %[t1], %[y1], %[a11]\n\t"
        "ldr    %[t0], [%[wa]], #4\n\t"
        "ldrd   %[x0], %[x1], [%[pc]], #8\n\t"
        "ldrd   %[y0], %[y1], [%[pc]], #8\n\t"
        "sxtb16 %[t1], %[t0], ror #8\n\t"
        "sxtb16 %[t0], %[t0]\n\t"
        "smlad  %[a00], %[t0], %[x0], %[a00]\n\t"
        "smlad  %[a00], %[t1], %[x1], %[a00]\n\t"
        "smlad  %[a10], %[t0], %[y0], %[a10]\n\t"
        "smlad  %[a10], %[t1], %[y1], %[a10]\n\t"
        "ldr    %[t0], [%[wb]], #4\n\t"
        "sxtb16 %[t1], %[t0], ror #8\n\t"
        "sxtb16 %[t0], %[t0]\n\t"
        "smlad  %[a01], %[t0], %[x0], %[a01]\n\t"
        "smlad  %[a01], %[t1], %[x1], %[a01]\n\t"
        "smlad  %[a11], %[t0], %[y0], %[a11]\n\t"
        "smlad  %[a11], %[t1], %[y1], %[a11]\n\t"
        "subs   %[c], %[c], #2\n\t"
        "bne    2b\n\t"
        "3:\n\t"
        "pop    {%[c]}\n\t"
        "ldr    %[t0], [%[c], #24]\n\t"
        "ldrd   %[x0], %[x1], [%[t0]]\n\t"
        "ldr    %[y0], [%[t0], #8]\n\t"
        "and    %[t1], %[a00], #0x80000000\n\t"
        "sub    %[y1], %[x1], %[t1], lsr #31\n\t"
        "orr    %[t1], %[t1], #0x40000000\n\t"
        "smlal  %[t1], %[y1], %[a00], %[x0]\n\t"
        "asr    %[y1], %[y1], %[y0]\n\t"
        "ssat   %[a00], #8, %[y1]\n\t"
        "and    %[t1], %[a10], #0x80000000\n\t"
        "sub    %[y1], %[x1], %[t1], lsr #31\n\t"
        "orr    %[t1], %[t1], #0x40000000\n\t"
        "smlal  %[t1], %[y1], %[a10], %[x0]\n\t"
        "asr    %[y1], %[y1], %[y0]\n\t"
        "ssat   %[a10], #8, %[y1]\n\t"
        "ldrd   %[x0], %[x1], [%[t0], #24]\n\t"
        "ldr    %[y0], [%[t0], #32]\n\t"
        "add    %[t0], %[t0], #48\n\t"
        "str    %[t0], [%[c], #24]\n\t"
        "and    %[t1], %[a01], #0x80000000\n\t"
        "sub    %[y1], %[x1], %[t1], lsr #31\n\t"
        "orr    %[t1], %[t1], #0x40000000\n\t"
        "smlal  %[t1], %[y1], %[a01], %[x0]\n\t"
        "asr    %[y1], %[y1], %[y0]\n\t"
        "ssat   %[a01], #8, %[y1]\n\t"
        "and    %[t1], %[a11], #0x80000000\n\t"
        "sub    %[y1], %[x1], %[t1], lsr #31\n\t"
        "orr    %[t1], %[t1], #0x40000000\n\t"
        "smlal  %[t1], %[y1], %[a11], %[x0]\n\t"
        "asr    %[y1], %[y1], %[y0]\n\t"
        "ssat   %[a11], #8, %[y1]\n\t"
        "ldrd   %[t0], %[t1], [%[c], #28]\n\t"
        "strb   %[a01], [%[t0], #1]\n\t"
        "strb   %[a00], [%[t0]], #2\n\t"
        "strb   %[a11], [%[t1], #1]\n\t"
        "strb   %[a10], [%[t1]], #2\n\t"
        "strd   %[t0], %[t1], [%[c], #28]\n\t"
        "ldr    %[t0], [%[c], #36]\n\t"
        "subs   %[t0], %[t0], #1\n\t"
        "str    %[t0], [%[c], #36]\n\t"
        "bne    0b\n\t"
        : [c] "+r"(c), [a00] "=&r"(a00), [a01] "=&r"(a01), [a10] "=&r"(a10),
          [a11] "=&r"(a11), [wa] "=&r"(wa), [wb] "=&r"(wb), [pc] "=&r"(pc),
          [t0] "=&r"(t0), [t1] "=&r"(t1), [x0] "=&r"(x0), [x1] "=&r"(x1),
          [y0] "=&r"(y0), [y1] "=&r"(y1)
        :
        : "cc", "memory");
}
#define EB_MM_ASM 1
#endif

/* Dot products of one weight row with the pair-layout columns at pc, over
 * the K positions, reading no weight byte past the row (the K % 4 tail is
 * taken element by element from the last quad). */
EB_INLINE void eb_row_dot2(const int8_t *wa, int32_t K, const int16_t *pc,
                           int32_t *a0, int32_t *a1)
{
    const int32_t nq = K >> 2;
    int32_t s0 = *a0, s1 = *a1, k, t;
    for (k = nq; k > 0; --k) {
        const int32_t ra = eb_read32(wa);
        const int32_t ra02 = eb_sxtb16(ra), ra13 = eb_sxtb16_ror8(ra);
        s0 = eb_smlad(ra13, eb_read32(pc + 2), eb_smlad(ra02, eb_read32(pc), s0));
        s1 = eb_smlad(ra13, eb_read32(pc + 6), eb_smlad(ra02, eb_read32(pc + 4), s1));
        wa += 4;
        pc += 8;
    }
    for (t = 0; t < (K & 3); ++t) {
        s0 += wa[t] * pc[eb_qperm[t]];
        s1 += wa[t] * pc[4 + eb_qperm[t]];
    }
    *a0 = s0;
    *a1 = s1;
}

/* out0[r], out1[r] = requant(bias[r] + w[r] . col0 / col1), r < rows.
 * w: rows x K int8 (row stride K); columns in the pair layout at pc.
 * Rows are taken two at a time over whole (padded) quads; when K % 4 != 0
 * that reads up to 3 bytes of the next row (times a zero column entry), so
 * the last row, which has no next row, goes through eb_row_dot2. */
static void eb_mm_2col(const int8_t *w, int32_t K, int32_t rows,
                       const int16_t *pc, const int32_t *bias,
                       const eb_outq *oq, const int8_t *wlast, int8_t *out0,
                       int8_t *out1)
{
    const int32_t nqp = (K + 3) >> 2;
    const int32_t safe = (K & 3) ? rows - 1 : rows;
    int32_t r = 0;
#if defined(EB_MM_ASM)
    if (oq->folded && bias != NULL && rows >= 2) {
        /* all row pairs; if K % 4 != 0 and rows is even, the last pair reads
         * its second row from wlast (a zero-padded copy of the last row) */
        const int32_t pairs = rows >> 1;
        const int last_padded = (K & 3) && !(rows & 1);
        eb_mmk k;
        k.wa = w;
        k.wb = w + K;
        k.k2 = 2 * K;
        k.pc = pc;
        k.nqp = nqp;
        k.bias = bias;
        k.q = oq->tab;
        k.o0 = out0;
        k.o1 = out1;
        k.blocks = pairs - last_padded;
        if (k.blocks > 0) {
            eb_mm2x2_folded_asm(&k);
        }
        if (last_padded) {
            k.wb = wlast;
            k.blocks = 1;
            eb_mm2x2_folded_asm(&k);
        }
        r = 2 * pairs;
    }
#else
    (void)wlast;
#endif
    if (oq->folded) {
        /* the common case: folded requantization, full int8 clamp */
        const eb_rq_channel *q = oq->tab;
        for (; r + 2 <= safe; r += 2) {
            const int8_t *wa = w + (size_t)r * K;
            const int8_t *wb = wa + K;
            const int16_t *pp = pc;
            const int32_t m0 = q[r].mult, h0 = q[r].h2, s0 = q[r].sh;
            const int32_t m1 = q[r + 1].mult, h1 = q[r + 1].h2, s1 = q[r + 1].sh;
            int32_t a00 = bias ? bias[r] : 0;
            int32_t a01 = bias ? bias[r + 1] : 0;
            int32_t a10 = a00, a11 = a01;
            EB_MM2X2(a00, a01, a10, a11, wa, wb, pp, nqp);
            a00 = EB_SSAT8(eb_rq2_apply(a00, m0, h0, s0));
            a10 = EB_SSAT8(eb_rq2_apply(a10, m0, h0, s0));
            a01 = EB_SSAT8(eb_rq2_apply(a01, m1, h1, s1));
            a11 = EB_SSAT8(eb_rq2_apply(a11, m1, h1, s1));
            out0[r] = (int8_t)a00;
            out1[r] = (int8_t)a10;
            out0[r + 1] = (int8_t)a01;
            out1[r + 1] = (int8_t)a11;
        }
    } else {
        for (; r + 2 <= safe; r += 2) {
            const int8_t *wa = w + (size_t)r * K;
            const int8_t *wb = wa + K;
            const int16_t *pp = pc;
            int32_t a00 = bias ? bias[r] : 0;
            int32_t a01 = bias ? bias[r + 1] : 0;
            int32_t a10 = a00, a11 = a01;
            EB_MM2X2(a00, a01, a10, a11, wa, wb, pp, nqp);
            out0[r] = eb_rq_store(oq, a00, r);
            out0[r + 1] = eb_rq_store(oq, a01, r + 1);
            out1[r] = eb_rq_store(oq, a10, r);
            out1[r + 1] = eb_rq_store(oq, a11, r + 1);
        }
    }
    for (; r < rows; ++r) {
        int32_t a0 = bias ? bias[r] : 0;
        int32_t a1 = a0;
        eb_row_dot2(w + (size_t)r * K, K, pc, &a0, &a1);
        out0[r] = eb_rq_store(oq, a0, r);
        out1[r] = eb_rq_store(oq, a1, r);
    }
}

/* One column (one-column layout), rows in pairs, same over-read rule. */
static void eb_mm_1col(const int8_t *w, int32_t K, int32_t rows,
                       const int16_t *col, const int32_t *bias,
                       const eb_outq *oq, int8_t *out)
{
    const int32_t nqp = (K + 3) >> 2;
    const int32_t safe = (K & 3) ? rows - 1 : rows;
    int32_t r = 0, k, t;
    for (; r + 2 <= safe; r += 2) {
        const int8_t *wa = w + (size_t)r * K;
        const int8_t *wb = wa + K;
        const int16_t *pp = col;
        int32_t a0 = bias ? bias[r] : 0;
        int32_t a1 = bias ? bias[r + 1] : 0;
        for (k = nqp; k > 0; --k) {
            const int32_t ra = eb_read32(wa);
            const int32_t rb = eb_read32(wb);
            const int32_t x02 = eb_read32(pp);
            const int32_t x13 = eb_read32(pp + 2);
            a0 = eb_smlad(eb_sxtb16(ra), x02, a0);
            a0 = eb_smlad(eb_sxtb16_ror8(ra), x13, a0);
            a1 = eb_smlad(eb_sxtb16(rb), x02, a1);
            a1 = eb_smlad(eb_sxtb16_ror8(rb), x13, a1);
            wa += 4;
            wb += 4;
            pp += 4;
        }
        out[r] = eb_rq_store(oq, a0, r);
        out[r + 1] = eb_rq_store(oq, a1, r + 1);
    }
    for (; r < rows; ++r) {
        const int8_t *wa = w + (size_t)r * K;
        const int16_t *pp = col;
        int32_t a0 = bias ? bias[r] : 0;
        for (k = K >> 2; k > 0; --k) {
            const int32_t ra = eb_read32(wa);
            a0 = eb_smlad(eb_sxtb16(ra), eb_read32(pp), a0);
            a0 = eb_smlad(eb_sxtb16_ror8(ra), eb_read32(pp + 2), a0);
            wa += 4;
            pp += 4;
        }
        for (t = 0; t < (K & 3); ++t) {
            a0 += wa[t] * pp[eb_qperm[t]];
        }
        out[r] = eb_rq_store(oq, a0, r);
    }
}

#if defined(EB_ARM_ASM) && defined(__GNUC__) && !defined(__clang__) && defined(__OPTIMIZE__)
/* State of the assembly row loop of eb_mm_4col (byte offsets are used by
 * the asm: keep the order). */
typedef struct {
    const int16_t *pc;      /*  0: the four columns (quad layout)           */
    const eb_rq_channel *q; /*  4: &tab[r]; .bias holds bias[r]              */
    int32_t n;              /*  8: quads after the first, rounded up to even */
    int32_t odd;            /* 12: entry: 0 an even number of them, 1 odd, 2 none */
    int8_t *o;              /* 16: &out[pixel 0][r]                          */
    int32_t ostep;          /* 20: bytes from one pixel's output to the next */
    int32_t wcorr;          /* 24: K - 4 * quads (0 when K % 4 == 0)         */
    int32_t rows;           /* 28: rows left (>= 1)                          */
    int32_t zp;             /* 32: output zero point (rows not folded)       */
} eb_mm4k;

#define EB_MM4_QUAD                                                        \
    "ldr    %[t0], [%[w]], #4\n\t"                                         \
    "sxtb16 %[t1], %[t0], ror #8\n\t"                                      \
    "sxtb16 %[t0], %[t0]\n\t"                                              \
    "ldmia  %[pc]!, {%[x0], %[x1], %[x2], %[x3]}\n\t"                      \
    "smlad  %[a0], %[t0], %[x0], %[a0]\n\t"                                \
    "smlad  %[a0], %[t1], %[x1], %[a0]\n\t"                                \
    "smlad  %[a1], %[t0], %[x2], %[a1]\n\t"                                \
    "smlad  %[a1], %[t1], %[x3], %[a1]\n\t"                                \
    "ldmia  %[pc]!, {%[x0], %[x1], %[x2], %[x3]}\n\t"                      \
    "smlad  %[a2], %[t0], %[x0], %[a2]\n\t"                                \
    "smlad  %[a2], %[t1], %[x1], %[a2]\n\t"                                \
    "smlad  %[a3], %[t0], %[x2], %[a3]\n\t"                                \
    "smlad  %[a3], %[t1], %[x3], %[a3]\n\t"
/* Folded requantization of A: M in x0, H in x1, the shift in x2. */
#define EB_MM4_RQ(A)                                                       \
    "and    %[t1], %[" A "], #0x80000000\n\t"                              \
    "sub    %[x3], %[x1], %[t1], lsr #31\n\t"                              \
    "orr    %[t1], %[t1], #0x40000000\n\t"                                 \
    "smlal  %[t1], %[x3], %[" A "], %[x0]\n\t"                             \
    "asr    %[x3], %[x3], %[x2]\n\t"                                       \
    "ssat   %[" A "], #8, %[x3]\n\t"

/* The fast form (eb_rq_fast, then + zp) of A, for a row whose channel has
 * no folded form (h2 == 0): M in x0, the shift in x2, zp in n. */
#define EB_MM4_RQF(A)                                                      \
    "ldrd   %[t1], %[x3], [%[t0], #16]\n\t"                                  \
    "smlal  %[t1], %[x3], %[" A "], %[x0]\n\t"                             \
    "and    %[x1], %[" A "], #0x80000000\n\t"                              \
    "adds   %[t1], %[t1], %[x1]\n\t"                                       \
    "adc    %[x3], %[x3], %[" A "], asr #31\n\t"                           \
    "asr    %[x3], %[x3], %[x2]\n\t"                                       \
    "add    %[x3], %[x3], %[n]\n\t"                                        \
    "ssat   %[" A "], #8, %[x3]\n\t"

/* All rows of eb_mm_4col: per row, one weight word (two SXTB16) feeds 8
 * SMLAD over the 4 columns, whose quads arrive by two LDM of 4 words
 * (13 instructions for 16 MACs), then the row's 4 requantizations share one
 * channel's constants: the folded form, or the fast form for a channel
 * that has no folded one (exponent above 24).  The LDM needs ascending registers: the
 * column words are pinned to r8-r11. */
/* The first quad of a row: the bias, in a3, is the addend of all four
 * accumulators (a3's own update comes last). */
#define EB_MM4_QUAD1                                                       \
    "ldr    %[t0], [%[w]], #4\n\t"                                         \
    "sxtb16 %[t1], %[t0], ror #8\n\t"                                      \
    "sxtb16 %[t0], %[t0]\n\t"                                              \
    "ldmia  %[pc]!, {%[x0], %[x1], %[x2], %[x3]}\n\t"                      \
    "smlad  %[a0], %[t0], %[x0], %[a3]\n\t"                                \
    "smlad  %[a0], %[t1], %[x1], %[a0]\n\t"                                \
    "smlad  %[a1], %[t0], %[x2], %[a3]\n\t"                                \
    "smlad  %[a1], %[t1], %[x3], %[a1]\n\t"                                \
    "ldmia  %[pc]!, {%[x0], %[x1], %[x2], %[x3]}\n\t"                      \
    "smlad  %[a2], %[t0], %[x0], %[a3]\n\t"                                \
    "smlad  %[a2], %[t1], %[x1], %[a2]\n\t"                                \
    "smlad  %[a3], %[t0], %[x2], %[a3]\n\t"                                \
    "smlad  %[a3], %[t1], %[x3], %[a3]\n\t"
/* A row: the first quad, the others two at a time (entry 0: an even number
 * left, 1: odd, 2: none), then the channel's constants. */
#define EB_MM4_ROW                                                         \
    "0:\n\t"                                                               \
    "ldrd   %[pc], %[t0], [%[c]]\n\t"                                      \
    "ldr    %[a3], [%[t0], #12]\n\t"                                       \
    EB_MM4_QUAD1                                                           \
    "ldrd   %[n], %[t1], [%[c], #8]\n\t"                                   \
    "cmp    %[t1], #1\n\t"                                                 \
    "beq    1f\n\t"                                                        \
    "bhi    3f\n\t"                                                        \
    "2:\n\t"                                                               \
    EB_MM4_QUAD                                                            \
    "1:\n\t"                                                               \
    EB_MM4_QUAD                                                            \
    "subs   %[n], %[n], #2\n\t"                                            \
    "bne    2b\n\t"                                                        \
    "3:\n\t"                                                               \
    "ldr    %[t0], [%[c], #4]\n\t"                                         \
    "ldmia  %[t0], {%[x0], %[x1], %[x2]}\n\t"
/* The stores of a row's 4 outputs and the step to the next row. */
#define EB_MM4_NEXT                                                        \
    "add    %[t0], %[t0], #24\n\t"                                         \
    "str    %[t0], [%[c], #4]\n\t"                                         \
    "ldrd   %[t0], %[t1], [%[c], #16]\n\t"                                 \
    "strb   %[a0], [%[t0]]\n\t"                                            \
    "strb   %[a1], [%[t0], %[t1]]\n\t"                                     \
    "add    %[x0], %[t0], %[t1], lsl #1\n\t"                               \
    "strb   %[a2], [%[x0]]\n\t"                                            \
    "strb   %[a3], [%[x0], %[t1]]\n\t"                                     \
    "add    %[t0], %[t0], #1\n\t"                                          \
    "str    %[t0], [%[c], #16]\n\t"                                        \
    "ldrd   %[t0], %[t1], [%[c], #24]\n\t"                                 \
    "add    %[w], %[w], %[t0]\n\t"                                         \
    "subs   %[t1], %[t1], #1\n\t"                                          \
    "str    %[t1], [%[c], #28]\n\t"                                        \
    "bne    0b\n\t"
#define EB_MM4_OPERANDS                                                    \
    : [w] "+r"(w), [a0] "=&r"(a0), [a1] "=&r"(a1), [a2] "=&r"(a2), [a3] "=&r"(a3), \
      [t0] "=&r"(t0), [t1] "=&r"(t1), [n] "=&r"(n), [pc] "=&r"(pc), [x0] "=&r"(x0), \
      [x1] "=&r"(x1), [x2] "=&r"(x2), [x3] "=&r"(x3)                      \
    : [c] "r"(c)                                                           \
    : "cc", "memory"
#define EB_MM4_LOCALS                                                      \
    register int32_t x0 __asm__("r8");                                     \
    register int32_t x1 __asm__("r9");                                     \
    register int32_t x2 __asm__("r10");                                    \
    register int32_t x3 __asm__("r11");                                    \
    int32_t a0, a1, a2, a3, t0, t1, n;                                     \
    const int16_t *pc

/* All rows of eb_mm_4col, every channel folded. */
static void eb_mm1x4_folded_asm(const int8_t *w, eb_mm4k *c)
{
    EB_MM4_LOCALS;
    __asm__ volatile(EB_MM4_ROW
                     EB_MM4_RQ("a0") EB_MM4_RQ("a1") EB_MM4_RQ("a2") EB_MM4_RQ("a3")
                     EB_MM4_NEXT
                     EB_MM4_OPERANDS);
}

/* The same where some channel has no folded form (h2 == 0): its rows take
 * the fast form. */
static void eb_mm1x4_mixed_asm(const int8_t *w, eb_mm4k *c)
{
    EB_MM4_LOCALS;
    __asm__ volatile(EB_MM4_ROW
                     "cmp    %[x1], #0\n\t"
                     "beq    5f\n\t"
                     EB_MM4_RQ("a0") EB_MM4_RQ("a1") EB_MM4_RQ("a2") EB_MM4_RQ("a3")
                     "6:\n\t"
                     EB_MM4_NEXT
                     "b      7f\n\t"
                     "5:\n\t"
                     "ldr    %[n], [%[c], #32]\n\t"
                     EB_MM4_RQF("a0") EB_MM4_RQF("a1") EB_MM4_RQF("a2") EB_MM4_RQF("a3")
                     "b      6b\n\t"
                     "7:\n\t"
                     EB_MM4_OPERANDS);
}

/* out[i * ostep + r] = requant(bias[r] + w[r] . col_i), i < 4, r < rows,
 * every channel fast, full int8 clamp (bias in tab[r].bias).  Columns in the 4-column
 * quad layout at pc.  Rows run over whole (padded) quads; when K % 4 != 0
 * that reads up to 3 bytes of the next row (times zero column entries), so
 * the last row reads wlast, its zero-padded copy. */
static void eb_mm_4col(const int8_t *w, int32_t K, int32_t rows, const int16_t *pc,
                       const eb_outq *oq, const int8_t *wlast, int8_t *out, int32_t ostep)
{
    const int32_t nq = (K + 3) >> 2;
    eb_mm4k k;
    k.pc = pc;
    k.q = oq->tab;
    k.n = nq & ~1;
    k.odd = nq == 1 ? 2 : !(nq & 1);
    k.o = out;
    k.ostep = ostep;
    k.wcorr = K - 4 * nq;
    k.rows = (K & 3) ? rows - 1 : rows;
    k.zp = oq->zp;
    if (k.rows > 0) {
        (oq->folded ? eb_mm1x4_folded_asm : eb_mm1x4_mixed_asm)(w, &k);
    }
    if (K & 3) {
        k.wcorr = 0;
        k.rows = 1;
        (oq->folded ? eb_mm1x4_folded_asm : eb_mm1x4_mixed_asm)(wlast, &k);
    }
}
#define EB_MM4_ASM 1
#endif

static void eb_outq_init(eb_outq *oq, const eb_requant *rq, int32_t n_out,
                         eb_rq_channel *tab, int32_t zp, int32_t lo, int32_t hi)
{
    oq->fast = eb_rq_prepare(rq, n_out, tab, zp, &oq->folded);
    oq->tab = tab;
    oq->rq = rq;
    oq->zp = zp;
    oq->lo = lo;
    oq->hi = hi;
    oq->full = lo == -128 && hi == 127;
    oq->folded = oq->folded && oq->full;
}

static void eb_conv2d_dsp(const eb_conv_params *p, const eb_requant *rq,
                          const int8_t *in, const int8_t *w,
                          const int32_t *bias, int8_t *out, void *scratch)
{
    const int32_t K = p->k_h * p->k_w * p->in_c;
    const int32_t n_pix = p->out_h * p->out_w;
    const int pointwise = p->k_h == 1 && p->k_w == 1 && p->stride_h == 1 &&
                          p->stride_w == 1 && p->pad_top == 0 && p->pad_left == 0 &&
                          p->pad_bottom == 0 && p->pad_right == 0;
    eb_rq_channel *tab = (eb_rq_channel *)scratch;
    int8_t *g8 = (int8_t *)scratch + eb_rq_table_bytes(p->out_c);
    int16_t *cols = (int16_t *)(void *)(g8 + EB_ALIGN_UP((size_t)K));
    int8_t *wlast = (int8_t *)(cols + EB_ALIGN_UP((4 * (size_t)K + 16) * sizeof(int16_t)) / sizeof(int16_t));
    eb_outq oq;
    int32_t pix, i;
    eb_outq_init(&oq, rq, p->out_c, tab, p->out_zp, p->act_min, p->act_max);
    /* zero-padded copy of the last weight row (whole-quad reads stay inside) */
    memcpy(wlast, w + (size_t)(p->out_c - 1) * K, (size_t)K);
    for (i = K; i & 3; ++i) {
        wlast[i] = 0;
    }
    pix = 0;
#if defined(EB_MM4_ASM)
    if (oq.fast && oq.full) {
        /* four pixels at a time, all rows in one assembly loop */
        const int rgb = p->in_c == 3 && p->k_h == 3 && p->k_w == 3 && p->dil_h == 1 &&
                        p->dil_w == 1;
        const int32_t off2 = eb_off2(p->in_zp);
        for (i = 0; i < p->out_c; ++i) {
            tab[i].bias = bias ? bias[i] : 0;
        }
        for (; pix + 4 <= n_pix; pix += 4) {
            int32_t j;
            for (j = 0; j < 4; ++j) {
                if (pointwise) {
                    eb_widen_vec(in + (size_t)(pix + j) * K, K, p->in_zp, cols + 4 * j, 16);
                } else {
                    const int32_t oy = (pix + j) / p->out_w, ox = (pix + j) - oy * p->out_w;
                    const int32_t y0 = oy * p->stride_h - p->pad_top;
                    const int32_t x0 = ox * p->stride_w - p->pad_left;
                    if (rgb && y0 >= 0 && y0 + 3 <= p->in_h && x0 >= 0 && x0 + 3 <= p->in_w) {
                        eb_im2col_rgb3x3(in + ((size_t)y0 * p->in_w + (size_t)x0) * 3,
                                         (size_t)p->in_w * 3, p->in_zp, off2, cols + 4 * j, 16);
                    } else {
                        eb_im2col(p, in, oy, ox, cols + 4 * j, 16, g8);
                    }
                }
            }
            eb_mm_4col(w, K, p->out_c, cols, &oq, wlast, out + (size_t)pix * p->out_c,
                       p->out_c);
        }
    }
#endif
    for (; pix + 2 <= n_pix; pix += 2) {
        if (pointwise) {
            /* 1x1 stride 1: the column is the pixel itself */
            eb_widen_vec(in + (size_t)pix * K, K, p->in_zp, cols, 8);
            eb_widen_vec(in + (size_t)(pix + 1) * K, K, p->in_zp, cols + 4, 8);
        } else {
            const int32_t oy0 = pix / p->out_w, ox0 = pix - oy0 * p->out_w;
            const int32_t oy1 = (pix + 1) / p->out_w, ox1 = (pix + 1) - oy1 * p->out_w;
            eb_im2col(p, in, oy0, ox0, cols, 8, g8);
            eb_im2col(p, in, oy1, ox1, cols + 4, 8, g8);
        }
        eb_mm_2col(w, K, p->out_c, cols, bias, &oq, wlast,
                   out + (size_t)pix * p->out_c, out + (size_t)(pix + 1) * p->out_c);
    }
    if (pix < n_pix) {
        const int32_t oy0 = pix / p->out_w, ox0 = pix - oy0 * p->out_w;
        eb_im2col(p, in, oy0, ox0, cols, 4, g8);
        eb_mm_1col(w, K, p->out_c, cols, bias, &oq, out + (size_t)pix * p->out_c);
    }
}

/* Depthwise planes.  A plane holds one input channel as int16, padded with
 * the input zero point.  It is laid out as the input (plane rows = input
 * rows) or transposed (plane rows = input columns), whichever gives the 3x3
 * kernels the cheaper rows of outputs: DS-CNN's 25 x 5 maps run as 5 rows
 * of 25.  eb_dwgeo describes a plane and its outputs in plane coordinates
 * (r across rows, i along them); the sums are the same integers either way. */
typedef struct {
    int32_t transposed;
    int32_t ph, pw;        /* plane rows, row length (elements)                */
    int32_t pr0, pc0;      /* padding before the first row / column            */
    int32_t nr, nc;        /* valid rows / columns                              */
    int32_t sr, si;        /* strides across / along plane rows                */
    int32_t rows, len;     /* output rows, outputs per row                      */
    int32_t src_row;       /* input bytes from one plane row to the next        */
    int32_t src_col;       /* input bytes from one plane column to the next     */
    int32_t ostep, orow;   /* output bytes between outputs of a row / rows      */
} eb_dwgeo;

static void eb_dw_geometry(const eb_conv_params *p, int transposed, eb_dwgeo *gm)
{
    gm->transposed = transposed;
    gm->ph = p->in_h + p->pad_top + p->pad_bottom;
    gm->pw = p->in_w + p->pad_left + p->pad_right;
    gm->pr0 = p->pad_top;
    gm->pc0 = p->pad_left;
    gm->nr = p->in_h;
    gm->nc = p->in_w;
    gm->sr = p->stride_h;
    gm->si = p->stride_w;
    gm->rows = p->out_h;
    gm->len = p->out_w;
    gm->src_row = p->in_w * p->in_c;
    gm->src_col = p->in_c;
    gm->orow = p->out_w * p->out_c;
    gm->ostep = p->out_c;
    if (transposed) {
        /* rows and columns trade places, in the plane and in the output */
#define EB_SWAP(a, b)                                                      \
    do {                                                                   \
        const int32_t t_ = (a);                                            \
        (a) = (b);                                                         \
        (b) = t_;                                                          \
    } while (0)
        EB_SWAP(gm->ph, gm->pw);
        EB_SWAP(gm->pr0, gm->pc0);
        EB_SWAP(gm->nr, gm->nc);
        EB_SWAP(gm->sr, gm->si);
        EB_SWAP(gm->rows, gm->len);
        EB_SWAP(gm->src_row, gm->src_col);
        EB_SWAP(gm->orow, gm->ostep);
#undef EB_SWAP
    }
}

/* The instructions of the 3x3 assembly for `rows` rows of `len` outputs
 * (its quad, pair and single steps, and the row overhead), the measure by
 * which the plane orientation is chosen. */
static int32_t eb_dw3x3_cost(int32_t rows, int32_t len)
{
    return rows * (24 + 82 * (len >> 2) + ((len & 2) ? 48 : 0) + ((len & 1) ? 30 : 0));
}

/* Spread input channels [ic0, ic0 + g) into planes (plane j at
 * planes + j * pstride).  The borders never change: they are written for
 * the first channel group only. */
EB_NOINLINE static void eb_dw_fill_planes(const eb_dwgeo *gm, int32_t in_zp,
                                          const int8_t *in, int32_t cin, int32_t ic0,
                                          int32_t g, int16_t *planes, size_t pstride,
                                          int borders)
{
    const int16_t zp = (int16_t)in_zp;
    const int32_t pw = gm->pw, nc = gm->nc;
    const int32_t rs = gm->src_row, cs = gm->src_col;
    int32_t j, y, x;
    for (j = 0; borders && j < 4; ++j) {
        int16_t *pl = planes + (size_t)j * pstride;
        for (y = 0; y < gm->ph; ++y) {
            int16_t *row = pl + (size_t)y * pw;
            if (y < gm->pr0 || y >= gm->pr0 + gm->nr) {
                for (x = 0; x < pw; ++x) {
                    row[x] = zp;
                }
            } else {
                for (x = 0; x < gm->pc0; ++x) {
                    row[x] = zp;
                }
                for (x = gm->pc0 + nc; x < pw; ++x) {
                    row[x] = zp;
                }
            }
        }
    }
    if (g == 4 && (cin & 3) == 0 && (ic0 & 3) == 0) {
        /* 2 pixels x 4 channels per step: SXTB16 + PKHBT/PKHTB into pairs */
        const int8_t *src_row = in + ic0;
        int16_t *d_row = planes + (size_t)gm->pr0 * pw + gm->pc0;
        for (y = gm->nr; y > 0; --y) {
            const int8_t *src = src_row;
            int16_t *d = d_row;
            for (x = nc >> 1; x > 0; --x) {
                const int32_t a = eb_read32(src);
                const int32_t b = eb_read32(src + cs);
                const int32_t a02 = eb_sxtb16(a), a13 = eb_sxtb16_ror8(a);
                const int32_t b02 = eb_sxtb16(b), b13 = eb_sxtb16_ror8(b);
                eb_write32(d, eb_pack_lo(a02, b02));
                eb_write32(d + pstride, eb_pack_lo(a13, b13));
                eb_write32(d + 2 * pstride, eb_pack_hi(a02, b02));
                eb_write32(d + 3 * pstride, eb_pack_hi(a13, b13));
                src += 2 * cs;
                d += 2;
            }
            if (nc & 1) {
                d[0] = src[0];
                d[pstride] = src[1];
                d[2 * pstride] = src[2];
                d[3 * pstride] = src[3];
            }
            src_row += rs;
            d_row += pw;
        }
    } else {
        for (y = 0; y < gm->nr; ++y) {
            for (x = 0; x < nc; ++x) {
                const int8_t *src = in + (size_t)y * rs + (size_t)x * cs + ic0;
                int16_t *d = planes + (size_t)(y + gm->pr0) * pw + gm->pc0 + x;
                for (j = 0; j < g; ++j) {
                    d[(size_t)j * pstride] = src[j];
                }
            }
        }
    }
}

/* State of one depthwise channel for the assembly plane loop (the asm uses
 * the byte offsets in the comments: keep the order).  eb_dw_dsp sets the
 * layer's fields once, eb_dw3x3_channel the channel's. */
typedef struct {
    int32_t init;          /*  0: bias - zp_in * sum(w)                     */
    int32_t init2;         /*  4: the same (one LDRD loads two accs)        */
    int32_t mult;          /*  8: M (eb_rq2_const)                          */
    int32_t h;             /* 12: H (zp_out folded)                         */
    int32_t w0;            /* 16: W0, W1, W2 (reloaded after the requant)   */
    int32_t w1;            /* 20                                            */
    int32_t w2;            /* 24                                            */
    int32_t ostep;         /* 28: output bytes between outputs of a row     */
    int32_t quad_bytes;    /* 32: plane bytes of the row's quads            */
    const int16_t *end;    /* 36: end of the quads of the current row       */
    const int16_t *row;    /* 40: plane position of the first row           */
    int32_t row_adv;       /* 44: plane bytes from a row's last pair to the next row */
    int8_t *orow;          /* 48: output of the first row                   */
    int32_t orow_adv;      /* 52: output bytes from a row's last pair to the next row */
    int32_t rows;          /* 56: output rows left (counted down)           */
    int32_t tail;          /* 60: outputs per row % 4                       */
} eb_dwk;

#if defined(EB_ARM_ASM) && defined(__GNUC__) && !defined(__clang__) && defined(__OPTIMIZE__)

/* One row of taps (weights W, third tap in half H of S) for 4, 2 and 1
 * outputs, stride 1 and 2.  S2's low byte holds the requantization shift. */
#define EB_DW4_S1_ROW(W, S, H)                                             \
    "ldr    %[t], [%[a]]\n\t"                                              \
    "smlad  %[c0], %[t], %[" W "], %[c0]\n\t"                              \
    "ldr    %[t], [%[a], #2]\n\t"                                          \
    "smlad  %[c1], %[t], %[" W "], %[c1]\n\t"                              \
    "ldr    %[t], [%[a], #4]\n\t"                                          \
    "smlad  %[c2], %[t], %[" W "], %[c2]\n\t"                              \
    "smlab" H " %[c0], %[t], %[" S "], %[c0]\n\t"                          \
    "smlat" H " %[c1], %[t], %[" S "], %[c1]\n\t"                          \
    "ldr    %[t], [%[a], #6]\n\t"                                          \
    "smlad  %[c3], %[t], %[" W "], %[c3]\n\t"                              \
    "ldr    %[t], [%[a], #8]\n\t"                                          \
    "smlab" H " %[c2], %[t], %[" S "], %[c2]\n\t"                          \
    "smlat" H " %[c3], %[t], %[" S "], %[c3]\n\t"
#define EB_DW4_S2_ROW(W, S, H)                                             \
    "ldr    %[t], [%[a]]\n\t"                                              \
    "smlad  %[c0], %[t], %[" W "], %[c0]\n\t"                              \
    "ldr    %[t], [%[a], #4]\n\t"                                          \
    "smlab" H " %[c0], %[t], %[" S "], %[c0]\n\t"                          \
    "smlad  %[c1], %[t], %[" W "], %[c1]\n\t"                              \
    "ldr    %[t], [%[a], #8]\n\t"                                          \
    "smlab" H " %[c1], %[t], %[" S "], %[c1]\n\t"                          \
    "smlad  %[c2], %[t], %[" W "], %[c2]\n\t"                              \
    "ldr    %[t], [%[a], #12]\n\t"                                         \
    "smlab" H " %[c2], %[t], %[" S "], %[c2]\n\t"                          \
    "smlad  %[c3], %[t], %[" W "], %[c3]\n\t"                              \
    "ldrsh  %[t], [%[a], #16]\n\t"                                         \
    "smlab" H " %[c3], %[t], %[" S "], %[c3]\n\t"
#define EB_DW2_S1_ROW(W, S, H)                                             \
    "ldr    %[t], [%[a]]\n\t"                                              \
    "smlad  %[c0], %[t], %[" W "], %[c0]\n\t"                              \
    "ldr    %[t], [%[a], #2]\n\t"                                          \
    "smlad  %[c1], %[t], %[" W "], %[c1]\n\t"                              \
    "ldr    %[t], [%[a], #4]\n\t"                                          \
    "smlab" H " %[c0], %[t], %[" S "], %[c0]\n\t"                          \
    "smlat" H " %[c1], %[t], %[" S "], %[c1]\n\t"
#define EB_DW2_S2_ROW(W, S, H)                                             \
    "ldr    %[t], [%[a]]\n\t"                                              \
    "smlad  %[c0], %[t], %[" W "], %[c0]\n\t"                              \
    "ldr    %[t], [%[a], #4]\n\t"                                          \
    "smlab" H " %[c0], %[t], %[" S "], %[c0]\n\t"                          \
    "smlad  %[c1], %[t], %[" W "], %[c1]\n\t"                              \
    "ldrsh  %[t], [%[a], #8]\n\t"                                          \
    "smlab" H " %[c1], %[t], %[" S "], %[c1]\n\t"
#define EB_DW1_ROW(W, S, H)                                                \
    "ldr    %[t], [%[a]]\n\t"                                              \
    "smlad  %[c0], %[t], %[" W "], %[c0]\n\t"                              \
    "ldrsh  %[t], [%[a], #4]\n\t"                                          \
    "smlab" H " %[c0], %[t], %[" S "], %[c0]\n\t"
#define EB_DW_ROWS(ROW)                                                    \
    ROW("W0", "S01", "b")                                                  \
    "add    %[a], %[a], %[wpb]\n\t"                                        \
    ROW("W1", "S01", "t")                                                  \
    "add    %[a], %[a], %[wpb]\n\t"                                        \
    ROW("W2", "S2", "t")                                                   \
    "sub    %[a], %[a], %[wpb], lsl #1\n\t"

/* Folded requantization of C (M in MR, H in HR, the high word in HI, which
 * may be HR itself).  Full int8 clamp by SSAT. */
#define EB_DW_RQ(C, MR, HR, HI)                                            \
    "and    %[t], %[" C "], #0x80000000\n\t"                               \
    "sub    %[" HI "], %[" HR "], %[t], lsr #31\n\t"                       \
    "orr    %[t], %[t], #0x40000000\n\t"                                   \
    "smlal  %[t], %[" HI "], %[" C "], %[" MR "]\n\t"                      \
    "asr    %[" HI "], %[" HI "], %[S2]\n\t"                               \
    "ssat   %[" C "], #8, %[" HI "]\n\t"

/* The whole plane: each row as quads, then a pair, then a single output
 * (the tail's two bits, read once into C and N: no instruction in the pair
 * sets the flags), then the step to the next row from where the last pair
 * left a and o. */
#define EB_DW_PLANE(ROW4, ROW2, QUAD_STEP, PAIR_STEP)                      \
    "ldr    %[a], [%[k], #40]\n\t"                                         \
    "ldr    %[o], [%[k], #48]\n\t"                                         \
    "0:\n\t"                                                               \
    "ldr    %[t], [%[k], #32]\n\t"                                         \
    "add    %[t], %[a], %[t]\n\t"                                          \
    "str    %[t], [%[k], #36]\n\t"                                         \
    "cmp    %[t], %[a]\n\t"                                                \
    "beq    2f\n\t"                                                        \
    "1:\n\t"                                                               \
    "ldrd   %[c0], %[c1], [%[k]]\n\t"                                      \
    "ldrd   %[c2], %[c3], [%[k]]\n\t"                                      \
    EB_DW_ROWS(ROW4)                                                       \
    "add    %[a], %[a], #" QUAD_STEP "\n\t"                                \
    "ldrd   %[W0], %[W1], [%[k], #8]\n\t"                                  \
    EB_DW_RQ("c0", "W0", "W1", "W2")                                       \
    EB_DW_RQ("c1", "W0", "W1", "W2")                                       \
    EB_DW_RQ("c2", "W0", "W1", "W2")                                       \
    EB_DW_RQ("c3", "W0", "W1", "W2")                                       \
    "ldr    %[W0], [%[k], #28]\n\t"                                        \
    "strb   %[c0], [%[o]]\n\t"                                             \
    "strb   %[c1], [%[o], %[W0]]\n\t"                                      \
    "add    %[o], %[o], %[W0], lsl #1\n\t"                                 \
    "strb   %[c2], [%[o]]\n\t"                                             \
    "strb   %[c3], [%[o], %[W0]]\n\t"                                      \
    "add    %[o], %[o], %[W0], lsl #1\n\t"                                 \
    "ldrd   %[W0], %[W1], [%[k], #16]\n\t"                                 \
    "ldr    %[W2], [%[k], #24]\n\t"                                        \
    "ldr    %[t], [%[k], #36]\n\t"                                         \
    "cmp    %[a], %[t]\n\t"                                                \
    "bne    1b\n\t"                                                        \
    "2:\n\t"                                                               \
    "ldr    %[t], [%[k], #60]\n\t"                                         \
    "lsls   %[t], %[t], #31\n\t"                                           \
    "bcc    3f\n\t"                                                        \
    "ldrd   %[c0], %[c1], [%[k]]\n\t"                                      \
    EB_DW_ROWS(ROW2)                                                       \
    "add    %[a], %[a], #" PAIR_STEP "\n\t"                                \
    "ldrd   %[c2], %[c3], [%[k], #8]\n\t"                                  \
    EB_DW_RQ("c0", "c2", "c3", "c3")                                       \
    "ldr    %[c3], [%[k], #12]\n\t"                                        \
    EB_DW_RQ("c1", "c2", "c3", "c3")                                       \
    "ldr    %[t], [%[k], #28]\n\t"                                         \
    "strb   %[c0], [%[o]]\n\t"                                             \
    "strb   %[c1], [%[o], %[t]]\n\t"                                       \
    "add    %[o], %[o], %[t], lsl #1\n\t"                                  \
    "3:\n\t"                                                               \
    "bpl    4f\n\t"                                                        \
    "ldr    %[c0], [%[k]]\n\t"                                             \
    EB_DW_ROWS(EB_DW1_ROW)                                                 \
    "ldrd   %[c2], %[c3], [%[k], #8]\n\t"                                  \
    EB_DW_RQ("c0", "c2", "c3", "c3")                                       \
    "strb   %[c0], [%[o]]\n\t"                                             \
    "4:\n\t"                                                               \
    "ldr    %[t], [%[k], #44]\n\t"                                         \
    "ldr    %[c0], [%[k], #52]\n\t"                                        \
    "add    %[a], %[a], %[t]\n\t"                                          \
    "add    %[o], %[o], %[c0]\n\t"                                         \
    "ldr    %[t], [%[k], #56]\n\t"                                         \
    "subs   %[t], %[t], #1\n\t"                                            \
    "str    %[t], [%[k], #56]\n\t"                                         \
    "bne    0b\n\t"

/* 3x3 over a whole plane, stride 1 along the rows: 4 outputs share their
 * loads (5 loads and 8 multiply-accumulates a row of taps), then their
 * folded requantizations with the weights' registers borrowed.  About 82
 * instructions per 4 outputs (36 MACs). */
static void eb_dw3x3_plane_s1(int32_t wpb, eb_dwk *k, int32_t W0, int32_t W1,
                              int32_t W2, int32_t S01, int32_t S2)
{
    const int16_t *a;
    int8_t *o;
    int32_t c0, c1, c2, c3, t;
    __asm__ volatile(EB_DW_PLANE(EB_DW4_S1_ROW, EB_DW2_S1_ROW, "8", "4")
                     : [a] "=&r"(a), [o] "=&r"(o), [c0] "=&r"(c0), [c1] "=&r"(c1),
                       [c2] "=&r"(c2), [c3] "=&r"(c3), [t] "=&r"(t), [W0] "+r"(W0),
                       [W1] "+r"(W1), [W2] "+r"(W2)
                     : [k] "r"(k), [wpb] "r"(wpb), [S01] "r"(S01), [S2] "r"(S2)
                     : "cc", "memory");
}
/* Stride 2 along the rows: out j reads x 2j..2j+2, so the word at x 2j+2
 * serves outputs j and j + 1. */
static void eb_dw3x3_plane_s2(int32_t wpb, eb_dwk *k, int32_t W0, int32_t W1,
                              int32_t W2, int32_t S01, int32_t S2)
{
    const int16_t *a;
    int8_t *o;
    int32_t c0, c1, c2, c3, t;
    __asm__ volatile(EB_DW_PLANE(EB_DW4_S2_ROW, EB_DW2_S2_ROW, "16", "8")
                     : [a] "=&r"(a), [o] "=&r"(o), [c0] "=&r"(c0), [c1] "=&r"(c1),
                       [c2] "=&r"(c2), [c3] "=&r"(c3), [t] "=&r"(t), [W0] "+r"(W0),
                       [W1] "+r"(W1), [W2] "+r"(W2)
                     : [k] "r"(k), [wpb] "r"(wpb), [S01] "r"(S01), [S2] "r"(S2)
                     : "cc", "memory");
}
#define EB_DW_ASM 1
#endif

/* 3x3, dilation 1, stride 1 or 2 along the plane rows, fast
 * requantization, in plane coordinates.  Weights live in registers as int16
 * pairs W_r = (w[r][0], w[r][1]) plus S01 = (w[0][2], w[1][2]), S2 = w[2][2]
 * (w[r][i]: the tap at plane offset (r, i)). */
static void eb_dw3x3_channel(const eb_conv_params *p, const eb_dwgeo *gm,
                             const int8_t *w, const int32_t *bias, int32_t c,
                             const eb_rq_channel *qc, const eb_outq *oq,
                             const int16_t *pl, int8_t *out, eb_dwk *k)
{
    const int32_t cout = p->out_c;
    const int8_t *wc = w + c;
    const int32_t tr = gm->transposed;
#define EB_WT(r, i) ((int32_t)wc[(size_t)(tr ? (i) * 3 + (r) : (r) * 3 + (i)) * (size_t)cout])
    const int32_t w00 = EB_WT(0, 0), w01 = EB_WT(0, 1), w02 = EB_WT(0, 2);
    const int32_t w10 = EB_WT(1, 0), w11 = EB_WT(1, 1), w12 = EB_WT(1, 2);
    const int32_t w20 = EB_WT(2, 0), w21 = EB_WT(2, 1), w22 = EB_WT(2, 2);
#undef EB_WT
    const int32_t init = (bias ? bias[c] : 0) -
                         p->in_zp * (w00 + w01 + w02 + w10 + w11 + w12 + w20 + w21 + w22);
    const int32_t W0 = eb_pack_lo(w00, w01);
    const int32_t W1 = eb_pack_lo(w10, w11);
    const int32_t W2 = eb_pack_lo(w20, w21);
    const int32_t S01 = eb_pack_lo(w02, w12);
    const int32_t S2 = w22;
    const int32_t zp = oq->zp, lo = oq->lo, hi = oq->hi;
    const int32_t wp = gm->pw, sw = gm->si;
    const size_t ostep = (size_t)gm->ostep;
    int32_t oy, ox;
#if defined(EB_DW_ASM)
    if (oq->full && qc->h2 != 0) {
        /* the channel's folded form (eb_rq_prepare: h2 is 0 where it has none) */
        k->init = init;
        k->init2 = init;
        k->mult = qc->mult;
        k->h = qc->h2;
        k->w0 = W0;
        k->w1 = W1;
        k->w2 = W2;
        k->row = pl;
        k->orow = out + c;
        k->rows = gm->rows;
        /* w22 in the high half, the shift in the low byte (ASR reads it) */
        if (sw == 1) {
            eb_dw3x3_plane_s1(wp * 2, k, W0, W1, W2, S01, eb_pack_lo(qc->sh, w22));
        } else {
            eb_dw3x3_plane_s2(wp * 2, k, W0, W1, W2, S01, eb_pack_lo(qc->sh, w22));
        }
        return;
    }
#else
    (void)k;
#endif
    for (oy = 0; oy < gm->rows; ++oy) {
        const int16_t *a = pl + (size_t)oy * gm->sr * wp;
        int8_t *o = out + (size_t)oy * gm->orow + c;
        for (ox = 0; ox + 2 <= gm->len; ox += 2) {
            int32_t acc0 = init, acc1 = init, z, u;
            /* row 0 */
            z = eb_read32(a + 2);
            acc0 = eb_smlabb(z, S01, eb_smlad(eb_read32(a), W0, acc0));
            if (sw == 1) {
                acc1 = eb_smlatb(z, S01, eb_smlad(eb_read32(a + 1), W0, acc1));
            } else {
                u = a[4];
                acc1 = eb_smlabb(u, S01, eb_smlad(z, W0, acc1));
            }
            /* row 1 */
            z = eb_read32(a + wp + 2);
            acc0 = eb_smlabt(z, S01, eb_smlad(eb_read32(a + wp), W1, acc0));
            if (sw == 1) {
                acc1 = eb_smlatt(z, S01, eb_smlad(eb_read32(a + wp + 1), W1, acc1));
            } else {
                u = a[wp + 4];
                acc1 = eb_smlabt(u, S01, eb_smlad(z, W1, acc1));
            }
            /* row 2 */
            z = eb_read32(a + 2 * wp + 2);
            acc0 = eb_smlabb(z, S2, eb_smlad(eb_read32(a + 2 * wp), W2, acc0));
            if (sw == 1) {
                acc1 = eb_smlatb(z, S2, eb_smlad(eb_read32(a + 2 * wp + 1), W2, acc1));
            } else {
                u = a[2 * wp + 4];
                acc1 = eb_smlabb(u, S2, eb_smlad(z, W2, acc1));
            }
            acc0 = eb_wrap_add(eb_rq_fast(acc0, qc), zp);
            acc1 = eb_wrap_add(eb_rq_fast(acc1, qc), zp);
            o[0] = (int8_t)eb_clamp(acc0, lo, hi);
            o[ostep] = (int8_t)eb_clamp(acc1, lo, hi);
            o += 2 * ostep;
            a += 2 * sw;
        }
        if (ox < gm->len) {
            int32_t acc = init;
            acc = eb_smlabb(a[2], S01, eb_smlad(eb_read32(a), W0, acc));
            acc = eb_smlabt(a[wp + 2], S01, eb_smlad(eb_read32(a + wp), W1, acc));
            acc = eb_smlabb(a[2 * wp + 2], S2, eb_smlad(eb_read32(a + 2 * wp), W2, acc));
            *o = (int8_t)eb_clamp(eb_wrap_add(eb_rq_fast(acc, qc), zp), lo, hi);
        }
    }
}

/* Convolve one zp-padded plane (the input's orientation) with the weights
 * of output channel c.  acc starts at bias - zp * sum(w) so the zp-valued
 * padding and the raw input values give exactly sum over valid taps of
 * w * (x - zp). */
static void eb_dw_channel(const eb_conv_params *p, const int8_t *w,
                          const int32_t *bias, const eb_outq *oq, int32_t c,
                          const int16_t *pl, int32_t wp, int8_t *out)
{
    const int32_t cout = p->out_c;
    const int32_t sh = p->stride_h, sw = p->stride_w;
    int32_t wsum = 0, init, oy, ox, ky, kx;
    for (ky = 0; ky < p->k_h * p->k_w; ++ky) {
        wsum += w[(size_t)ky * cout + c];
    }
    init = (bias ? bias[c] : 0) - p->in_zp * wsum;
    for (oy = 0; oy < p->out_h; ++oy) {
        for (ox = 0; ox < p->out_w; ++ox) {
            int32_t acc = init;
            for (ky = 0; ky < p->k_h; ++ky) {
                const int16_t *row = pl + ((size_t)oy * sh + (size_t)ky * p->dil_h) * wp +
                                     (size_t)ox * sw;
                const int8_t *wk = w + (size_t)ky * p->k_w * cout + c;
                for (kx = 0; kx < p->k_w; ++kx) {
                    acc += row[(size_t)kx * p->dil_w] * wk[(size_t)kx * cout];
                }
            }
            out[((size_t)oy * p->out_w + ox) * cout + c] = eb_outq_apply(oq, acc, c);
        }
    }
}

static void eb_dw_dsp(const eb_conv_params *p, const eb_requant *rq,
                      const int8_t *in, const int8_t *w, const int32_t *bias,
                      int8_t *out, void *scratch)
{
    const size_t pstride = EB_ALIGN_UP(eb_dw_plane_elems(p) * sizeof(int16_t)) / sizeof(int16_t);
    eb_rq_channel *tab = (eb_rq_channel *)scratch;
    int16_t *planes = (int16_t *)(void *)((uint8_t *)scratch + eb_rq_table_bytes(p->out_c));
    eb_outq oq;
    eb_dwgeo gm;
    eb_dwk k;
    int32_t ic0, fast3;
    eb_outq_init(&oq, rq, p->out_c, tab, p->out_zp, p->act_min, p->act_max);
    fast3 = p->k_h == 3 && p->k_w == 3 && p->dil_h == 1 && p->dil_w == 1 && oq.fast &&
            (p->stride_w == 1 || p->stride_w == 2);
    eb_dw_geometry(p, fast3 && (p->stride_h == 1 || p->stride_h == 2) &&
                          eb_dw3x3_cost(p->out_w, p->out_h) < eb_dw3x3_cost(p->out_h, p->out_w),
                   &gm);
    memset(&k, 0, sizeof k);
    k.ostep = gm.ostep;
    k.quad_bytes = 8 * gm.si * (gm.len >> 2);
    k.row_adv = 2 * (gm.sr * gm.pw - gm.si * (gm.len & ~1));
    k.orow_adv = gm.orow - gm.ostep * (gm.len & ~1);
    k.tail = gm.len & 3;
    for (ic0 = 0; ic0 < p->in_c; ic0 += 4) {
        const int32_t g = EB_MIN(4, p->in_c - ic0);
        int32_t j, m;
        eb_dw_fill_planes(&gm, p->in_zp, in, p->in_c, ic0, g, planes, pstride, ic0 == 0);
        for (j = 0; j < g; ++j) {
            for (m = 0; m < p->depth_mult; ++m) {
                const int32_t c = (ic0 + j) * p->depth_mult + m;
                const int16_t *pl = planes + (size_t)j * pstride;
                if (fast3) {
                    eb_dw3x3_channel(p, &gm, w, bias, c, &oq.tab[c], &oq, pl, out, &k);
                } else {
                    eb_dw_channel(p, w, bias, &oq, c, pl, gm.pw, out);
                }
            }
        }
    }
}

static void eb_fc_dsp(const eb_fc_params *p, const eb_requant *rq,
                      const int8_t *in, const int8_t *w, const int32_t *bias,
                      int8_t *out, void *scratch)
{
    eb_rq_channel *tab = (eb_rq_channel *)scratch;
    int16_t *col = (int16_t *)(void *)((uint8_t *)scratch + eb_rq_table_bytes(p->out_features));
    eb_outq oq;
    int32_t b;
    eb_outq_init(&oq, rq, p->out_features, tab, p->out_zp, p->act_min, p->act_max);
    for (b = 0; b < p->batches; ++b) {
        eb_widen_vec(in + (size_t)b * p->in_features, p->in_features, p->in_zp, col, 4);
        eb_mm_1col(w, p->in_features, p->out_features, col, bias, &oq,
                   out + (size_t)b * p->out_features);
    }
}

/* ------------------------------------------------------------------------ */
/* Public entry points                                                       */
/* ------------------------------------------------------------------------ */

int eb_conv2d(const eb_conv_params *p, const eb_requant *rq,
              const int8_t *input, const int8_t *weights, const int32_t *bias,
              int8_t *output, void *scratch)
{
    if (p == NULL || !eb_conv_geom_ok(p) || p->groups <= 0 ||
        p->in_c % p->groups != 0 || p->out_c % p->groups != 0 ||
        !eb_rq_ok(rq, p->out_c) || input == NULL || weights == NULL ||
        output == NULL) {
        return EB_ERR_PARAM;
    }
    if (p->groups == 1 && scratch != NULL) {
        eb_conv2d_dsp(p, rq, input, weights, bias, output, scratch);
        return EB_OK;
    }
    eb_conv2d_portable(p, rq, input, weights, bias, output);
    return EB_OK;
}

int eb_depthwise_conv2d(const eb_conv_params *p, const eb_requant *rq,
                        const int8_t *input, const int8_t *weights,
                        const int32_t *bias, int8_t *output, void *scratch)
{
    if (p == NULL || !eb_conv_geom_ok(p) || p->depth_mult <= 0 ||
        p->out_c != p->in_c * p->depth_mult || !eb_rq_ok(rq, p->out_c) ||
        input == NULL || weights == NULL || output == NULL) {
        return EB_ERR_PARAM;
    }
    if (scratch != NULL) {
        eb_dw_dsp(p, rq, input, weights, bias, output, scratch);
        return EB_OK;
    }
    eb_dw_portable(p, rq, input, weights, bias, output);
    return EB_OK;
}

int eb_fully_connected(const eb_fc_params *p, const eb_requant *rq,
                       const int8_t *input, const int8_t *weights,
                       const int32_t *bias, int8_t *output, void *scratch)
{
    if (p == NULL || p->batches <= 0 || p->in_features <= 0 ||
        p->out_features <= 0 || !eb_act_ok(p->act_min, p->act_max) ||
        !eb_rq_ok(rq, p->out_features) || input == NULL || weights == NULL ||
        output == NULL) {
        return EB_ERR_PARAM;
    }
    if (scratch != NULL) {
        eb_fc_dsp(p, rq, input, weights, bias, output, scratch);
        return EB_OK;
    }
    eb_fc_portable(p, rq, input, weights, bias, output);
    return EB_OK;
}

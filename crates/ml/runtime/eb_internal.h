/*
 * eb_internal.h -- private helpers shared by the eb_*.c kernel files.
 *
 * Owns: thin wrappers over the ACLE DSP intrinsics (or their exact portable
 * emulation where the core lacks them, or under EB_EMULATE_DSP), unaligned loads,
 * and the fast exact requantization used by the hot kernels.
 * Not part of the kernel API.
 */
#ifndef EB_INTERNAL_H
#define EB_INTERNAL_H

#include <string.h>
#include "eb_kernels.h"

/* The scratch path of the MAC kernels is compiled on every build (the
 * generated model may run them in place, which only that path allows):
 * with the DSP intrinsics on cores that have them (EB_DSP 1), with their
 * exact emulation elsewhere (EB_DSP 0). */
#if defined(__ARM_FEATURE_DSP) && !defined(EB_EMULATE_DSP)
#define EB_DSP 1
#else
#define EB_DSP 0
#endif

#if defined(__GNUC__)
#define EB_INLINE static __inline__ __attribute__((always_inline))
#else
#define EB_INLINE static
#endif

#if defined(__GNUC__)
#define EB_NOINLINE __attribute__((noinline))
#else
#define EB_NOINLINE
#endif

#define EB_MIN(a, b) ((a) < (b) ? (a) : (b))
#define EB_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Round a byte count up to the scratch alignment. */
#define EB_ALIGN_UP(n) (((n) + (EB_SCRATCH_ALIGN - 1)) & ~(size_t)(EB_SCRATCH_ALIGN - 1))

/* Wrapping (two's complement) int32 add and left shift. */
EB_INLINE int32_t eb_wrap_add(int32_t a, int32_t b)
{
    return (int32_t)((uint32_t)a + (uint32_t)b);
}
EB_INLINE int32_t eb_wrap_shl(int32_t a, int32_t s)
{
    return (int32_t)((uint32_t)a << s);
}
EB_INLINE int32_t eb_clamp(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/* Unaligned little-endian 32-bit load / store (memcpy compiles to LDR/STR). */
EB_INLINE int32_t eb_read32(const void *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}
EB_INLINE void eb_write32(void *p, int32_t v)
{
    memcpy(p, &v, 4);
}

/* ------------------------------------------------------------------------ */
/* DSP intrinsics: real ACLE on Arm cores with the DSP extension, else exact */
/* emulation (always under EB_EMULATE_DSP).                                  */
/* All operate on int32_t holding packed halfwords/bytes.                    */
/* ------------------------------------------------------------------------ */
#if EB_DSP
#include <arm_acle.h>
#define EB_ARM_ASM 1
EB_INLINE int32_t eb_smlad(int32_t a, int32_t b, int32_t acc)
{
    return __smlad(a, b, acc);
}
EB_INLINE int32_t eb_smlabb(int32_t a, int32_t b, int32_t acc)
{
    return __smlabb(a, b, acc);
}
EB_INLINE int32_t eb_smlatt(int32_t a, int32_t b, int32_t acc)
{
    return __smlatt(a, b, acc);
}
EB_INLINE int32_t eb_smlatb(int32_t a, int32_t b, int32_t acc)
{
    return __smlatb(a, b, acc);
}
EB_INLINE int32_t eb_smlabt(int32_t a, int32_t b, int32_t acc)
{
    return __smlabt(a, b, acc);
}
EB_INLINE int32_t eb_sxtb16(int32_t a)
{
    return __sxtb16(a);
}
/* sxtb16 of (a ror 8): bytes 1 and 3 sign-extended to halfwords. */
EB_INLINE int32_t eb_sxtb16_ror8(int32_t a)
{
#if defined(__GNUC__) && !defined(__clang__)
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(a));
    return r;
#else
    uint32_t u = (uint32_t)a;
    return __sxtb16((int32_t)((u >> 8) | (u << 24)));
#endif
}
EB_INLINE int32_t eb_sadd16(int32_t a, int32_t b)
{
    return __sadd16(a, b);
}
/* (a.lo16, b.lo16) -> halfwords (low = a.lo, high = b.lo): PKHBT */
EB_INLINE int32_t eb_pack_lo(int32_t a, int32_t b)
{
#if defined(__GNUC__)
    int32_t r;
    __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(a), "r"(b));
    return r;
#else
    return (int32_t)(((uint32_t)a & 0xFFFFu) | ((uint32_t)b << 16));
#endif
}
/* (a.hi16, b.hi16) -> halfwords (low = a.hi, high = b.hi): PKHTB */
EB_INLINE int32_t eb_pack_hi(int32_t a, int32_t b)
{
#if defined(__GNUC__)
    int32_t r;
    __asm__("pkhtb %0, %2, %1, asr #16" : "=r"(r) : "r"(a), "r"(b));
    return r;
#else
    return (int32_t)(((uint32_t)a >> 16) | ((uint32_t)b & 0xFFFF0000u));
#endif
}
#else /* no DSP extension, or EB_EMULATE_DSP: bit-exact portable models */
EB_INLINE int32_t eb_lo16(int32_t a) { return (int32_t)(int16_t)(uint16_t)((uint32_t)a & 0xFFFFu); }
EB_INLINE int32_t eb_hi16(int32_t a) { return (int32_t)(int16_t)(uint16_t)((uint32_t)a >> 16); }
EB_INLINE int32_t eb_smlad(int32_t a, int32_t b, int32_t acc)
{
    uint32_t r = (uint32_t)acc + (uint32_t)(eb_lo16(a) * eb_lo16(b)) +
                 (uint32_t)(eb_hi16(a) * eb_hi16(b));
    return (int32_t)r;
}
EB_INLINE int32_t eb_smlabb(int32_t a, int32_t b, int32_t acc)
{
    return (int32_t)((uint32_t)acc + (uint32_t)(eb_lo16(a) * eb_lo16(b)));
}
EB_INLINE int32_t eb_smlatt(int32_t a, int32_t b, int32_t acc)
{
    return (int32_t)((uint32_t)acc + (uint32_t)(eb_hi16(a) * eb_hi16(b)));
}
EB_INLINE int32_t eb_smlatb(int32_t a, int32_t b, int32_t acc)
{
    return (int32_t)((uint32_t)acc + (uint32_t)(eb_hi16(a) * eb_lo16(b)));
}
EB_INLINE int32_t eb_smlabt(int32_t a, int32_t b, int32_t acc)
{
    return (int32_t)((uint32_t)acc + (uint32_t)(eb_lo16(a) * eb_hi16(b)));
}
EB_INLINE int32_t eb_sxtb16(int32_t a)
{
    uint32_t u = (uint32_t)a;
    uint32_t lo = (uint32_t)(int32_t)(int8_t)(uint8_t)(u & 0xFFu) & 0xFFFFu;
    uint32_t hi = (uint32_t)(int32_t)(int8_t)(uint8_t)((u >> 16) & 0xFFu) & 0xFFFFu;
    return (int32_t)(lo | (hi << 16));
}
EB_INLINE int32_t eb_sxtb16_ror8(int32_t a)
{
    uint32_t u = (uint32_t)a;
    return eb_sxtb16((int32_t)((u >> 8) | (u << 24)));
}
EB_INLINE int32_t eb_sadd16(int32_t a, int32_t b)
{
    uint32_t lo = (uint32_t)(eb_lo16(a) + eb_lo16(b)) & 0xFFFFu;
    uint32_t hi = (uint32_t)(eb_hi16(a) + eb_hi16(b)) & 0xFFFFu;
    return (int32_t)(lo | (hi << 16));
}
EB_INLINE int32_t eb_pack_lo(int32_t a, int32_t b)
{
    return (int32_t)(((uint32_t)a & 0xFFFFu) | ((uint32_t)b << 16));
}
EB_INLINE int32_t eb_pack_hi(int32_t a, int32_t b)
{
    return (int32_t)(((uint32_t)a >> 16) | ((uint32_t)b & 0xFFFF0000u));
}
#endif

/* ------------------------------------------------------------------------ */
/* Fast exact requantization.                                                */
/*                                                                           */
/* For a channel with left shift 0 and right shift e >= 1, the int8 arithmetic's    */
/* RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(a, M), e) equals    */
/*     (a*M + 2^30 + 2^(30+e) - [a < 0] * 2^31) >> (31 + e)                  */
/* in exact 64-bit arithmetic (for M >= 0).  Derivation: SRDHM(a, M) is       */
/* floor((a*M + 2^30) / 2^31) (the negative nudge gives the same floor);     */
/* RDBP(x, e) is floor((x + 2^(e-1) - [x < 0]) / 2^e); nested floors merge;  */
/* [x < 0] may be replaced by [a < 0] (the only difference, a = -1 with      */
/* M = 2^30, yields 0 either way).  Since 31 + e >= 32 the result is the     */
/* high word of the sum shifted right by e - 1.  Channels with left > 0 or   */
/* e == 0 use the reference eb_mbqm.                                         */
/* ------------------------------------------------------------------------ */
typedef struct {
    int32_t mult;   /*  0: M                                                */
    int32_t h2;     /*  4: folded form (eb_rq2_make): 2^(e-2) + zp 2^(e-1)  */
    int32_t sh;     /*  8: e - 1                                            */
    int32_t bias;   /* 12: the conv kernels' bias (eb_conv2d's DSP path)    */
    uint32_t b_lo;  /* 16: low word of B = 2^30 + 2^(30+e)                  */
    int32_t b_hi;   /* 20: high word of B                                   */
} eb_rq_channel;    /* 24 bytes; the scratch size functions count on it;   */
                    /* the assembly kernels use the offsets                 */

/* Fill `n_out` per-channel entries from rq (per tensor if rq->n == 1).
 * Returns 1 if every channel qualifies for the fast form, else 0
 * (then the kernels call eb_requantize per output).  *all_folded is set to
 * 1 if every channel also qualifies for the folded form with zp_out. */
int eb_rq_prepare(const eb_requant *rq, int32_t n_out, eb_rq_channel *tab,
                  int32_t zp_out, int *all_folded);

/* MBQM via the fast form (valid only for entries prepared as fast). */
EB_INLINE int32_t eb_rq_fast(int32_t a, const eb_rq_channel *q)
{
#if EB_DSP && defined(EB_ARM_ASM) && defined(__GNUC__)
    uint32_t lo = q->b_lo;
    int32_t hi = q->b_hi;
    int32_t t;
    __asm__("smlal %0, %1, %3, %4\n\t"
            "and   %2, %3, #0x80000000\n\t"
            "adds  %0, %0, %2\n\t"
            "adc   %1, %1, %3, asr #31"
            : "+&r"(lo), "+&r"(hi), "=&r"(t)
            : "r"(a), "r"(q->mult)
            : "cc");
    return hi >> q->sh;
#else
    int64_t t = (int64_t)(((uint64_t)(uint32_t)q->b_hi << 32) | q->b_lo);
    t += (int64_t)a * (int64_t)q->mult;
    if (a < 0) {
        t -= (int64_t)1 << 31;
    }
    return (int32_t)(t >> 32) >> q->sh;
#endif
}

/* ------------------------------------------------------------------------ */
/* Folded fast form ("rq2"): for 2 <= e <= 24 the output zero point can be   */
/* added inside the 64-bit sum, since floor(T / 2^n) + zp equals             */
/* floor((T + zp 2^n) / 2^n).  With n = 32 + (e - 1) and                     */
/*   H = 2^(e-2) + zp 2^(e-1)   (fits in int32 for e <= 24),                 */
/* the constant part of T is H * 2^32 + 2^30 - [a < 0] 2^31, i.e. low word   */
/* 0x40000000 | (a & 0x80000000) and high word H - [a < 0]:                  */
/*   MBQM(a) + zp = hi32(a*M + that) >> (e - 1).                             */
/* Five instructions on Arm: AND, SUB, ORR, SMLAL, ASR.                      */
/* ------------------------------------------------------------------------ */
typedef struct {
    int32_t mult; /* M                          */
    int32_t h;    /* 2^(e-2) + zp * 2^(e-1)     */
    int32_t sh;   /* e - 1                      */
} eb_rq2_const;

/* Returns 1 and fills q if (M, S, zp) allows the folded form. */
EB_INLINE int eb_rq2_make(int32_t mult, int32_t shift, int32_t zp, eb_rq2_const *q)
{
    const int32_t e = -shift;
    q->mult = 0;
    q->h = 0;
    q->sh = 0;
    if (mult < 0 || e < 2 || e > 24 || zp < -128 || zp > 127) {
        return 0;
    }
    q->mult = mult;
    q->h = (int32_t)((1 << (e - 2)) + zp * (1 << (e - 1)));
    q->sh = e - 1;
    return 1;
}

/* MBQM(a, M, S) + zp by the folded form. */
EB_INLINE int32_t eb_rq2_apply(int32_t a, int32_t mult, int32_t h, int32_t sh)
{
#if EB_DSP && defined(EB_ARM_ASM) && defined(__GNUC__)
    int32_t t, hi;
    __asm__("and   %[t], %[a], #0x80000000\n\t"
            "sub   %[hi], %[h], %[t], lsr #31\n\t"
            "orr   %[t], %[t], #0x40000000\n\t"
            "smlal %[t], %[hi], %[a], %[m]"
            : [t] "=&r"(t), [hi] "=&r"(hi)
            : [a] "r"(a), [m] "r"(mult), [h] "r"(h)
            : "cc");
    return hi >> sh;
#else
    int64_t t = (int64_t)h * ((int64_t)1 << 32) + ((int64_t)1 << 30);
    if (a < 0) {
        t -= (int64_t)1 << 31;
    }
    t += (int64_t)a * (int64_t)mult;
    return (int32_t)(t >> 32) >> sh;
#endif
}

/* Saturate to int8 then apply the fused clamp. */
EB_INLINE int32_t eb_out8(int32_t r, int32_t zp, int32_t lo, int32_t hi)
{
    return eb_clamp(eb_wrap_add(r, zp), lo, hi);
}

#endif /* EB_INTERNAL_H */

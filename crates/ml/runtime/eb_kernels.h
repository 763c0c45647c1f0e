/*
 * eb_kernels.h -- edgebuild int8 kernel runtime (C99, freestanding).
 *
 * Every kernel implements one kernel of the edgebuild int8 arithmetic
 * (SPEC.md, "int8 arithmetic") bit for bit.  Layout is NHWC, batch 1.
 *
 * Conventions shared by all kernels:
 *  - Parameters come in a plain struct (dims, zero points, clamps), data as
 *    pointers.  Nothing is allocated: kernels that need scratch memory take a
 *    `void *scratch` of at least `eb_<kernel>_scratch_bytes(params)` bytes,
 *    aligned to EB_SCRATCH_ALIGN.  The caller (generated code) plans it in its
 *    static arena.  A NULL scratch selects the portable code path, which
 *    needs none and gives the same bits (SPEC.md, "`runtime`", arena goal
 *    `small`).  Kernels without scratch still have a _scratch_bytes
 *    function (returning 0) so that the planner can treat all kernels alike.
 *  - Every kernel returns EB_OK, or EB_ERR_PARAM when the parameters are
 *    inconsistent (e.g. an output size that does not follow the int8 arithmetic's
 *    formula).  Nothing is written on error.
 *  - Requantization constants (multiplier M, shift S) are TFLite
 *    QuantizeMultiplier outputs computed at build time (SPEC.md, "int8 arithmetic"):
 *    M in [2^30, 2^31) or M == 0, S in [-31, 30].
 *  - Integer overflow follows two's complement wrapping where the int8 arithmetic's
 *    reference code would overflow (x * (1 << left), MBQM(...) + zp).  The
 *    Rust reference does the same.
 *  - Input and output buffers of one call must not overlap (except in place,
 *    below).
 *
 * In place (SPEC.md, "`runtime`", in place): with a scratch, eb_conv2d
 * (groups 1) may write its output over its own input when the output starts
 * at least the planner's gap before the input (output = input - gap, the gap
 * computed from the geometry as SPEC.md states it), and eb_depthwise_conv2d
 * (depth_mult 1) when the output starts at the input.  eb_add, eb_mul and
 * eb_lut may write over an input of the output's shape.  Nothing else runs
 * in place.
 *
 * Build-time switches:
 *  - __ARM_FEATURE_DSP (set by the compiler for Cortex-M4/M7/M33/M55...):
 *    the scratch paths of conv, depthwise and fully connected use the ACLE
 *    DSP intrinsics; on other cores the same code runs with the intrinsics
 *    emulated in portable C.
 *  - EB_EMULATE_DSP: emulate the intrinsics even where the core has them
 *    (for testing the emulation).
 */
#ifndef EB_KERNELS_H
#define EB_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EB_OK 0
#define EB_ERR_PARAM (-1)

/* Required alignment of the scratch pointer (bytes). */
#define EB_SCRATCH_ALIGN 16

/* Maximum rank of the broadcasting / shape kernels. */
#define EB_MAX_DIMS 4

/* ------------------------------------------------------------------------ */
/* Requantization                                                            */
/* ------------------------------------------------------------------------ */

/* Per-channel (n == number of output channels) or per-tensor (n == 1)
 * requantization constants: real multiplier ~= mult[c] * 2^(shift[c] - 31). */
typedef struct {
    const int32_t *mult;
    const int32_t *shift;
    int32_t n;
} eb_requant;

/* The int8 arithmetic's MultiplyByQuantizedMultiplier (exact reference form). */
int32_t eb_mbqm(int32_t x, int32_t mult, int32_t shift);

/* clamp(MBQM(acc, mult, shift) + zp, act_min, act_max) as int32 -- the
 * requantization of one accumulator, exactly as the int8 arithmetic states it. */
int32_t eb_requantize(int32_t acc, int32_t mult, int32_t shift, int32_t zp,
                      int32_t act_min, int32_t act_max);

/* ------------------------------------------------------------------------ */
/* Convolutions                                                              */
/* ------------------------------------------------------------------------ */

/* Output size of one spatial dim, the formula of SPEC.md, "int8 arithmetic":
 * (in + pad0 + pad1 - dil*(k-1) - 1) / stride + 1; returns <= 0 if empty. */
int32_t eb_conv_out_dim(int32_t in, int32_t k, int32_t stride, int32_t dil,
                        int32_t pad0, int32_t pad1);

typedef struct {
    int32_t in_h, in_w, in_c;      /* input  [1, in_h, in_w, in_c]           */
    int32_t out_h, out_w, out_c;   /* output [1, out_h, out_w, out_c]        */
    int32_t k_h, k_w;              /* kernel size                            */
    int32_t stride_h, stride_w;    /* >= 1                                   */
    int32_t dil_h, dil_w;          /* >= 1                                   */
    int32_t pad_top, pad_left, pad_bottom, pad_right; /* >= 0, asymmetric ok */
    int32_t groups;                /* eb_conv2d: in_c % groups == 0 and
                                      out_c % groups == 0 (1 = plain conv)   */
    int32_t depth_mult;            /* eb_depthwise_conv2d: out_c = in_c * dm */
    int32_t in_zp, out_zp;         /* activation zero points                 */
    int32_t act_min, act_max;      /* fused clamp, within [-128, 127]        */
} eb_conv_params;

/* Conv2D (groups == 1) and grouped conv (groups > 1).
 * weights: [out_c][k_h][k_w][in_c / groups] int8, bias: [out_c] int32
 * (may be NULL = zeros), rq: per out channel or per tensor. */
size_t eb_conv2d_scratch_bytes(const eb_conv_params *p);
int eb_conv2d(const eb_conv_params *p, const eb_requant *rq,
              const int8_t *input, const int8_t *weights, const int32_t *bias,
              int8_t *output, void *scratch);

/* DepthwiseConv2D: out_c == in_c * depth_mult, output channel c reads input
 * channel c / depth_mult.  weights: [k_h][k_w][out_c] int8. */
size_t eb_depthwise_conv2d_scratch_bytes(const eb_conv_params *p);
int eb_depthwise_conv2d(const eb_conv_params *p, const eb_requant *rq,
                        const int8_t *input, const int8_t *weights,
                        const int32_t *bias, int8_t *output, void *scratch);

/* FullyConnected: `batches` rows of in_features each.
 * weights: [out_features][in_features] int8, bias [out_features] (or NULL). */
typedef struct {
    int32_t batches, in_features, out_features;
    int32_t in_zp, out_zp;
    int32_t act_min, act_max;
} eb_fc_params;

size_t eb_fully_connected_scratch_bytes(const eb_fc_params *p);
int eb_fully_connected(const eb_fc_params *p, const eb_requant *rq,
                       const int8_t *input, const int8_t *weights,
                       const int32_t *bias, int8_t *output, void *scratch);

/* ------------------------------------------------------------------------ */
/* Elementwise binary with NumPy broadcasting (shapes right-aligned to 4-D,  */
/* a dim of 1 broadcasts; in shapes must equal out shape or 1 per dim).      */
/* ------------------------------------------------------------------------ */

typedef struct {
    int32_t out_shape[EB_MAX_DIMS];
    int32_t in1_shape[EB_MAX_DIMS];
    int32_t in2_shape[EB_MAX_DIMS];
    int32_t in1_zp, in2_zp, out_zp;
    int32_t left_shift;            /* 20 (SPEC.md, "int8 arithmetic")                          */
    int32_t in1_mult, in1_shift;   /* m1 = s1 / (2 max(s1, s2))              */
    int32_t in2_mult, in2_shift;   /* m2 = s2 / (2 max(s1, s2))              */
    int32_t out_mult, out_shift;   /* mo = 2 max(s1,s2) / (2^20 s_out)       */
    int32_t act_min, act_max;
} eb_add_params;

size_t eb_add_scratch_bytes(const eb_add_params *p);
int eb_add(const eb_add_params *p, const int8_t *in1, const int8_t *in2,
           int8_t *output);

typedef struct {
    int32_t out_shape[EB_MAX_DIMS];
    int32_t in1_shape[EB_MAX_DIMS];
    int32_t in2_shape[EB_MAX_DIMS];
    int32_t in1_zp, in2_zp, out_zp;
    int32_t out_mult, out_shift;   /* m = s1 s2 / s_out                      */
    int32_t act_min, act_max;
} eb_mul_params;

size_t eb_mul_scratch_bytes(const eb_mul_params *p);
int eb_mul(const eb_mul_params *p, const int8_t *in1, const int8_t *in2,
           int8_t *output);

/* ------------------------------------------------------------------------ */
/* Pooling                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct {
    int32_t in_h, in_w, channels;
    int32_t out_h, out_w;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
    int32_t count_include_pad;     /* average pool only: 0 or 1              */
    int32_t zp;                    /* input (= output) zero point            */
    int32_t act_min, act_max;
} eb_pool_params;

size_t eb_max_pool2d_scratch_bytes(const eb_pool_params *p);
int eb_max_pool2d(const eb_pool_params *p, const int8_t *input, int8_t *output);
size_t eb_avg_pool2d_scratch_bytes(const eb_pool_params *p);
int eb_avg_pool2d(const eb_pool_params *p, const int8_t *input, int8_t *output);

typedef struct {
    int32_t in_h, in_w, channels;  /* output [1, 1, 1, channels]             */
    int32_t act_min, act_max;
} eb_global_pool_params;

size_t eb_global_avg_pool_scratch_bytes(const eb_global_pool_params *p);
int eb_global_avg_pool(const eb_global_pool_params *p, const int8_t *input,
                       int8_t *output);

/* ------------------------------------------------------------------------ */
/* Softmax (last axis; output scale 1/256, zero point -128).                 */
/* table[d] = round(2^24 exp(-s_in d)), d = 0..255, built at build time.     */
/* ------------------------------------------------------------------------ */

typedef struct {
    int32_t rows, cols;
} eb_softmax_params;

size_t eb_softmax_scratch_bytes(const eb_softmax_params *p);
int eb_softmax(const eb_softmax_params *p, const uint32_t *table,
               const int8_t *input, int8_t *output);

/* Unary elementwise by table: out[i] = table[in[i] + 128]. In place is ok. */
size_t eb_lut_scratch_bytes(int32_t n);
int eb_lut(int32_t n, const int8_t *table, const int8_t *input, int8_t *output);

/* ------------------------------------------------------------------------ */
/* Data movement                                                             */
/* ------------------------------------------------------------------------ */

/* Concat along an axis: the output is viewed as [outer][sum of chunks] where
 * input i contributes a chunk of axis_size_i * inner elements per outer row. */
typedef struct {
    const int8_t *data;
    int32_t axis_size;
    int32_t requant;               /* 0: copy; 1: requantize with the fields */
    int32_t zp;                    /* input zero point                       */
    int32_t mult, shift;           /* m = s_in / s_out                       */
} eb_concat_input;

typedef struct {
    int32_t outer, inner;          /* products of dims before / after axis   */
    int32_t n_inputs;
    int32_t out_zp;
} eb_concat_params;

size_t eb_concat_scratch_bytes(const eb_concat_params *p);
int eb_concat(const eb_concat_params *p, const eb_concat_input *inputs,
              int8_t *output);

/* Transpose of up to 4 dims (pad shapes on the left with 1, perm with the
 * identity): out_shape[i] = in_shape[perm[i]]. */
typedef struct {
    int32_t in_shape[EB_MAX_DIMS];
    int32_t perm[EB_MAX_DIMS];
} eb_transpose_params;

size_t eb_transpose_scratch_bytes(const eb_transpose_params *p);
int eb_transpose(const eb_transpose_params *p, const int8_t *input,
                 int8_t *output);

/* Constant pad (value = the zero point, i.e. real 0):
 * out_shape[i] = pad_before[i] + in_shape[i] + pad_after[i]. */
typedef struct {
    int32_t in_shape[EB_MAX_DIMS];
    int32_t pad_before[EB_MAX_DIMS];
    int32_t pad_after[EB_MAX_DIMS];
    int32_t value;
} eb_pad_params;

size_t eb_pad_scratch_bytes(const eb_pad_params *p);
int eb_pad(const eb_pad_params *p, const int8_t *input, int8_t *output);

/* 1 if the scratch paths use the core's DSP instructions (ACLE), 0 if they
 * emulate them. */
int eb_kernels_dsp_path(void);

#ifdef __cplusplus
}
#endif

#endif /* EB_KERNELS_H */

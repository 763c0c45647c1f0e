#!/usr/bin/env python3
"""Generate small ONNX test cases (+ onnxruntime reference outputs) for edgebuild.

Usage:  python3 make_cases.py OUT_DIR

For every good case NAME it writes into OUT_DIR:
    NAME.onnx            the model (one float32 graph input "x", one output "y")
    NAME.input.npy       float32 input, batch 1 (NCHW where 4-D), from default_rng(seed)
    NAME.expected.npy    onnxruntime's output (CPUExecutionProvider, 1 thread), float32
    (NAME.data           only for the external-data case)
and deliberately broken files bad_*.onnx for error tests.  cases.json lists all of them.

Determinism: every random draw comes from numpy.random.default_rng(seed) with a seed
derived from the case name (crc32), models are serialized by protobuf (deterministic for
ONNX's map-free schema), npy/json writing is byte-stable, so two runs give identical
bytes (checked by ./check_determinism.sh).

Requires: numpy, onnx (tested 1.23.2), onnxruntime (tested 1.32.0).
"""

import json
import os
import sys
import zlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64
PRODUCER = "edgebuild-make_cases"
DEFAULT_OPSET = 13


def seed_of(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


# --------------------------------------------------------------------------------------
# Builder: collects nodes/initializers for one single-input single-output model
# --------------------------------------------------------------------------------------
class B:
    def __init__(self, name, in_shape, opset=DEFAULT_OPSET, desc="", in_scale=1.0):
        self.name = name
        self.opset = opset
        self.desc = desc
        self.in_shape = list(in_shape)
        seed = seed_of(name)
        self.seed = seed
        # input and weights come from two independent seeded generators
        self.rng_x = np.random.default_rng(seed)
        self.rng_w = np.random.default_rng(seed + 1)
        self.x = (self.rng_x.standard_normal(self.in_shape) * in_scale).astype(np.float32)
        self.nodes = []
        self.inits = []
        self.n = 0
        self.notes = []

    def _fresh(self, prefix):
        self.n += 1
        return f"{prefix}_{self.n}"

    # ---- initializers ----
    def tensor(self, arr, prefix="c"):
        name = self._fresh(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def i64(self, vals, prefix="shape"):
        return self.tensor(np.asarray(vals, dtype=np.int64), prefix)

    def f32(self, vals, prefix="c"):
        return self.tensor(np.asarray(vals, dtype=np.float32), prefix)

    def randw(self, shape, scale=None, prefix="w"):
        if scale is None:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            scale = 1.0 / np.sqrt(max(fan_in, 1))
        return self.f32(self.rng_w.standard_normal(shape) * scale, prefix)

    def uniform(self, shape, lo, hi, prefix="u"):
        return self.f32(self.rng_w.uniform(lo, hi, shape), prefix)

    # ---- nodes ----
    def op(self, op_type, inputs, n_out=1, domain=None, **attrs):
        outs = [self._fresh(op_type.lower()) for _ in range(n_out)]
        kw = {}
        if domain is not None:
            kw["domain"] = domain
        node = helper.make_node(op_type, list(inputs), outs, name=f"{op_type}_{self.n}", **kw, **attrs)
        self.nodes.append(node)
        return outs[0] if n_out == 1 else outs

    # ---- common blocks ----
    def conv(self, x, cin, cout, k, group=1, bias=True, **attrs):
        kh, kw = (k, k) if isinstance(k, int) else k
        w = self.randw([cout, cin // group, kh, kw], prefix="conv_w")
        ins = [x, w]
        if bias:
            ins.append(self.randw([cout], scale=0.1, prefix="conv_b"))
        if not attrs.pop("_omit_kernel_shape", False):
            attrs.setdefault("kernel_shape", [kh, kw])
        if group != 1:
            attrs["group"] = group
        return self.op("Conv", ins, **attrs)

    def bn(self, x, c, epsilon=1e-5):
        scale = self.uniform([c], 0.5, 1.5, "bn_scale")
        bias = self.randw([c], 0.1, "bn_bias")
        mean = self.randw([c], 0.1, "bn_mean")
        var = self.uniform([c], 0.5, 2.0, "bn_var")
        return self.op("BatchNormalization", [x, scale, bias, mean, var], epsilon=epsilon)

    # ---- finish ----
    def model(self, y):
        # rename the last value to "y" (graph output) and the input to "x"
        for nd in self.nodes:
            for i, o in enumerate(nd.output):
                if o == y:
                    nd.output[i] = "y"
            for i, v in enumerate(nd.input):
                if v == y:
                    nd.input[i] = "y"
        graph = helper.make_graph(
            self.nodes,
            self.name,
            [helper.make_tensor_value_info("x", FLOAT, self.in_shape)],
            [helper.make_tensor_value_info("y", FLOAT, None)],
            initializer=self.inits,
        )
        return make_model(graph, self.opset, self.desc)


def make_model(graph, opset, desc="", extra_opsets=()):
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    m = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name=PRODUCER,
        producer_version="1",
        doc_string=desc,
    )
    m.ir_version = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    return m


# --------------------------------------------------------------------------------------
# Case definitions.  Each function returns (builder, output_value_name).
# --------------------------------------------------------------------------------------
CASES = []


def case(fn):
    CASES.append(fn)
    return fn


X4 = [1, 3, 8, 8]


# ---------------- Conv ----------------
@case
def conv_3x3():
    b = B("conv_3x3", X4, desc="Conv 3->4, 3x3, pads 1, stride 1, with bias")
    return b, b.conv("x", 3, 4, 3, pads=[1, 1, 1, 1])


@case
def conv_dilation2():
    b = B("conv_dilation2", [1, 3, 9, 9], desc="Conv 3x3 dilations [2,2] pads 1: effective kernel 5")
    return b, b.conv("x", 3, 4, 3, dilations=[2, 2], pads=[1, 1, 1, 1])


@case
def conv_groups2():
    b = B("conv_groups2", [1, 4, 8, 8], desc="Conv group=2, 4->6 channels, W [6,2,3,3]")
    return b, b.conv("x", 4, 6, 3, group=2, pads=[1, 1, 1, 1])


@case
def conv_depthwise():
    b = B("conv_depthwise", [1, 4, 8, 8], desc="Depthwise Conv group=C=4, W [4,1,3,3], stride 2")
    return b, b.conv("x", 4, 4, 3, group=4, pads=[1, 1, 1, 1], strides=[2, 2])


@case
def conv_depthwise_mult2():
    b = B("conv_depthwise_mult2", [1, 4, 8, 8],
          desc="Depthwise Conv with channel multiplier 2: group=4, 4->8, W [8,1,3,3]; out ch o uses in ch o//2")
    return b, b.conv("x", 4, 8, 3, group=4, pads=[1, 1, 1, 1])


@case
def conv_rect_asym_pads():
    b = B("conv_rect_asym_pads", [1, 1, 49, 10],
          desc="Conv 10x4 kernel, pads [4,1,5,1] (H begin 4, W begin 1, H end 5, W end 1), stride 2 "
               "(the KWS DS-CNN first layer)")
    return b, b.conv("x", 1, 8, [10, 4], pads=[4, 1, 5, 1], strides=[2, 2])


@case
def conv_same_upper():
    b = B("conv_same_upper", X4, desc="Conv 3x3 stride 2 auto_pad SAME_UPPER on 8x8: total pad 1 -> (0 begin, 1 end)")
    return b, b.conv("x", 3, 4, 3, strides=[2, 2], auto_pad="SAME_UPPER")


@case
def conv_same_lower():
    b = B("conv_same_lower", X4, desc="Conv 3x3 stride 2 auto_pad SAME_LOWER on 8x8: total pad 1 -> (1 begin, 0 end)")
    return b, b.conv("x", 3, 4, 3, strides=[2, 2], auto_pad="SAME_LOWER")


@case
def conv_valid():
    b = B("conv_valid", X4, desc="Conv 3x3 stride 2 auto_pad VALID on 8x8 -> 3x3")
    return b, b.conv("x", 3, 4, 3, strides=[2, 2], auto_pad="VALID")


@case
def conv_no_bias():
    b = B("conv_no_bias", X4, desc="Conv without bias input (2 inputs) and WITHOUT kernel_shape attribute "
                                   "(must be taken from W's dims)")
    return b, b.conv("x", 3, 4, 3, bias=False, pads=[1, 1, 1, 1], _omit_kernel_shape=True)


# ---------------- Gemm / MatMul ----------------
@case
def gemm_transb0():
    b = B("gemm_transb0", [1, 16], desc="Gemm transB=0, B [16,10], C [10], alpha 0.5, beta 2.0")
    return b, b.op("Gemm", ["x", b.randw([16, 10], 0.25), b.randw([10], 0.5)], alpha=0.5, beta=2.0, transB=0)


@case
def gemm_transb1():
    b = B("gemm_transb1", [1, 16], desc="Gemm transB=1, B [10,16], C [1,10], alpha 1.5, beta 0.25")
    return b, b.op("Gemm", ["x", b.randw([10, 16], 0.25), b.randw([1, 10], 0.5)], alpha=1.5, beta=0.25, transB=1)


@case
def gemm_c_scalar():
    b = B("gemm_c_scalar", [1, 16], desc="Gemm transB=1 with C of shape [1] (broadcast to [M,N]), beta 3.0")
    return b, b.op("Gemm", ["x", b.randw([10, 16], 0.25), b.f32([0.75])], beta=3.0, transB=1)


@case
def gemm_no_c():
    b = B("gemm_no_c", [1, 16], desc="Gemm transB=1 without C (optional since opset 11)")
    return b, b.op("Gemm", ["x", b.randw([10, 16], 0.25)], transB=1)


@case
def matmul_2d():
    b = B("matmul_2d", [1, 16], desc="MatMul [1,16] x [16,8]")
    return b, b.op("MatMul", ["x", b.randw([16, 8], 0.25)])


# ---------------- broadcasting ----------------
@case
def add_bcast_channel():
    b = B("add_bcast_channel", [1, 8, 4, 4], desc="Add [1,8,4,4] + [1,8,1,1]")
    return b, b.op("Add", ["x", b.randw([1, 8, 1, 1], 1.0)])


@case
def add_scalar():
    b = B("add_scalar", [1, 8, 4, 4], desc="Add [1,8,4,4] + scalar (0-d tensor, dims [])")
    return b, b.op("Add", ["x", b.f32(np.float32(0.625))])


@case
def mul_bcast_rank3():
    b = B("mul_bcast_rank3", [1, 8, 4, 4], desc="Mul [1,8,4,4] * [8,1,1] (lower-rank operand, right-aligned)")
    return b, b.op("Mul", ["x", b.randw([8, 1, 1], 1.0)])


@case
def mul_bcast_lastdim():
    b = B("mul_bcast_lastdim", [1, 8, 4, 4], desc="Mul [1,8,4,4] * [4] (broadcast along W)")
    return b, b.op("Mul", ["x", b.randw([4], 1.0)])


@case
def concat_channels():
    b = B("concat_channels", X4, desc="Concat axis 1 of Conv3x3(3->4) and Conv1x1(3->2) -> [1,6,8,8]")
    a = b.conv("x", 3, 4, 3, pads=[1, 1, 1, 1])
    c = b.conv("x", 3, 2, 1)
    return b, b.op("Concat", [a, c], axis=1)


# ---------------- activations ----------------
XA = [1, 4, 6, 6]


def act_case(name, build, opset=DEFAULT_OPSET, desc=""):
    def fn():
        b = B(name, XA, opset=opset, desc=desc, in_scale=4.0)
        return b, build(b)
    fn.__name__ = name
    CASES.append(fn)


act_case("relu", lambda b: b.op("Relu", ["x"]), desc="Relu")
act_case("clip_0_6", lambda b: b.op("Clip", ["x", b.f32(np.float32(0)), b.f32(np.float32(6))]),
         desc="Clip min 0 max 6 given as scalar initializer inputs (opset 13)")
act_case("clip_0_6_opset11", lambda b: b.op("Clip", ["x", b.f32(np.float32(0)), b.f32(np.float32(6))]),
         opset=11, desc="Clip min/max as inputs, opset 11")
act_case("clip_max_only", lambda b: b.op("Clip", ["x", "", b.f32(np.float32(1.5))]),
         desc="Clip with min omitted (empty input name '') and max 1.5")
act_case("hardswish", lambda b: b.op("HardSwish", ["x"]), opset=14, desc="HardSwish (opset 14+)")
act_case("hardsigmoid", lambda b: b.op("HardSigmoid", ["x"]), desc="HardSigmoid default alpha 0.2 beta 0.5")
act_case("hardsigmoid_torch", lambda b: b.op("HardSigmoid", ["x"], alpha=1.0 / 6.0, beta=0.5),
         desc="HardSigmoid alpha 1/6 beta 0.5 (what torch.nn.Hardsigmoid exports)")
act_case("sigmoid", lambda b: b.op("Sigmoid", ["x"]), desc="Sigmoid")
act_case("tanh", lambda b: b.op("Tanh", ["x"]), desc="Tanh")
act_case("gelu", lambda b: b.op("Gelu", ["x"]), opset=21, desc="Gelu (opset 20+), approximate='none' (erf)")
act_case("gelu_tanh", lambda b: b.op("Gelu", ["x"], approximate="tanh"), opset=21,
         desc="Gelu approximate='tanh'")


def _gelu_erf(b):
    d = b.op("Div", ["x", b.f32(np.float32(np.sqrt(2.0)))])
    e = b.op("Erf", [d])
    a = b.op("Add", [e, b.f32(np.float32(1.0))])
    m = b.op("Mul", ["x", a])
    return b.op("Mul", [m, b.f32(np.float32(0.5))])


act_case("gelu_erf_decomposed", _gelu_erf,
         desc="Gelu as torch<2 / opset<20 export writes it: x*(1+Erf(x/sqrt2))*0.5 (Div,Erf,Add,Mul,Mul)")
act_case("silu_mul_sigmoid", lambda b: b.op("Mul", ["x", b.op("Sigmoid", ["x"])]),
         desc="SiLU/Swish as Mul(x, Sigmoid(x)); ONNX has no Silu op and Swish only from opset 24")
act_case("swish_opset24", lambda b: b.op("Swish", ["x"]), opset=24,
         desc="Swish op (new in opset 24, alpha default 1.0) = x*sigmoid(alpha*x)")
act_case("leaky_relu", lambda b: b.op("LeakyRelu", ["x"], alpha=0.1), desc="LeakyRelu alpha 0.1")


# ---------------- BatchNormalization ----------------
@case
def conv_bn():
    b = B("conv_bn", X4, desc="Conv 3->8 followed by BatchNormalization eps 1e-3 (fold into conv)")
    return b, b.bn(b.conv("x", 3, 8, 3, pads=[1, 1, 1, 1]), 8, epsilon=1e-3)


@case
def add_bn():
    b = B("add_bn", [1, 8, 4, 4], desc="Add [1,8,1,1] then standalone BatchNormalization (no conv to fold into)")
    return b, b.bn(b.op("Add", ["x", b.randw([1, 8, 1, 1], 1.0)]), 8)


# ---------------- pooling ----------------
XP = [1, 4, 8, 8]


def pool_case(name, op, shape=XP, opset=DEFAULT_OPSET, desc="", **attrs):
    def fn():
        b = B(name, shape, opset=opset, desc=desc)
        return b, b.op(op, ["x"], **attrs)
    fn.__name__ = name
    CASES.append(fn)


pool_case("maxpool_pads", "MaxPool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
          desc="MaxPool 3x3 stride 2 pads 1 (pads never win the max)")
pool_case("maxpool_ceil", "MaxPool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1,
          desc="MaxPool 3x3 s2 ceil_mode 1 on 8x8: out 4 (floor would give 3), last window covers 6..8, 8 is outside")
pool_case("maxpool_ceil_window_starts_in_pad", "MaxPool", kernel_shape=[2, 2], strides=[2, 2],
          pads=[0, 0, 1, 1], ceil_mode=1, shape=[1, 2, 4, 4],
          desc="MaxPool 2x2 s2 pads end 1 ceil on 4x4: formula gives 3 but the 3rd window would start in the "
               "right pad, so ORT drops it -> 2x2; at opset < 22 onnx shape inference (and the pre-22 spec) say 3x3!")
pool_case("avgpool_ceil_window_starts_in_pad_opset22", "AveragePool", kernel_shape=[2, 2], strides=[2, 2],
          pads=[0, 0, 1, 1], ceil_mode=1, count_include_pad=1, shape=[1, 2, 4, 4], opset=22,
          desc="AveragePool 2x2 s2 pads end 1 ceil cip1 on 4x4, opset 22 (whose doc states the rule): the window "
               "starting in the right pad is dropped -> 2x2 (onnx shape inference agrees from opset 22 on)")
pool_case("maxpool_k2s1", "MaxPool", kernel_shape=[2, 2], strides=[1, 1], desc="MaxPool 2x2 stride 1 (overlapping)")
pool_case("avgpool_pads_cip0", "AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
          count_include_pad=0, desc="AveragePool 3x3 s2 pads 1 count_include_pad 0 (divide by #real elements)")
pool_case("avgpool_pads_cip1", "AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
          count_include_pad=1, desc="AveragePool 3x3 s2 pads 1 count_include_pad 1 (divide by 9 everywhere)")
pool_case("avgpool_ceil_cip0", "AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
          ceil_mode=1, count_include_pad=0,
          desc="AveragePool 3x3 s2 pads 1 ceil on 8x8 -> 5x5; last window = 1 real + 1 pad + 1 hanging; cip0 divides by real count")
pool_case("avgpool_ceil_cip1", "AveragePool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
          ceil_mode=1, count_include_pad=1,
          desc="as avgpool_ceil_cip0 but count_include_pad 1: pads count, the part hanging beyond the pads does NOT "
               "(last row/col divisor 2*3 / 2*2, not 9)")
pool_case("avgpool_ceil_nopad_cip1", "AveragePool", kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1,
          count_include_pad=1,
          desc="AveragePool 3x3 s2 ceil no pads cip1 on 8x8 -> 4x4; hanging window divisor is the in-bounds count")
pool_case("avgpool_full_opset11", "AveragePool", kernel_shape=[8, 8], opset=11,
          desc="AveragePool with kernel = whole spatial extent (the tflite2onnx/MLPerf pattern), opset 11")
pool_case("global_avgpool", "GlobalAveragePool", desc="GlobalAveragePool -> [1,4,1,1]")


# ---------------- shape ops ----------------
XS = [1, 4, 3, 3]


@case
def flatten():
    b = B("flatten", XS, desc="Flatten axis 1 -> [1,36]")
    return b, b.op("Flatten", ["x"], axis=1)


@case
def flatten_axis2():
    b = B("flatten_axis2", XS, desc="Flatten axis 2 -> [4,9] (batch and channels merged)")
    return b, b.op("Flatten", ["x"], axis=2)


@case
def reshape_zero_neg1():
    b = B("reshape_zero_neg1", XS, desc="Reshape to [0,-1,3]: 0 copies input dim 0 (=1), -1 inferred (=12) -> [1,12,3]")
    return b, b.op("Reshape", ["x", b.i64([0, -1, 3])])


@case
def reshape_zero_opset21():
    b = B("reshape_zero_opset21", XS, opset=21,
          desc="Reshape [0,4,-1] at opset 21 with explicit allowzero=0 (0 still means 'copy') -> [1,4,9]")
    return b, b.op("Reshape", ["x", b.i64([0, 4, -1])], allowzero=0)


@case
def transpose_reshape():
    b = B("transpose_reshape", XS,
          desc="Transpose perm [0,2,3,1] (NCHW->NHWC) then Reshape [1,-1]: NHWC-order flatten, NOT equal to Flatten")
    t = b.op("Transpose", ["x"], perm=[0, 2, 3, 1])
    return b, b.op("Reshape", [t, b.i64([1, -1])])


@case
def transpose_reshape_gemm():
    b = B("transpose_reshape_gemm", XS, opset=11,
          desc="tflite2onnx classifier head: Transpose NCHW->NHWC, Reshape [1,36], Gemm transB=1 -> [1,10], opset 11")
    t = b.op("Transpose", ["x"], perm=[0, 2, 3, 1])
    r = b.op("Reshape", [t, b.i64([1, 36])])
    return b, b.op("Gemm", [r, b.randw([10, 36], 0.2), b.randw([10], 0.1)], transB=1)


@case
def squeeze_opset13():
    b = B("squeeze_opset13", [1, 4, 1, 1], desc="Squeeze axes [2,3] given as input (opset 13) -> [1,4]")
    return b, b.op("Squeeze", ["x", b.i64([2, 3], "axes")])


@case
def squeeze_opset11():
    b = B("squeeze_opset11", [1, 4, 1, 1], opset=11, desc="Squeeze axes [-1,-2] as attribute (opset 11) -> [1,4]")
    return b, b.op("Squeeze", ["x"], axes=[-1, -2])


@case
def squeeze_no_axes():
    b = B("squeeze_no_axes", [1, 4, 1, 1], desc="Squeeze with no axes removes ALL size-1 dims, batch too -> [4]")
    return b, b.op("Squeeze", ["x"])


@case
def unsqueeze_opset11():
    b = B("unsqueeze_opset11", [1, 8], opset=11, desc="Unsqueeze axes [2,3] as attribute (opset 11) -> [1,8,1,1]")
    return b, b.op("Unsqueeze", ["x"], axes=[2, 3])


@case
def unsqueeze_opset13():
    b = B("unsqueeze_opset13", [1, 8],
          desc="Unsqueeze axes [-1,2] as input (opset 13); negative axes count in the OUTPUT rank (4) -> [1,8,1,1]")
    return b, b.op("Unsqueeze", ["x", b.i64([-1, 2], "axes")])


# ---------------- Softmax / LayerNorm / Pad ----------------
@case
def softmax_lastdim():
    b = B("softmax_lastdim", [1, 10], in_scale=3.0, desc="Softmax axis -1 on [1,10]")
    return b, b.op("Softmax", ["x"], axis=-1)


@case
def softmax_axis1_4d():
    b = B("softmax_axis1_4d", [1, 3, 4, 4], in_scale=3.0,
          desc="Softmax axis 1 on [1,3,4,4], opset 13: normalized over the 3 channels per pixel")
    return b, b.op("Softmax", ["x"], axis=1)


@case
def softmax_axis1_4d_opset11():
    b = B("softmax_axis1_4d_opset11", [1, 3, 4, 4], opset=11, in_scale=3.0,
          desc="Softmax axis 1 on [1,3,4,4], opset 11: input coerced to 2-D [1,48], normalized over ALL 48 values")
    return b, b.op("Softmax", ["x"], axis=1)


@case
def softmax_default_axis_opset11():
    b = B("softmax_default_axis_opset11", [1, 3, 4, 4], opset=11, in_scale=3.0,
          desc="Softmax without axis at opset 11: default axis=1 -> coerced [1,48] (opset 13 default is -1)")
    return b, b.op("Softmax", ["x"])


@case
def layernorm_lastdim():
    b = B("layernorm_lastdim", [1, 6, 16], opset=17, in_scale=2.0,
          desc="LayerNormalization axis -1, epsilon 1e-5, Scale [16], B [16] (opset 17)")
    return b, b.op("LayerNormalization", ["x", b.uniform([16], 0.5, 1.5), b.randw([16], 0.1)], axis=-1, epsilon=1e-5)


@case
def layernorm_axis1_4d():
    b = B("layernorm_axis1_4d", XS, opset=17, in_scale=2.0,
          desc="LayerNormalization axis 1 on [1,4,3,3]: normalize over C,H,W together; Scale/B [4,3,3]")
    return b, b.op("LayerNormalization", ["x", b.uniform([4, 3, 3], 0.5, 1.5), b.randw([4, 3, 3], 0.1)],
                   axis=1, epsilon=1e-3)


@case
def pad_constant():
    b = B("pad_constant", XS, desc="Pad constant, pads input [0,0,1,2, 0,0,3,0] (begins then ends), constant_value 0.5")
    return b, b.op("Pad", ["x", b.i64([0, 0, 1, 2, 0, 0, 3, 0], "pads"), b.f32(np.float32(0.5))], mode="constant")


@case
def pad_opset11_default_value():
    b = B("pad_opset11_default_value", XS, opset=11, desc="Pad opset 11, pads as input, constant_value omitted (=0)")
    return b, b.op("Pad", ["x", b.i64([0, 0, 1, 1, 0, 0, 1, 1], "pads")])


@case
def pad_negative():
    b = B("pad_negative", [1, 2, 5, 5], desc="Pad with negative pads (crops): [0,0,-1,2, 0,0,1,-2] -> [1,2,5,5]")
    return b, b.op("Pad", ["x", b.i64([0, 0, -1, 2, 0, 0, 1, -2], "pads")])


@case
def pad_reflect():
    b = B("pad_reflect", XS, desc="Pad mode reflect pads [0,0,2,1, 0,0,1,2] (edge value not repeated)")
    return b, b.op("Pad", ["x", b.i64([0, 0, 2, 1, 0, 0, 1, 2], "pads")], mode="reflect")


@case
def pad_axes_opset21():
    b = B("pad_axes_opset21", XS, opset=21,
          desc="Pad opset 21 with axes input [2,3] (-> pads has 2*len(axes)=4 entries [1,0,2,1]), constant 0")
    return b, b.op("Pad", ["x", b.i64([1, 0, 2, 1], "pads"), "", b.i64([2, 3], "axes")])


# ---------------- constant folding material ----------------
@case
def shape_gather_reshape():
    b = B("shape_gather_reshape", XS,
          desc="torch.onnx flatten pattern: Shape -> Gather(0) -> Unsqueeze -> Concat([n,-1]) -> Reshape")
    s = b.op("Shape", ["x"])
    g = b.op("Gather", [s, b.i64(np.int64(0), "idx")], axis=0)
    u = b.op("Unsqueeze", [g, b.i64([0], "axes")])
    c = b.op("Concat", [u, b.i64([-1])], axis=0)
    return b, b.op("Reshape", ["x", c])


@case
def constant_node():
    b = B("constant_node", XS, desc="Constant nodes: a value tensor [1,4,1,1] added, and a value_float scalar multiplied")
    c = b.op("Constant", [], value=numpy_helper.from_array(
        b.rng_w.standard_normal([1, 4, 1, 1]).astype(np.float32), "cval"))
    k = b.op("Constant", [], value_float=1.75)
    return b, b.op("Mul", [b.op("Add", ["x", c]), k])


@case
def identity():
    b = B("identity", X4, desc="Identity on the conv weight (initializer -> Identity -> Conv.W) and on the output")
    w = b.op("Identity", [b.randw([4, 3, 3, 3], prefix="conv_w")])
    y = b.op("Conv", ["x", w, b.randw([4], 0.1)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return b, b.op("Identity", [y])


# ---------------- blocks ----------------
@case
def resnet_block():
    b = B("resnet_block", [1, 8, 8, 8], desc="conv-bn-relu-conv-bn + skip Add + relu (ResNet basic block)")
    h = b.op("Relu", [b.bn(b.conv("x", 8, 8, 3, pads=[1, 1, 1, 1]), 8)])
    h = b.bn(b.conv(h, 8, 8, 3, pads=[1, 1, 1, 1]), 8)
    return b, b.op("Relu", [b.op("Add", [h, "x"])])


@case
def ds_block():
    b = B("ds_block", [1, 8, 8, 8], desc="depthwise 3x3 -> bn -> relu -> pointwise 1x1 8->16 -> bn -> relu")
    h = b.op("Relu", [b.bn(b.conv("x", 8, 8, 3, group=8, pads=[1, 1, 1, 1]), 8)])
    return b, b.op("Relu", [b.bn(b.conv(h, 8, 16, 1), 16)])


@case
def conv_external_data():
    b = B("conv_external_data", X4, desc="conv-bn-relu saved with all initializers in conv_external_data.data")
    b.external = True
    return b, b.op("Relu", [b.bn(b.conv("x", 3, 8, 3, pads=[1, 1, 1, 1]), 8)])


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------
def ort_session(model_or_path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # evaluate the graph as written: no conv+bn fusion, no constant folding
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.use_deterministic_compute = True
    so.log_severity_level = 3
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else model_or_path
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def ref_diff(model, x, y):
    """max |onnx.reference - ORT|, as a cross-check (None if the reference can't run it)."""
    try:
        from onnx.reference import ReferenceEvaluator
        r = ReferenceEvaluator(model).run(None, {"x": x})[0]
        if r.shape != y.shape:
            return f"shape {list(r.shape)}"
        return float(f"{float(np.max(np.abs(r.astype(np.float64) - y))):.2g}")
    except Exception as e:  # noqa: BLE001
        return f"error: {type(e).__name__}"


def inferred_output_shape(model):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output[0].type.tensor_type.ClearField("shape")
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
        t = m.graph.output[0].type.tensor_type
        if not t.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    except Exception as e:  # noqa: BLE001
        return f"error: {type(e).__name__}"


def save_npy(path, arr):
    with open(path, "wb") as f:
        np.lib.format.write_array(f, np.ascontiguousarray(arr), version=(1, 0), allow_pickle=False)


def write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def build_good(out):
    entries = []
    for fn in CASES:
        b, y = fn()
        model = b.model(y)
        sess = ort_session(model)
        yv = sess.run(None, {"x": b.x})[0].astype(np.float32)
        # declare the real output shape in the model
        out_vi = model.graph.output[0]
        out_vi.CopyFrom(helper.make_tensor_value_info("y", FLOAT, list(yv.shape)))
        onnx.checker.check_model(model)
        inferred = inferred_output_shape(model)
        diff = ref_diff(model, b.x, yv)

        name = b.name
        entry = {
            "name": name,
            "description": b.desc,
            "opset": b.opset,
            "ir_version": model.ir_version,
            "seed": b.seed,
            "model": f"{name}.onnx",
            "input": f"{name}.input.npy",
            "expected": f"{name}.expected.npy",
            "input_name": "x",
            "output_name": "y",
            "input_shape": list(b.x.shape),
            "output_shape": list(yv.shape),
            "ops": [n.op_type for n in model.graph.node],
            "onnx_reference_max_abs_diff": diff,
        }
        if inferred != list(yv.shape):
            entry["onnx_shape_inference_output_shape"] = inferred
        path = os.path.join(out, f"{name}.onnx")
        if getattr(b, "external", False):
            data_name = f"{name}.data"
            data_path = os.path.join(out, data_name)
            if os.path.exists(data_path):
                os.remove(data_path)  # onnx appends to an existing data file
            onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                      location=data_name, size_threshold=0)
            os.chmod(data_path, 0o644)  # onnx creates it 0600
            entry["external_data"] = data_name
            # re-run from disk to be sure the external file is read back identically
            y2 = ort_session(path).run(None, {"x": b.x})[0]
            assert np.array_equal(y2, yv), "external data round trip"
        else:
            write_bytes(path, model.SerializeToString())
        save_npy(os.path.join(out, f"{name}.input.npy"), b.x)
        save_npy(os.path.join(out, f"{name}.expected.npy"), yv)
        entries.append(entry)
    return entries


# --------------------------------------------------------------------------------------
# Bad files
# --------------------------------------------------------------------------------------
def simple_graph(name, inits, extra_nodes=(), in_shape=(1, 3, 8, 8), out_shape=(1, 4, 6, 6), opset=DEFAULT_OPSET,
                 inputs=None, outputs=None, extra_opsets=()):
    graph = helper.make_graph(
        list(extra_nodes), name,
        inputs or [helper.make_tensor_value_info("x", FLOAT, list(in_shape))],
        outputs or [helper.make_tensor_value_info("y", FLOAT, list(out_shape))],
        initializer=inits,
    )
    return make_model(graph, opset, extra_opsets=extra_opsets)


def build_bad(out, good_conv_path):
    bad = []
    rng = np.random.default_rng(seed_of("bad"))

    def add(name, expect, why, data=None, model=None, ort_loads=None):
        path = os.path.join(out, f"{name}.onnx")
        if model is not None:
            data = model.SerializeToString()
        write_bytes(path, data)
        e = {"name": name, "file": f"{name}.onnx", "expect": expect, "description": why}
        try:
            onnx.checker.check_model(path, full_check=True)
            e["onnx_checker_passes"] = True
        except Exception:  # noqa: BLE001
            e["onnx_checker_passes"] = False
        try:
            ort_session(path)
            e["onnxruntime_loads"] = True
        except Exception:  # noqa: BLE001
            e["onnxruntime_loads"] = False
        if ort_loads is not None:
            assert e["onnxruntime_loads"] == ort_loads, name
        bad.append(e)

    good = open(good_conv_path, "rb").read()
    add("bad_truncated", "decode_error",
        f"first {len(good) // 2} of {len(good)} bytes of conv_3x3.onnx: protobuf ends inside a field",
        data=good[: len(good) // 2])
    add("bad_random", "decode_error", "4096 random bytes (default_rng(crc32('bad')))",
        data=rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    add("bad_empty", "missing_graph",
        "0-byte file: decodes as an all-default ModelProto (protobuf can't tell), so the tool must reject "
        "the missing graph / ir_version / opset_import", data=b"")

    w = numpy_helper.from_array(np.ones([4, 3, 3, 3], np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])

    add("bad_unsupported_op", "unsupported_op",
        "Conv then Einsum('bchw->bhwc'): a valid model (onnxruntime runs it) whose op the tool doesn't implement",
        model=simple_graph("bad_unsupported_op", [w], [conv, helper.make_node("Einsum", ["c"], ["y"],
                                                                              equation="bchw->bhwc")],
                           out_shape=[1, 8, 8, 4]),
        ort_loads=True)
    add("bad_custom_domain", "unsupported_op",
        "node Gelu in domain 'com.microsoft' (an ORT contrib op): op identity is (domain, op_type), not op_type",
        model=simple_graph("bad_custom_domain", [], [helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")],
                           out_shape=[1, 3, 8, 8], extra_opsets=[("com.microsoft", 1)]),
        ort_loads=True)

    m = simple_graph("bad_dynamic_batch", [w], [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])],
                     inputs=[helper.make_tensor_value_info("x", FLOAT, ["N", 3, 8, 8])],
                     outputs=[helper.make_tensor_value_info("y", FLOAT, ["N", 4, 6, 6])])
    add("bad_dynamic_batch", "dynamic_dim",
        "input x has dims [dim_param 'N', 3, 8, 8]: batch not fixed (onnxruntime accepts it)", model=m, ort_loads=True)

    m = simple_graph(
        "bad_two_io", [],
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["prod"])],
        inputs=[helper.make_tensor_value_info("a", FLOAT, [1, 4]), helper.make_tensor_value_info("b", FLOAT, [1, 4])],
        outputs=[helper.make_tensor_value_info("sum", FLOAT, [1, 4]),
                 helper.make_tensor_value_info("prod", FLOAT, [1, 4])])
    add("bad_two_io", "io_count", "two graph inputs (a, b) and two outputs (sum, prod); valid ONNX",
        model=m, ort_loads=True)

    def ext_model(name, location):
        t = numpy_helper.from_array(np.ones([4, 3, 3, 3], np.float32), "w")
        onnx.external_data_helper.set_external_data(t, location=location, offset=0, length=4 * 3 * 3 * 3 * 4)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        return simple_graph(name, [t], [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])])

    add("bad_missing_external", "external_data_missing",
        "initializer w: data_location EXTERNAL, location 'bad_missing_external.data' (offset 0, length 432) "
        "which does not exist", model=ext_model("bad_missing_external", "bad_missing_external.data"),
        ort_loads=False)
    add("bad_external_path_escape", "external_data_path",
        "external data location '../escape.data' points outside the model's directory: must be refused "
        "before any file is opened (onnx.checker refuses it too)",
        model=ext_model("bad_external_path_escape", "../escape.data"))

    def add_init_model(name, t):
        return simple_graph(name, [t], [helper.make_node("Add", ["x", t.name], ["y"])], in_shape=[1, 4],
                            out_shape=[1, 4])

    def size_model(name, t):
        # x + float(Size(t)): valid ONNX for any element type of t (Size accepts all types)
        nodes = [helper.make_node("Size", [t.name], ["n"]),
                 helper.make_node("Cast", ["n"], ["nf"], to=FLOAT),
                 helper.make_node("Add", ["x", "nf"], ["y"])]
        return simple_graph(name, [t], nodes, in_shape=[1, 4], out_shape=[1, 4])

    def bare(name, dims, dtype=TensorProto.FLOAT):
        t = TensorProto()
        t.name = name
        t.data_type = dtype
        t.dims.extend(dims)
        return t

    add("bad_dims_overflow", "dims_overflow",
        "initializer big: FLOAT dims [2^40, 2^40] and no data: element count 2^80 overflows u64 "
        "(use checked_mul; never allocate from dims)",
        model=add_init_model("bad_dims_overflow", bare("big", [2 ** 40, 2 ** 40])), ort_loads=False)
    add("bad_bytes_overflow", "dims_overflow",
        "initializer big: FLOAT dims [2^31, 2^31] and no data: 2^62 elements fits u64 but 2^62*4 bytes does not",
        model=add_init_model("bad_bytes_overflow", bare("big", [2 ** 31, 2 ** 31])), ort_loads=False)
    add("bad_negative_dim", "negative_dim", "initializer neg: dims [-1, 4] (dims are int64 on the wire)",
        model=add_init_model("bad_negative_dim", bare("neg", [-1, 4])), ort_loads=False)
    t = bare("short", [1, 4])
    t.raw_data = b"\x00" * 8
    add("bad_data_size_mismatch", "data_size_mismatch",
        "initializer short: FLOAT dims [1,4] (16 bytes expected) but raw_data has 8 bytes",
        model=add_init_model("bad_data_size_mismatch", t), ort_loads=False)
    t = helper.make_tensor("cplx", TensorProto.COMPLEX64, [1, 4], [1 + 2j, 3 - 1j, 0.5j, 2.0])
    add("bad_complex64", "unsupported_dtype",
        "initializer cplx of data_type COMPLEX64 (14), consumed by Size -> Cast -> Add; passes onnx.checker "
        "(full_check), though onnxruntime's CPU provider has no complex64 Size kernel (NOT_IMPLEMENTED)",
        model=size_model("bad_complex64", t), ort_loads=False)
    t = helper.make_tensor("strs", TensorProto.STRING, [1, 4], [b"a", b"bc", b"", b"def"])
    add("bad_string_tensor", "unsupported_dtype",
        "initializer strs of data_type STRING (8), stored in string_data, consumed by Size -> Cast -> Add; valid ONNX",
        model=size_model("bad_string_tensor", t), ort_loads=True)
    return bad


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    good = build_good(out)
    bad = build_bad(out, os.path.join(out, "conv_3x3.onnx"))
    doc = {
        "generator": "make_cases.py",
        "versions": {"onnx": onnx.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__},
        "onnxruntime_settings": {
            "providers": ["CPUExecutionProvider"], "intra_op_num_threads": 1, "inter_op_num_threads": 1,
            "graph_optimization_level": "ORT_DISABLE_ALL", "use_deterministic_compute": True,
        },
        "input_dtype": "float32",
        "input_distribution": "default_rng(seed).standard_normal(shape) * scale; seed = crc32(name)",
        "weights": "default_rng(seed + 1), float32 initializers",
        "suggested_tolerance": {"rtol": 1e-4, "atol": 1e-5},
        "cases": good,
        "bad": bad,
    }
    with open(os.path.join(out, "cases.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"{len(good)} cases, {len(bad)} bad files -> {out}")


if __name__ == "__main__":
    main()

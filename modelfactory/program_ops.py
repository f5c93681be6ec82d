"""The operators an uploaded torch.export program may use: computation only, no I/O, no custom ops.

The list is an allow-list: anything not named here is refused before the graph is built, so an operator
that reads files (`aten::from_file`), returns uninitialised memory (`aten::empty`, `aten::resize_`),
swaps storages (`aten::set_`) or reaches another library never runs on a tenant's graph. The in-place
form of an allowed operator (`relu_`, as `nn.ReLU(inplace=True)` exports) computes the same values.
"""
from __future__ import annotations

import re

ATEN_PREFIX = "torch.ops.aten."

# Pure functions of their tensor arguments (every overload of each name, out= variants excepted).
ALLOWED_ATEN = frozenset("""
    linear matmul mm bmm addmm addmv baddbmm einsum
    conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d convolution
    max_pool1d max_pool2d max_pool3d max_pool2d_with_indices avg_pool1d avg_pool2d avg_pool3d
    adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d
    _adaptive_avg_pool2d
    batch_norm layer_norm group_norm instance_norm native_layer_norm native_group_norm rms_norm
    dropout feature_dropout alpha_dropout feature_alpha_dropout
    relu relu6 leaky_relu gelu silu sigmoid tanh hardtanh hardswish hardsigmoid elu selu celu softplus mish
    prelu glu log_sigmoid softmax log_softmax _softmax _log_softmax threshold
    add sub rsub mul div neg abs pow sqrt rsqrt exp log log1p log2 expm1 reciprocal square erf sin cos
    clamp clamp_min clamp_max minimum maximum where sign floor ceil round trunc frac fmod remainder
    eq ne lt le gt ge logical_and logical_or logical_not logical_xor masked_fill bitwise_not
    view reshape flatten unflatten permute transpose t contiguous clone cat concat concatenate stack hstack vstack
    split split_with_sizes tensor_split chunk unbind squeeze unsqueeze expand expand_as repeat slice select
    narrow flip roll pad constant_pad_nd reflection_pad1d reflection_pad2d replication_pad1d replication_pad2d
    upsample_nearest2d upsample_bilinear2d pixel_shuffle pixel_unshuffle channel_shuffle alias detach
    _to_copy to type_as movedim swapaxes swapdims broadcast_to tile index_select gather embedding
    mean sum amax amin max min argmax argmin prod std var var_mean std_mean norm linalg_vector_norm
    logsumexp cumsum cumprod topk sort
    zeros ones full zeros_like ones_like full_like arange scalar_tensor lift_fresh_copy
    scaled_dot_product_attention
    sym_size sym_numel sym_stride _assert_scalar _assert_tensor_metadata sym_constrain_range_for_size
""".split())

# Python operators that export writes for symbolic sizes and for picking one output of a node.
ALLOWED_PYTHON = frozenset({
    "_operator.getitem", "_operator.add", "_operator.sub", "_operator.mul", "_operator.floordiv",
    "_operator.mod", "_operator.neg", "_operator.eq", "_operator.ne", "_operator.lt", "_operator.le",
    "_operator.gt", "_operator.ge", "_operator.truediv",
})

OVERLOAD_RE = re.compile(r"[A-Za-z_]{1,40}")


def operator_allowed(target: str) -> bool:
    """Whether a serialized node target (e.g. 'torch.ops.aten.linear.default') may run."""
    if target in ALLOWED_PYTHON:
        return True
    if not target.startswith(ATEN_PREFIX):
        return False
    parts = target[len(ATEN_PREFIX):].split(".")
    if len(parts) != 2:
        return False
    name, overload = parts
    if name.endswith("_") and not name.startswith("_"):
        name = name[:-1]
    return (name in ALLOWED_ATEN and OVERLOAD_RE.fullmatch(overload) is not None
            and not overload.startswith("out") and not overload.endswith("_out"))


# Operators whose behaviour follows train()/eval(): name -> index of the flag argument.
TRAINING_FLAG = {
    "dropout": 2, "feature_dropout": 2, "alpha_dropout": 2, "feature_alpha_dropout": 2,
    "dropout_": 2, "feature_dropout_": 2, "alpha_dropout_": 2, "feature_alpha_dropout_": 2,
    "batch_norm": 5,
}

"""Constants shared by the kernels, their registrations and their references."""

# Activation codes (conv / BSB epilogues).
ACT_NONE, ACT_GELU, ACT_SILU, ACT_LEAKY, ACT_SIGMOID = 0, 1, 2, 3, 4
LEAKY_SLOPE = 0.05

# What is added after the activation (RES_SPAN_ATT: SPAN's parameter-free attention,
# (z + residual) * (sigmoid(z) - 0.5), which multiplies rather than adds).
RES_NONE, RES_TENSOR, RES_GATED_INPUT, RES_SPAN_ATT = 0, 1, 2, 3

# Shortcut added to the conv output before pixel shuffle, indexed by output channel // r^2.
SHORTCUT_NONE, SHORTCUT_REPEAT_INPUT, SHORTCUT_VECTOR = 0, 1, 2

POOL_KERNEL, POOL_STRIDE = 7, 3


def pooled_size(n: int) -> int:
    """Output length of the attention max pool (POOL_KERNEL / POOL_STRIDE, no padding, floor mode)
    along an axis of length n >= POOL_KERNEL; spec.h's ``pooled_size``."""
    return (n - POOL_KERNEL) // POOL_STRIDE + 1

"""Device helpers shared by the Triton kernels (all maths in float32), and the choice of the
launch target: the GPU architecture whose launch configuration (``configs.py``) a launch uses.
"""
import contextlib
import contextvars

import triton
import triton.language as tl

from ..spec import (ACT_GELU, ACT_LEAKY, ACT_SIGMOID, ACT_SILU, LEAKY_SLOPE, RES_SPAN_ATT, SHORTCUT_REPEAT_INPUT,
                    SHORTCUT_VECTOR)

_ACT_GELU: tl.constexpr = tl.constexpr(ACT_GELU)
_ACT_SILU: tl.constexpr = tl.constexpr(ACT_SILU)
_ACT_LEAKY: tl.constexpr = tl.constexpr(ACT_LEAKY)
_ACT_SIGMOID: tl.constexpr = tl.constexpr(ACT_SIGMOID)
_LEAKY_SLOPE: tl.constexpr = tl.constexpr(LEAKY_SLOPE)
_RES_SPAN: tl.constexpr = tl.constexpr(RES_SPAN_ATT)
_SC_REPEAT: tl.constexpr = tl.constexpr(SHORTCUT_REPEAT_INPUT)
_SC_VECTOR: tl.constexpr = tl.constexpr(SHORTCUT_VECTOR)


@triton.jit
def program_pixels(BLOCK_P: tl.constexpr, total, width):
    """This program's BLOCK_P flattened pixel indices (axis 0 of the grid), their in-bounds
    mask, and their (row, column) in an image ``width`` wide."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    return p, p < total, p // width, p % width


@triton.jit
def tile_pixels(TILE_H: tl.constexpr, TILE_W: tl.constexpr, tiles_w, height, width):
    """This program's TILE_H x TILE_W pixel tile (axis 0 of the grid; ``tiles_w`` tiles per row
    of tiles), flattened row-major: the pixels' rows, columns and in-bounds mask."""
    tile = tl.program_id(0)
    r = tl.arange(0, TILE_H * TILE_W)
    oy = (tile // tiles_w) * TILE_H + r // TILE_W
    ox = (tile % tiles_w) * TILE_W + r % TILE_W
    return oy, ox, (oy < height) & (ox < width)


@triton.jit
def widened(oy, ox, WIDE: tl.constexpr):
    """(oy, ox) as int64 when WIDE (an image's element offsets may pass 2^31:
    ``conv_tc.wide_offsets``), else as they are (32-bit offsets within an image)."""
    if WIDE:
        oy = oy.to(tl.int64)
        ox = ox.to(tl.int64)
    return oy, ox


@triton.jit
def image_base(ptr, n, s_n, ALIGN: tl.constexpr):
    """``ptr + n * s_n`` (an image's first element, 64-bit offset) as a [1, 1] block of
    pointers, said to be a multiple of ALIGN elements when ALIGN > 1. Said on a tensor: Triton
    keeps ``multiple_of`` only there (on a scalar stride the hint is lost, and a 40-element
    pixel stride then made every load a scalar one)."""
    off = tl.zeros((1,), tl.int64) + n * s_n
    if ALIGN > 1:
        off = tl.multiple_of(off, ALIGN)
    return (ptr + off)[:, None]


@triton.jit
def pixel_offset(iy, ix, s_h, s_w, ALIGN: tl.constexpr):
    """``iy * s_h + ix * s_w`` [P], pixels' offsets within an image, said to be multiples of
    ALIGN when > 1. Computed here: the hint attaches to the op that makes the value (one made by
    the caller and passed in would lose it)."""
    off = iy * s_h + ix * s_w
    if ALIGN > 1:
        off = tl.multiple_of(off, ALIGN)
    return off


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def apply_act(x, ACT: tl.constexpr):
    if ACT == _ACT_GELU:
        # erf form, as nn.GELU(): the tanh approximation is off by up to ~1e-3.
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif ACT == _ACT_SILU:
        x = x * sigmoid(x)
    elif ACT == _ACT_LEAKY:
        x = tl.where(x >= 0, x, x * _LEAKY_SLOPE)
    elif ACT == _ACT_SIGMOID:
        x = sigmoid(x)
    return x


@triton.jit
def bilinear_coords(dst, scale, src_len):
    """align_corners=False source coordinate of output index ``dst``: (dst + 0.5) * scale - 0.5
    clamped at 0 (as PyTorch), the two taps and the weight of the second one."""
    src = tl.maximum((dst.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
    i0 = tl.minimum(src.to(tl.int32), src_len - 1)
    i1 = tl.minimum(i0 + 1, src_len - 1)
    lam = src - i0.to(tl.float32)
    return i0, i1, lam


@triton.jit
def bilinear_sample(base_ptr, chan_off, y0, y1, ly, x0, x1, lx, s_h, s_w, mask):
    """Bilinear value of a low-resolution map at rows (y0, y1, ly), cols (x0, x1, lx).
    ``chan_off`` broadcasts against the pixel coordinates; the order of operations is PyTorch's."""
    p00 = tl.load(base_ptr + chan_off + y0 * s_h + x0 * s_w, mask=mask, other=0.0).to(tl.float32)
    p01 = tl.load(base_ptr + chan_off + y0 * s_h + x1 * s_w, mask=mask, other=0.0).to(tl.float32)
    p10 = tl.load(base_ptr + chan_off + y1 * s_h + x0 * s_w, mask=mask, other=0.0).to(tl.float32)
    p11 = tl.load(base_ptr + chan_off + y1 * s_h + x1 * s_w, mask=mask, other=0.0).to(tl.float32)
    return (1.0 - ly) * ((1.0 - lx) * p00 + lx * p01) + ly * ((1.0 - lx) * p10 + lx * p11)


# the LocalAttention gate (v1's gated conv prologue / residual, and esr::gate)
@triton.jit
def gate_at(x0, oy, ox, att_h, att_w, scale_h, scale_w):
    """What the gate needs per pixel, computed once per pixel (per tap), not per channel block:
    the bilinear taps of up(att) at pixels (oy, ox) [P] and sigmoid(x0), x0 = x[:, 0] there."""
    y0, y1, ly = bilinear_coords(oy, scale_h, att_h)
    xa, xb, lx = bilinear_coords(ox, scale_w, att_w)
    return y0, y1, ly, xa, xb, lx, sigmoid(x0)


@triton.jit
def gated(x, att_ptr, att_base, c, y0, y1, ly, xa, xb, lx, sig0, sa_c, sa_h, sa_w, mask):
    """gate(x) = x * up(att) * sigmoid(x0) for channels c [C]: x [P, C]; the per-pixel terms
    come from ``gate_at``."""
    up = bilinear_sample(att_ptr + att_base, c[None, :].to(tl.int64) * sa_c,
                         y0[:, None], y1[:, None], ly[:, None], xa[:, None], xb[:, None], lx[:, None],
                         sa_h, sa_w, mask)
    return x * up * sig0[:, None]


# x's channels as two column groups, a power of two CA plus CB (0 or a power of two): 36 or 46
# channels as 32 + 16 columns, not 64 (v2's ESA and LocalAttention reduction)
@triton.jit
def load_cols(x_img, pix, c, ok, sx_c, C: tl.constexpr, X_ALIGN: tl.constexpr):
    """[P, G] of x (its dtype: kept so until the gate, half the registers of float32) at pixel
    offsets ``pix`` [P], channels ``c`` [G] (those >= C read as 0: the padding of v2's layout is
    not data). X_ALIGN > 1: channels innermost, vector loads."""
    xc = c if X_ALIGN > 1 else c * sx_c
    return tl.load(x_img + pix[:, None] + xc[None, :], mask=ok[:, None] & (c < C)[None, :], other=0.0)


@triton.jit
def _rows(w_ptr, c, cr, C: tl.constexpr, CR: tl.constexpr):
    """Rows ``c`` [G] of a (C, CR) weight (rows >= C: 0), [G, CR]."""
    return tl.load(w_ptr + c[:, None] * CR + cr[None, :], mask=(c < C)[:, None], other=0.0)


@triton.jit
def weight_rows(w_ptr, C: tl.constexpr, CA: tl.constexpr, CB: tl.constexpr, CR: tl.constexpr):
    """A (C, CR) 1x1 weight as the rows of x's two column groups: (wa [CA, CR], wb [CB, CR];
    wb is wa when CB == 0)."""
    cr = tl.arange(0, CR)
    wa = _rows(w_ptr, tl.arange(0, CA), cr, C, CR)
    wb = wa
    if CB > 0:
        wb = _rows(w_ptr, CA + tl.arange(0, CB), cr, C, CR)
    return wa, wb


@triton.jit
def project_cols(x_img, pix, ok, sx_c, wa, wb, C: tl.constexpr, CA: tl.constexpr, CB: tl.constexpr,
                 PREC: tl.constexpr, X_ALIGN: tl.constexpr):
    """x's channels at pixel offsets ``pix`` [P] as two column groups (xa [P, CA], xb [P, CB]; xb
    is xa when CB == 0) and their 1x1 projection x @ w [P, CR] float32 (w's rows as
    ``weight_rows`` gives them)."""
    xa = load_cols(x_img, pix, tl.arange(0, CA), ok, sx_c, C, X_ALIGN)
    r = mma(xa, wa, PREC)
    xb = xa
    if CB > 0:
        xb = load_cols(x_img, pix, CA + tl.arange(0, CB), ok, sx_c, C, X_ALIGN)
        r += mma(xb, wb, PREC)
    return xa, xb, r


def interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


# (arch, recording): a launch configuration forced for GPU arch ``arch`` (80 = sm_80), and
# whether the launches are only recorded for compilation (esr_kernels.gpu_check), not run.
_TARGET: contextvars.ContextVar = contextvars.ContextVar("esr_triton_target", default=(None, False))


@contextlib.contextmanager
def target_arch(arch, recording: bool = False):
    """Within this block, launchers pick the configuration of GPU arch ``arch`` (an int, 86 for
    sm_86) whatever the tensors' device: under the interpreter this runs the GPU's pixel blocks
    (tests/kernels/test_triton_gpu_configs.py); ``recording=True`` says the launches are recorded, not
    executed, so the GPU's arithmetic (tensor-core bf16 dots) is chosen even under the
    interpreter."""
    token = _TARGET.set((int(arch) if arch is not None else None, recording))
    try:
        yield
    finally:
        _TARGET.reset(token)


def launch_arch(t):
    """The GPU arch whose configuration a launch on tensor ``t`` uses: the forced one
    (``target_arch``), else ``t``'s CUDA device capability as major * 10 + minor, else None (the
    interpreter's own configuration)."""
    forced, _ = _TARGET.get()
    if forced is not None:
        return forced
    if t.device.type == "cuda":
        import torch

        major, minor = torch.cuda.get_device_capability(t.device)
        return major * 10 + minor
    return None


def recording() -> bool:
    return _TARGET.get()[1]


def dots_arch(t):
    """The GPU whose dots a launch on tensor ``t`` runs: ``launch_arch(t)`` for a GPU launch or
    gpu_check's recording; None for the interpreter's own runs (whose bf16 workaround runs IEEE
    dots itself)."""
    arch = launch_arch(t)
    return arch if arch is not None and (recording() or not interpreting()) else None


# How a kernel's dots multiply (the constexpr PREC of every kernel with a dot; ``dot_precision``).
DOT_NATIVE = 0  # float16/bfloat16 operands on the tensor cores, float32 accumulation
DOT_IEEE = 1    # operands rounded to the weights' dtype, then multiplied exactly in float32
DOT_TF32 = 2    # float32 operands on the tensor cores as TF32 (PyTorch's default for convs)
_DOT_IEEE: tl.constexpr = tl.constexpr(DOT_IEEE)
_DOT_TF32: tl.constexpr = tl.constexpr(DOT_TF32)


@triton.jit
def mma(a, b, PREC: tl.constexpr):
    """a @ b with float32 accumulation; ``a`` is float32, ``b`` holds the weights' dtype.
    PREC (``dot_precision``): DOT_IEEE rounds the operands to b's dtype, then multiplies them
    exactly in float32 (no TF32; bf16 x bf16 products are exact in float32, so for bf16 this is
    the tensor cores' arithmetic); DOT_TF32 runs float32 on the tensor cores with TF32 inputs;
    DOT_NATIVE puts fp16/bf16 operands on the tensor cores."""
    if PREC == _DOT_IEEE:
        return tl.dot(a.to(b.dtype).to(tl.float32), b.to(tl.float32), input_precision="ieee")
    if PREC == _DOT_TF32:
        return tl.dot(a, b.to(tl.float32), input_precision="tf32")
    return tl.dot(a.to(b.dtype), b)


def conv_tf32_allowed() -> bool:
    """Whether PyTorch lets convolutions use TF32 now: ``torch.backends.cudnn.conv.fp32_precision``
    ("tf32" / "ieee"; torch >= 2.9) where it says so, else the legacy
    ``torch.backends.cudnn.allow_tf32`` (True by default: what eager convs and torch.compile do).
    Read at every launch, so the fused kernels follow the flag as cuDNN does."""
    import torch

    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    if conv in ("tf32", "ieee"):
        return conv == "tf32"
    try:
        return bool(torch.backends.cudnn.allow_tf32)
    except RuntimeError:  # flags set through both APIs, and this one left "none": not TF32
        return False


def dot_precision(dtype) -> int:
    """The PREC a kernel's dots take for weights of ``dtype``.

    float32: DOT_TF32 when ``conv_tf32_allowed()`` (PyTorch's default), else DOT_IEEE (IEEE
    float32 FMAs: the exact path, <= 1e-5 from the reference). The interpreter multiplies
    float32 exactly whatever PREC says (numpy), so there both give the IEEE answer.
    bfloat16: DOT_IEEE only when the kernel really runs under the interpreter. Its dot is
    still wrong in triton 3.9.0 (re-checked there: a 32x32 @ 32x16 bf16 dot was off by 4.7e10 on
    values of ~20; the fp16 one was exact): triton/runtime/interpreter.py,
    InterpreterBuilder.create_dot, calls np.matmul on the raw storage, and the interpreter
    stores bf16 as uint16 bit patterns, so it multiplies integers. The workaround is confined to
    that case: compiled GPU launches, and launches recorded for compilation (gpu_check), take
    the tensor-core bf16 dot. float16 takes the fp16 dot everywhere (the interpreter's matches it)."""
    import torch

    if dtype == torch.float32:
        return DOT_TF32 if conv_tf32_allowed() else DOT_IEEE
    if dtype == torch.bfloat16 and interpreting() and not recording():
        return DOT_IEEE
    return DOT_NATIVE


# ---------------------------------------------------------------- the dense convs' epilogue tail
# (v1 ``conv._conv_kernel`` and v2 ``conv_tc._conv_tc_kernel``: semantics in reference.conv)
@triton.jit
def load_tile(ptr, n, oy, ox, co, s_n, s_c, s_h, s_w, mask):
    """float32 [P, C] of a tensor (strides s_*) at image n, pixels (oy, ox) [P], channels co [C]
    (int64 offsets): the residual and passthrough reads of the dense convs' epilogues."""
    pix = n * s_n + oy.to(tl.int64) * s_h + ox.to(tl.int64) * s_w  # per pixel, then broadcast
    return tl.load(ptr + pix[:, None] + co[None, :].to(tl.int64) * s_c, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def add_residual(y, r, RES_MODE: tl.constexpr):
    """y + r, or SPAN's parameter-free attention (y + r) * (sigmoid(y) - 0.5) (RES_SPAN_ATT;
    float32, PyTorch's order)."""
    if RES_MODE == _RES_SPAN:
        y = (y + r) * (sigmoid(y) - 0.5)
    else:
        y = y + r
    return y


@triton.jit
def shuffle_store(y, co, n, oy, ox, out_mask, out_ptr, sc_ptr, C_out, so_n, so_c, so_h, so_w,
                  ss_n, ss_c, ss_h, ss_w, SHUFFLE: tl.constexpr, SC_MODE: tl.constexpr):
    """Stores y [P, CO], output channels ``co`` [CO] of image n's pixels (oy, ox) [P], at out
    (strides so_*): as they are, or (SHUFFLE = r > 0) plus the shortcut (SC_MODE: the image
    input repeated per sub-pixel, strides ss_*, or a per-channel vector) and pixel-shuffled to
    (r oy + sub // r, r ox + sub % r) of image channel co // r^2."""
    if SHUFFLE > 0:
        img_c = co // (SHUFFLE * SHUFFLE)
        if SC_MODE == _SC_REPEAT:
            s = tl.load(sc_ptr + n * ss_n + img_c[None, :].to(tl.int64) * ss_c
                        + oy[:, None].to(tl.int64) * ss_h + ox[:, None].to(tl.int64) * ss_w,
                        mask=out_mask, other=0.0).to(tl.float32)
            y = y + s
        elif SC_MODE == _SC_VECTOR:
            y = y + tl.load(sc_ptr + img_c, mask=co < C_out, other=0.0).to(tl.float32)[None, :]
        sub = co % (SHUFFLE * SHUFFLE)
        out_y = oy[:, None] * SHUFFLE + (sub // SHUFFLE)[None, :]
        out_x = ox[:, None] * SHUFFLE + (sub % SHUFFLE)[None, :]
        dst = n * so_n + img_c[None, :].to(tl.int64) * so_c + out_y.to(tl.int64) * so_h + out_x.to(tl.int64) * so_w
    else:
        dst = n * so_n + co[None, :].to(tl.int64) * so_c + oy[:, None].to(tl.int64) * so_h \
            + ox[:, None].to(tl.int64) * so_w
    tl.store(out_ptr + dst, y.to(out_ptr.dtype.element_ty), mask=out_mask)

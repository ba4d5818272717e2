"""The LocalAttention gate stored: ``esr::gate``, x * up(att) * sigmoid(x[:, 0]) (semantics in
``esr_kernels.reference.gate``). PFDNLite's blocks use it when the v2 conv is chosen at load:
v2 multiplies on the tensor cores straight from memory, so the gate cannot ride in its input
loads as it does in v1's (``conv._conv_kernel``, HAS_GATE / RES_GATED_INPUT); it is computed
once per pixel here, and the gated tensor feeds the first conv and is the last one's residual.
Each program owns BLOCK_P pixels x all channels; the per-pixel bilinear taps and the sigmoid are
v1's (``common.gate_at`` / ``gated``)."""
import triton
import triton.language as tl

from .common import gate_at, gated, launch_arch, program_pixels
from .configs import launch_config


@triton.jit
def _gate_kernel(
    x_ptr, att_ptr, out_ptr, C, H, W, att_h, att_w, scale_h, scale_w,
    sx_n, sx_c, sx_h, sx_w, sa_n, sa_c, sa_h, sa_w, so_n, so_c, so_h, so_w,
    BLOCK_P: tl.constexpr, CP: tl.constexpr,
):
    """x (N, C, H, W), att (N, C, att_h, att_w), out like x; any strides; grid (pixel blocks, N)."""
    _, p_mask, oy, ox = program_pixels(BLOCK_P, H * W, W)
    n = tl.program_id(1).to(tl.int64)
    c = tl.arange(0, CP)
    m = p_mask[:, None] & (c < C)[None, :]
    x_pix = n * sx_n + oy.to(tl.int64) * sx_h + ox.to(tl.int64) * sx_w
    x = tl.load(x_ptr + x_pix[:, None] + c[None, :].to(tl.int64) * sx_c, mask=m, other=0.0).to(tl.float32)
    x0 = tl.load(x_ptr + x_pix, mask=p_mask, other=0.0).to(tl.float32)
    y0, y1, ly, xa, xb, lx, sig0 = gate_at(x0, oy, ox, att_h, att_w, scale_h, scale_w)
    y = gated(x, att_ptr, n * sa_n, c, y0, y1, ly, xa, xb, lx, sig0, sa_c, sa_h, sa_w, m)
    dst = n * so_n + oy.to(tl.int64) * so_h + ox.to(tl.int64) * so_w
    tl.store(out_ptr + dst[:, None] + c[None, :].to(tl.int64) * so_c, y.to(out_ptr.dtype.element_ty), mask=m)


def gate_launch(kernel_wrapper, x, att, out):
    """Launch ``_gate_kernel`` through ``kernel_wrapper`` (wrap_triton's, a recorder or the
    kernel) for x (N, C, H, W) and att (N, C, h, w) into ``out`` (x's shape)."""
    n, c, h, w = x.shape
    if att.dim() != 4 or att.shape[:2] != x.shape[:2]:
        raise ValueError(f"att must be (N, C, h, w) with x's N and C {tuple(x.shape[:2])}, got {tuple(att.shape)}")
    att_h, att_w = att.shape[-2:]
    cp = max(16, triton.next_power_of_2(c))
    cfg = launch_config("gate", launch_arch(x), x.dtype, c_in=c)
    kernel_wrapper[(triton.cdiv(h * w, cfg.block_p), n)](
        x, att, out, c, h, w, att_h, att_w, float(att_h) / h, float(att_w) / w,
        *x.stride(), *att.stride(), *out.stride(), BLOCK_P=cfg.block_p, CP=cp, **cfg.launch_kwargs())
    return out

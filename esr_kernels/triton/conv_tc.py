"""Dense KxK convolution as a tensor-core implicit GEMM: the "v2" conv (issue 28, item 2).

The same op as ``conv._conv_kernel`` (``esr::conv``, semantics in
``esr_kernels.reference.conv``, the same packed weights); what differs is the structure:

- a program computes a TILE_H x TILE_W tile of output pixels of one image (128 pixels: M = 128
  is what sm_90's warpgroup MMA wants), a 2-D tile so that the taps of neighbouring pixels hit
  the same input rows (a 3x3 over an 8x16 tile touches 1.4 input pixels per output pixel,
  against 3.1 for v1's run of 32 pixels in one row);
- all output channels, padded to the next multiple of 16 only, as CO_A (a power of two) plus
  CO_B (0 or 16) accumulator columns: 48 channels are 32 + 16 (v1 pads 36/46/48 to 64), 28 are
  32;
- one flattened K loop over taps x input-channel blocks, software-pipelined (the launch's
  num_stages: cp.async loads of the next blocks while this one multiplies); on sm_90, up to 64
  input channels as one step per tap (``tap_parts``: 36 = 32 + the last 16, overlapping, their
  weights zero there), and a last channel block that overlaps the one before rather than
  masking channels (masks on channels cost 1.5-2x the instructions of the step);
- two K loops, chosen per tile: an interior tile (every pixel and tap inside the images, ~94%
  of the tiles at 540x960) loads without per-pixel masks, an edge tile with them; pixel offsets
  within an image in 32 bits (unless WIDE), the image's base once in 64;
- fp16/bf16 operands on the tensor cores, or float32 as TF32 when PyTorch's flag allows it
  (``common.dot_precision``); IEEE float32 runs too (the interpreter's bf16 workaround and
  tests), but on a GPU the launcher keeps IEEE float32 on v1 (FMA dots need v1's small tiles).

Prologue: ``shift`` (x - shift[c]); the LocalAttention gate is v1's alone (the launcher keeps
gated convs there). Epilogue: bias, activation, partial-channel passthrough, residual (a
tensor; SPAN's attention), shortcut + pixel shuffle — as v1.
"""
import triton
import triton.language as tl

from .common import (DOT_IEEE, DOT_TF32, add_residual, apply_act, image_base, launch_arch, load_tile, pixel_offset,
                     shuffle_store, tile_pixels)

_DOT_IEEE: tl.constexpr = tl.constexpr(DOT_IEEE)
_DOT_TF32: tl.constexpr = tl.constexpr(DOT_TF32)

TILE_PIXELS = 128  # TILE_H * TILE_W
# PATHS: which K loops a compiled kernel holds. Launches: both, chosen per tile (``_interior``);
# the roofline compiles the edge and the interior path alone to count each one's instructions.
PATHS_BOTH, PATHS_EDGE, PATHS_INTERIOR = 0, 1, 2
_PATHS_EDGE: tl.constexpr = tl.constexpr(PATHS_EDGE)
_PATHS_INTERIOR: tl.constexpr = tl.constexpr(PATHS_INTERIOR)


@triton.jit
def _dot_acc(a, w, acc, PREC: tl.constexpr):
    """acc + a @ w: ``a`` [M, K] the (prologued) input, ``w`` [K, N] in the weights' dtype. No
    conversion when a already holds w's dtype (no shift prologue): the loads then go straight
    to shared memory (cp.async) and the tensor cores."""
    if PREC == _DOT_IEEE:
        return tl.dot(a.to(w.dtype).to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
    if PREC == _DOT_TF32:
        return tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="tf32")
    return tl.dot(a.to(w.dtype), w, acc)


@triton.jit
def _k_part(x_img, w_ptr, shift_ptr, pix, valid, tap, ci0, acc_a, acc_b, ca, cb, sx_c,
            C_in: tl.constexpr, CI: tl.constexpr, MASKED: tl.constexpr, HAS_SHIFT: tl.constexpr,
            CO_B: tl.constexpr, W_LD: tl.constexpr, PREC: tl.constexpr, EDGE: tl.constexpr,
            W_MASK: tl.constexpr, w_from):
    """One K step: input channels [ci0, ci0 + CI) of the pixels at offsets ``pix`` (``valid``:
    inside the image) times their weight rows of ``tap``, into both accumulator column groups.
    MASKED: some of those channels lie past C_in (else no channel mask: whole-vector loads).
    EDGE: some pixels or taps of the tile lie outside the image (else ``valid`` is all true and
    no pixel mask is computed: an interior tile's loads are unmasked).
    W_MASK: the channels below ``w_from`` were an earlier step's, so their weight rows count as
    zero here (the step overlaps the previous one instead of reading past C_in)."""
    ci = ci0 + tl.arange(0, CI)
    if MASKED:
        cm = ci < C_in
    else:
        cm = ci >= 0
    if W_MASK:
        wm = ci >= w_from
    else:
        wm = cm
    if EDGE:
        m = valid[:, None] & cm[None, :]
        a = tl.load(x_img + pix[:, None] + (ci * sx_c)[None, :], mask=m, other=0.0)
    elif MASKED:
        m = cm[None, :]
        a = tl.load(x_img + pix[:, None] + (ci * sx_c)[None, :], mask=m, other=0.0)
    else:
        m = cm[None, :]
        a = tl.load(x_img + pix[:, None] + (ci * sx_c)[None, :])
    if HAS_SHIFT:  # zero padding applies after the shift
        sh = tl.load(shift_ptr + ci, mask=cm, other=0.0).to(tl.float32)
        a = tl.where(m, a.to(tl.float32) - sh[None, :], 0.0)
    w_row = (tap * C_in + ci) * W_LD
    if MASKED or W_MASK:
        wa = tl.load(w_ptr + w_row[:, None] + ca[None, :], mask=wm[:, None], other=0.0)
    else:
        wa = tl.load(w_ptr + w_row[:, None] + ca[None, :])
    acc_a = _dot_acc(a, wa, acc_a, PREC)
    if CO_B > 0:
        if MASKED or W_MASK:
            wb = tl.load(w_ptr + w_row[:, None] + cb[None, :], mask=wm[:, None], other=0.0)
        else:
            wb = tl.load(w_ptr + w_row[:, None] + cb[None, :])
        acc_b = _dot_acc(a, wb, acc_b, PREC)
    return acc_a, acc_b


@triton.jit
def _interior(TILE_H: tl.constexpr, TILE_W: tl.constexpr, tiles_w, H, W, H_out, W_out, KSIZE: tl.constexpr,
              STRIDE: tl.constexpr, PAD: tl.constexpr):
    """Whether this program's tile and every tap of it lie inside the output and input images
    (``interior_fraction`` counts these tiles on the host)."""
    tile = tl.program_id(0)
    ty0 = (tile // tiles_w) * TILE_H
    tx0 = (tile % tiles_w) * TILE_W
    return ((ty0 * STRIDE >= PAD) & (tx0 * STRIDE >= PAD) & (ty0 + TILE_H <= H_out) & (tx0 + TILE_W <= W_out)
            & ((ty0 + TILE_H - 1) * STRIDE - PAD + KSIZE <= H) & ((tx0 + TILE_W - 1) * STRIDE - PAD + KSIZE <= W))


@triton.jit
def _k_loop(x_img, w_ptr, shift_ptr, iy0, ix0, p_ok, H, W, sx_c, sx_h, sx_w, acc_a, acc_b, ca, cb,
            ALIGN: tl.constexpr, C_in: tl.constexpr, KSIZE: tl.constexpr, HAS_SHIFT: tl.constexpr,
            CI_BLOCK: tl.constexpr, CO_B: tl.constexpr, W_LD: tl.constexpr, PREC: tl.constexpr, K_A: tl.constexpr, K_B: tl.constexpr,
            EDGE: tl.constexpr, OVERLAP: tl.constexpr):
    """The K loop (taps x input channels, pipelined) into both accumulator column groups; EDGE:
    masked per pixel and tap (a border tile), else no pixel masks (an interior one)."""
    if K_A > 0:
        # one step per tap, its channels as a power-of-two part K_A plus 0 or 16 more: the last
        # 16 channels (48 = 32 + [32, 48); 36 = 32 + [20, 36), channels 20-31 with zero weights
        # there), so no channel is masked
        for tap in range(0, KSIZE * KSIZE):  # pipelined
            iy = iy0 + tap // KSIZE
            ix = ix0 + tap % KSIZE
            valid = p_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            pix = pixel_offset(iy, ix, sx_h, sx_w, ALIGN)
            acc_a, acc_b = _k_part(x_img, w_ptr, shift_ptr, pix, valid, tap, 0, acc_a, acc_b, ca, cb, sx_c,
                                   C_in, K_A, False, HAS_SHIFT, CO_B, W_LD, PREC, EDGE, False, 0)
            if K_B > 0:
                acc_a, acc_b = _k_part(x_img, w_ptr, shift_ptr, pix, valid, tap, C_in - K_B, acc_a, acc_b, ca, cb,
                                       sx_c, C_in, K_B, False, HAS_SHIFT, CO_B, W_LD, PREC, EDGE,
                                       C_in - K_B < K_A, K_A)
    else:
        ci_blocks: tl.constexpr = (C_in + CI_BLOCK - 1) // CI_BLOCK
        # OVERLAP (sm_90), C_in > CI_BLOCK and not a multiple of it (IFADNet's 216 = 3 x 64 + 24):
        # the last block is the last CI_BLOCK channels, overlapping the one before with zero
        # weights there, instead of a block masked per channel
        LAST: tl.constexpr = OVERLAP and C_in % CI_BLOCK != 0 and C_in > CI_BLOCK
        for kk in range(0, KSIZE * KSIZE * ci_blocks):  # taps x input-channel blocks, pipelined
            tap = kk // ci_blocks
            iy = iy0 + tap // KSIZE
            ix = ix0 + tap % KSIZE
            valid = p_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            pix = pixel_offset(iy, ix, sx_h, sx_w, ALIGN)
            c0 = (kk - tap * ci_blocks) * CI_BLOCK
            if LAST:
                ci0 = tl.minimum(c0, C_in - CI_BLOCK)
            else:
                ci0 = c0
            acc_a, acc_b = _k_part(x_img, w_ptr, shift_ptr, pix, valid, tap, ci0, acc_a, acc_b, ca, cb, sx_c, C_in,
                                   CI_BLOCK, C_in % CI_BLOCK != 0 and not LAST, HAS_SHIFT, CO_B, W_LD, PREC,
                                   EDGE, LAST, c0)
    return acc_a, acc_b


@triton.jit
def _store_columns(acc, co, n, oy, ox, p_ok, x_ptr, b_ptr, out_ptr, res_ptr, sc_ptr, C_conv, C_out,
                   sx_n, sx_c, sx_h, sx_w, so_n, so_c, so_h, so_w, sr_n, sr_c, sr_h, sr_w,
                   ss_n, ss_c, ss_h, ss_w,
                   ACT: tl.constexpr, RES_MODE: tl.constexpr, SHUFFLE: tl.constexpr, SC_MODE: tl.constexpr,
                   PARTIAL: tl.constexpr):
    """The epilogue of output channels ``co`` [N] for pixels (oy, ox) [M]: bias, activation,
    passthrough, residual, shortcut and shuffle, then the store (v1's, column group by group;
    the residual and the shuffled store are common.py's, shared with v1)."""
    bias = tl.load(b_ptr + co, mask=co < C_conv, other=0.0).to(tl.float32)
    y = apply_act(acc + bias[None, :], ACT)
    out_mask = p_ok[:, None] & (co < C_out)[None, :]
    if PARTIAL:
        # channels >= C_conv pass the input through (PFDNLite's ungated partial conv)
        xc = load_tile(x_ptr, n, oy, ox, co, sx_n, sx_c, sx_h, sx_w, out_mask & (co >= C_conv)[None, :])
        y = tl.where((co >= C_conv)[None, :], xc, y)
    if RES_MODE != 0:
        y = add_residual(y, load_tile(res_ptr, n, oy, ox, co, sr_n, sr_c, sr_h, sr_w, out_mask), RES_MODE)
    shuffle_store(y, co, n, oy, ox, out_mask, out_ptr, sc_ptr, C_out, so_n, so_c, so_h, so_w,
                  ss_n, ss_c, ss_h, ss_w, SHUFFLE, SC_MODE)


@triton.jit
def _conv_tc_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, res_ptr, shift_ptr, sc_ptr,
    H, W, C_conv, C_out, H_out, W_out, tiles_w,
    sx_n, sx_c, sx_h, sx_w, so_n, so_c, so_h, so_w, sr_n, sr_c, sr_h, sr_w, ss_n, ss_c, ss_h, ss_w,
    C_in: tl.constexpr, KSIZE: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, ACT: tl.constexpr,
    HAS_SHIFT: tl.constexpr, RES_MODE: tl.constexpr, SHUFFLE: tl.constexpr, SC_MODE: tl.constexpr,
    PARTIAL: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr, CI_BLOCK: tl.constexpr,
    CO_A: tl.constexpr, CO_B: tl.constexpr, W_LD: tl.constexpr, PREC: tl.constexpr, WIDE: tl.constexpr,
    ALIGN: tl.constexpr, K_A: tl.constexpr, K_B: tl.constexpr, PATHS: tl.constexpr, OVERLAP: tl.constexpr,
):
    """x (N, C_in.., H, W) any strides; w (K*K, C_in, W_LD) packed (``reference.pack_conv_weight``);
    grid (tiles, N). WIDE: one image's element offsets may pass 2^31 (int64 pixel offsets).
    ALIGN: x's image, row and pixel strides are multiples of it, channels innermost (the
    launcher checks; 1: nothing known): with 8, a pixel's channels load as 16-byte vectors.
    C_in is a compile-time constant (each layer's own): the K loop's tap / channel-block split
    is a division by a constant and the channel mask vanishes when CI_BLOCK divides C_in.
    K_A > 0 (``tap_parts``; C_in <= 64): the K loop is over taps only, each tap's channels as
    K_A (a power of two) + K_B (0 or 16: the last 16 channels), else CI_BLOCK-channel blocks
    (OVERLAP: the last one overlapping the one before, else masked per channel)."""
    oy, ox, p_ok = tile_pixels(TILE_H, TILE_W, tiles_w, H_out, W_out)
    n = tl.program_id(1).to(tl.int64)
    # the image's base once, in 64 bits; the per-pixel offsets within it in 32 (unless WIDE)
    x_img = image_base(x_ptr, n, sx_n, ALIGN)
    if WIDE:
        iy0 = oy.to(tl.int64) * STRIDE - PAD
        ix0 = ox.to(tl.int64) * STRIDE - PAD
    else:
        iy0 = oy * STRIDE - PAD
        ix0 = ox * STRIDE - PAD
    ca = tl.arange(0, CO_A)
    cb = CO_A + tl.arange(0, CO_B if CO_B > 0 else 16)
    acc_a = tl.zeros((TILE_H * TILE_W, CO_A), dtype=tl.float32)
    acc_b = tl.zeros((TILE_H * TILE_W, CO_B if CO_B > 0 else 16), dtype=tl.float32)  # unused when CO_B == 0
    # An interior tile (every pixel and tap inside the images: ~94% of the tiles at 540x960)
    # loads without per-pixel masks: sm_90 fp16, RLFN's 48 -> 48 3x3 issues ~160 warp-
    # instructions per tap there against ~250 with the masks. PATHS (``PATHS_*``) keeps one
    # path only when the roofline compiles each for its issue count; launches take both.
    if PATHS == _PATHS_EDGE:
        acc_a, acc_b = _k_loop(x_img, w_ptr, shift_ptr, iy0, ix0, p_ok, H, W, sx_c, sx_h, sx_w, acc_a, acc_b, ca, cb,
                               ALIGN, C_in, KSIZE, HAS_SHIFT, CI_BLOCK, CO_B, W_LD, PREC, K_A, K_B, True, OVERLAP)
    elif PATHS == _PATHS_INTERIOR:
        acc_a, acc_b = _k_loop(x_img, w_ptr, shift_ptr, iy0, ix0, p_ok, H, W, sx_c, sx_h, sx_w, acc_a, acc_b, ca, cb,
                               ALIGN, C_in, KSIZE, HAS_SHIFT, CI_BLOCK, CO_B, W_LD, PREC, K_A, K_B, False, OVERLAP)
    elif _interior(TILE_H, TILE_W, tiles_w, H, W, H_out, W_out, KSIZE, STRIDE, PAD):
        acc_a, acc_b = _k_loop(x_img, w_ptr, shift_ptr, iy0, ix0, p_ok, H, W, sx_c, sx_h, sx_w, acc_a, acc_b, ca, cb,
                               ALIGN, C_in, KSIZE, HAS_SHIFT, CI_BLOCK, CO_B, W_LD, PREC, K_A, K_B, False, OVERLAP)
    else:
        acc_a, acc_b = _k_loop(x_img, w_ptr, shift_ptr, iy0, ix0, p_ok, H, W, sx_c, sx_h, sx_w, acc_a, acc_b, ca, cb,
                               ALIGN, C_in, KSIZE, HAS_SHIFT, CI_BLOCK, CO_B, W_LD, PREC, K_A, K_B, True, OVERLAP)
    _store_columns(acc_a, ca, n, oy, ox, p_ok, x_ptr, b_ptr, out_ptr, res_ptr, sc_ptr, C_conv, C_out,
                   sx_n, sx_c, sx_h, sx_w, so_n, so_c, so_h, so_w, sr_n, sr_c, sr_h, sr_w,
                   ss_n, ss_c, ss_h, ss_w, ACT, RES_MODE, SHUFFLE, SC_MODE, PARTIAL)
    if CO_B > 0:
        _store_columns(acc_b, cb, n, oy, ox, p_ok, x_ptr, b_ptr, out_ptr, res_ptr, sc_ptr, C_conv, C_out,
                       sx_n, sx_c, sx_h, sx_w, so_n, so_c, so_h, so_w, sr_n, sr_c, sr_h, sr_w,
                       ss_n, ss_c, ss_h, ss_w, ACT, RES_MODE, SHUFFLE, SC_MODE, PARTIAL)


def _interior_count(tiles: int, tile: int, out_len: int, in_len: int, ksize: int, stride: int, pad: int) -> int:
    """How many of ``tiles`` tiles along one axis lie, with every tap, inside both images."""
    return sum(1 for t in range(tiles) if t * tile * stride >= pad and (t + 1) * tile <= out_len
               and ((t + 1) * tile - 1) * stride - pad + ksize <= in_len)


def interior_fraction(h: int, w: int, h_out: int, w_out: int, tile_h: int, tile_w: int, ksize: int, stride: int,
                      pad: int) -> float:
    """The fraction of a launch's tiles that take the unmasked interior path (the kernel's
    ``_interior``, counted on the host: the roofline's issue model weighs the two paths by it)."""
    tiles_h, tiles_w = -(-h_out // tile_h), -(-w_out // tile_w)
    inside = (_interior_count(tiles_h, tile_h, h_out, h, ksize, stride, pad)
              * _interior_count(tiles_w, tile_w, w_out, w, ksize, stride, pad))
    return inside / (tiles_h * tiles_w)


def padded_channels_last(shape, like):
    """An empty (N, C, H, W) tensor of ``like``'s dtype and device, channels innermost, each
    pixel's channels padded to a multiple of 8 elements (16 bytes in fp16): v2's layout, which
    it loads with 16-byte vectors (RLFN's 46 and SPAN's 28/26 channels are not; unpadded, every
    load is a scalar one)."""
    import torch

    n, c, h, w = shape
    cp = -(-c // 8) * 8
    return torch.empty_strided(shape, (h * w * cp, 1, w * cp, cp), dtype=like.dtype, device=like.device)


def column_groups(c_out: int) -> tuple[int, int]:
    """(CO_A, CO_B): ``c_out`` rounded up to a multiple of 16 as a power of two plus 0 or 16
    (16, 32, 32 + 16, 64; 80 = 64 + 16)."""
    padded = -(-c_out // 16) * 16
    a = 16
    while a * 2 <= padded:
        a *= 2
    b = padded - a
    if b not in (0, 16):  # e.g. 96 = 64 + 32: one power-of-two group instead
        return a * 2, 0
    return a, b


def tap_parts(c_in: int) -> tuple[int, int]:
    """(K_A, K_B): a tap's ``c_in`` input channels as one K step of K_A (the largest power of
    two <= c_in, at least 16) plus, when channels remain, one of K_B = 16: the last 16 channels,
    overlapping the first part where c_in - K_A < 16 (the overlap's weights count as zero there).
    (0, 0) where that does not cover c_in (fewer than 16 channels, or more than K_A + 16): the
    K loop then runs over CI_BLOCK-channel blocks."""
    if c_in < 16:
        return 0, 0
    a = 1 << (c_in.bit_length() - 1)
    rest = c_in - a
    return (a, 16 if rest else 0) if rest <= 16 else (0, 0)


def wide_offsets(*tensors) -> bool:
    """Whether an element offset within one image of these tensors can reach 2^31."""
    return any(t is not None and t.dim() == 4 and sum((s - 1) * st for s, st in zip(t.shape[1:], t.stride()[1:])) >= 2**31
               for t in tensors)


def pixel_alignment(x) -> int:
    """8 when x's channels are innermost and its image, row and pixel strides are multiples of 8
    elements (``ops._padded_channels_last``), else 1. (The start's 16-byte alignment is Triton's
    own pointer specialisation.)"""
    n_s, c_s, h_s, w_s = x.stride()
    ok = c_s == 1 and all(s % 8 == 0 for s in (n_s, h_s, w_s))
    return 8 if ok else 1


def conv_tc_launch(kernel_wrapper, x, w_packed, bias, g, e, out, cfg, c_in: int, prec: int):
    """Launch ``_conv_tc_kernel`` through ``kernel_wrapper`` (wrap_triton's, a recorder or the
    kernel): ``conv.conv_launch``'s arguments, its choice of ``cfg`` (TILE_H x TILE_W from
    ``cfg.block_p``, CI_BLOCK, warps, stages) and dot precision."""
    n, _, h, w = x.shape
    ho, wo = (h + 2 * g.padding - g.ksize) // g.stride + 1, (w + 2 * g.padding - g.ksize) // g.stride + 1
    tile_w = 16 if cfg.block_p >= 16 else cfg.block_p
    tile_h = cfg.block_p // tile_w
    tiles_w = triton.cdiv(wo, tile_w)
    co_a, co_b = column_groups(g.c_out)
    # One step per tap when its channels fit (``tap_parts``), up to 64 (float32 too: 3 stages of
    # [128 x 64] float32 fit sm_90's 227 KB; TF32, 540x960, RLFN 3663 -> 2980 and IFADNet
    # 4494 -> 4105 warp-instructions per pixel against a cap of 32). From the sm_90 SASS, fp16,
    # 540x960: RLFN's 48 -> 48 3x3 issues 92 warp-instructions per pixel this way, 99.5 in
    # 64-channel blocks; with a part masked per channel (46 = 32 + 14) 248, against 163 in
    # 16-channel blocks: hence the second part overlapping the first instead of a mask.
    # sm_90 only: with mma.sync (sm_80/86/89) the two parts' operands and 48 accumulator
    # columns took 255 registers and an 88-byte stack on sm_86.
    arch = launch_arch(x)
    # A C_in that is a multiple of 8 but not of 16 (PFDNLite's 24) keeps one block per tap, its
    # channel mask whole 16-byte vectors (67.5 warp-instructions per pixel against 70.5 as
    # 16 + 16); one that is not a multiple of 8 (IFADNet's 36, RLFN's 46, SPAN's 28) takes the
    # parts, overlapping, unmasked (IFADNet's 36 -> 36 3x3: 106 against 183 in 16-channel blocks).
    sm90 = arch is None or arch >= 90
    fits = (c_in % 16 == 0 or c_in % 8 != 0) and c_in <= 64 and sm90
    k_a, k_b = tap_parts(c_in) if fits else (0, 0)
    if co_a + co_b > w_packed.shape[-1]:
        raise ValueError(f"packed weight has {w_packed.shape[-1]} columns, the conv needs {co_a + co_b}")
    res, sc = e.residual, e.shortcut
    dummy = x
    sc_strides = tuple(sc.stride()) if sc is not None and sc.dim() == 4 else (0, 0, 0, 0)
    kernel_wrapper[(tiles_w * triton.cdiv(ho, tile_h), n)](
        x, w_packed, bias, out, res if res is not None else dummy, e.shift if e.shift is not None else dummy,
        sc if sc is not None else dummy,
        h, w, g.c_conv, g.c_out, ho, wo, tiles_w,
        *x.stride(), *out.stride(), *(res.stride() if res is not None else (0, 0, 0, 0)), *sc_strides,
        C_in=c_in, KSIZE=g.ksize, STRIDE=g.stride, PAD=g.padding, ACT=e.act, HAS_SHIFT=e.shift is not None,
        RES_MODE=e.residual_mode, SHUFFLE=e.shuffle, SC_MODE=e.shortcut_mode, PARTIAL=g.c_out > g.c_conv,
        TILE_H=tile_h, TILE_W=tile_w, CI_BLOCK=cfg.ci_block or 16, CO_A=co_a, CO_B=co_b,
        W_LD=w_packed.shape[-1], PREC=prec, WIDE=wide_offsets(x, out, res, sc), ALIGN=pixel_alignment(x),
        K_A=k_a, K_B=k_b, PATHS=PATHS_BOTH, OVERLAP=sm90,
        **cfg.launch_kwargs(),
    )
    return out

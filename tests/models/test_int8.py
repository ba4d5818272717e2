"""int8 quantisation: the reference semantics (``esr_kernels.reference``: int8_conv and its
grids) against integer arithmetic done independently, and the simulated int8 model
(``esr_models.evaluation.int8``): calibration, the int8 layers' outputs, restoring the float
model, and the mixed precision within a PSNR-loss bound."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from esr_kernels import reference as R
from esr_kernels.errors import EsrError


def _int_conv(xq, zp, wq, stride, padding):
    """sum (xq - zp) * wq over each window, in int64 by unfold: zero padding is xq = zp."""
    n, c, h, w = xq.shape
    k = wq.shape[-1]
    x = F.pad(xq.to(torch.int64) - zp, (padding,) * 4)  # pads with 0 == (zp - zp)
    cols = x.unfold(2, k, stride).unfold(3, k, stride)  # (n, c, ho, wo, k, k)
    return torch.einsum("nchwij,ocij->nohw", cols, wq.to(torch.int64))


@pytest.mark.parametrize("stride,padding,k", [(1, 1, 3), (2, 0, 3), (1, 0, 1)])
def test_int8_conv_is_the_integer_sum_scaled(stride, padding, k):
    x = torch.randn(2, 13, 11, 9) * 2 + 0.5
    w = torch.randn(7, 13, k, k) * 0.1
    b = torch.randn(7)
    wq, ws = R.quantize_weight_int8(w)
    scale, zp = R.activation_qparams(float(x.min()), float(x.max()))
    xq = R.quantize_u8(x, scale, zp)
    acc = _int_conv(xq, zp, wq, stride, padding)
    want = acc.to(torch.float32) * (torch.tensor(scale, dtype=torch.float32) * ws).view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    got = R.int8_conv(x, wq, ws, b, scale, zp, stride, padding)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # and it approximates the float conv to within the grids' resolution
    ref = F.conv2d(x, w, b, stride=stride, padding=padding)
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()


def test_weight_grid_per_output_channel():
    w = torch.randn(5, 4, 3, 3)
    w[2] = 0.0  # an all-zero channel keeps scale 1 and q = 0
    w[3] *= 100
    q, s = R.quantize_weight_int8(w)
    assert q.dtype == torch.int8 and s.shape == (5,)
    assert q[2].abs().max() == 0 and s[2] == 1
    for co in (0, 1, 3, 4):
        assert q[co].abs().max() == R.INT8_WEIGHT_MAX
        assert (q[co].float() * s[co] - w[co]).abs().max() <= s[co] / 2 * (1 + 1e-6)


@pytest.mark.parametrize("lo,hi", [(-1.5, 3.0), (0.2, 5.0), (-4.0, -0.5), (0.0, 1.0)])
def test_activation_grid_holds_zero_exactly(lo, hi):
    scale, zp = R.activation_qparams(lo, hi)
    assert 0 <= zp <= R.U8_MAX
    q = R.quantize_u8(torch.tensor([0.0, min(lo, 0.0), max(hi, 0.0)]), scale, zp)
    assert q[0] == zp  # 0.0 (zero padding) is exact
    assert ((q[1:].float() - zp) * scale - torch.tensor([min(lo, 0.0), max(hi, 0.0)])).abs().max() <= scale
    with pytest.raises(ValueError):
        R.activation_qparams(0.0, math.inf)


def test_u8_grid_saturates():
    q = R.quantize_u8(torch.tensor([-100.0, 100.0]), 0.1, 10)
    assert q.tolist() == [0, 255]


# --------------------------------------------------------------------------- the simulated model
@pytest.fixture(scope="module")
def rlfn(models):
    return models["rlfn"]


@pytest.fixture(scope="module")
def pairs():
    """Two small HR images (uint8, smooth with edges) and their challenge LRs."""
    from esr_models.evaluation import int8 as Q

    g = torch.Generator().manual_seed(3)
    imgs = []
    for _ in range(2):
        base = F.interpolate(torch.rand(1, 3, 6, 8, generator=g), size=(64, 80), mode="bicubic", align_corners=False)
        imgs.append((base[0].clamp(0, 1) * 255).round().to(torch.uint8))
    return Q.hr_pairs(imgs, 4)


@pytest.fixture(scope="module")
def calibration(rlfn, pairs):
    from esr_models.evaluation import int8 as Q

    return Q.calibrate(rlfn, (lr for lr, _ in pairs))


def test_calibration_records_every_quantisable_conv(rlfn, pairs, calibration):
    from esr_models.evaluation import int8 as Q

    convs = Q.quantisable_convs(rlfn)
    assert set(calibration.ranges) == set(convs) and calibration.images == 2
    assert "head" not in convs and "tail" not in convs  # 3-channel head, image-writing tail stay float
    # the ranges are those of the conv inputs: record them independently with hooks (100th percentile)
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: seen.setdefault(n, []).append(a[0].detach()))
             for n, m in convs.items() if type(m) is torch.nn.Conv2d]
    full = Q.calibrate(rlfn, (lr for lr, _ in pairs), percentile=100.0)
    with torch.no_grad():
        for lr, _ in pairs:
            rlfn(lr)
    for h in hooks:
        h.remove()
    assert seen
    for n, xs in seen.items():
        assert full.ranges[n] == (min(float(x.min()) for x in xs), max(float(x.max()) for x in xs))
        lo, hi = calibration.ranges[n]  # the 99.999th percentile lies within
        assert full.ranges[n][0] <= lo <= hi <= full.ranges[n][1]
    assert calibration.macs == full.macs and 0 < calibration.int8_mac_fraction(list(convs)[:3]) < 1


def test_simulated_int8_runs_reference_int8_conv_and_restores(rlfn, pairs, calibration):
    from esr_models.evaluation import int8 as Q

    lr = pairs[0][0]
    with torch.no_grad():
        before = rlfn(lr)
        name = "blocks.0.convs.0"
        conv = Q.quantisable_convs(rlfn)[name]
        seen = {}
        hook = conv.register_forward_hook(lambda m, a, out: seen.update(x=a[0], y=out))
        with Q.simulated_int8(rlfn, calibration, [name]):
            mixed = rlfn(lr)
        hook.remove()
        scale, zp = R.activation_qparams(*calibration.ranges[name])
        wq, ws = R.quantize_weight_int8(conv.weight)
        torch.testing.assert_close(seen["y"], R.int8_conv(seen["x"], wq, ws, conv.bias, scale, zp, 1, 1), rtol=0, atol=0)
        after = rlfn(lr)
    assert torch.equal(before, after)  # the float model is back
    assert 0 < (mixed - before).abs().max() < 0.05


def test_choose_layers_meets_the_bound(rlfn, pairs, calibration):
    from esr_models.evaluation import int8 as Q

    every = Q.quantisable_convs(rlfn)
    loose = Q.choose_layers(rlfn, calibration, pairs, 4, bound_db=100.0)
    assert loose.int8_layers == list(every) and loose.int8_mac_fraction == 1.0
    assert set(loose.solo_loss_db) == set(every)
    all_loss = loose.loss_db
    tight = Q.choose_layers(rlfn, calibration, pairs, 4, bound_db=all_loss / 4)
    assert tight.loss_db <= all_loss / 4 and len(tight.int8_layers) < len(every)
    # what it reports is what simulating its choice measures
    assert tight.loss_db == pytest.approx(Q.psnr_loss(rlfn, calibration, pairs, 4, tight.int8_layers), abs=1e-9)
    # the layers it put back in float are the most sensitive ones alone
    back = set(every) - set(tight.int8_layers)
    assert min(tight.solo_loss_db[n] for n in back) >= max(tight.solo_loss_db[n] for n in tight.int8_layers)


def test_errors_are_named(rlfn, calibration):
    from esr_models.evaluation import int8 as Q

    with pytest.raises(EsrError, match="at least one image"):
        Q.calibrate(rlfn, [])
    with pytest.raises(EsrError, match="percentile"):
        Q.calibrate(rlfn, [], percentile=30)
    with pytest.raises(EsrError, match="not a calibrated quantisable conv of this model: head, nope"):
        with Q.simulated_int8(rlfn, calibration, ["head", "nope"]):
            pass

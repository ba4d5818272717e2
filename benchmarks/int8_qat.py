"""An experiment, not a feature: does quantisation-aware fine-tuning recover int8's PSNR loss?

    python -m benchmarks.int8_qat --model rlfn --steps 400 [--lr 2e-5] [--batch 8] [--crop 48]

The model's quantisable convs (``esr_models.evaluation.int8``) are fake-quantised with
straight-through rounding: inputs on the grids calibrated on BSD68's first 8 images (kept
fixed), weights re-quantised per output channel at every step. The student starts from the
float model and is distilled from it (L1 to the float model's output) on random LR crops of
BSD68's other images. Reported on Set5 / Set14: the student's float change, and its simulated
int8 change with the original and with recalibrated grids, all from the float model (dB).
Deterministic for a given thread count (seeded); takes minutes on two cores.
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.int8_accuracy import _data_dir, _hr_images


def _fake_quant_forward(conv: nn.Conv2d, grid: tuple[float, int]):
    """conv._conv_forward with u8 inputs on ``grid`` and per-channel int8 weights (the
    reference's grids, ``esr_kernels.reference``), rounded straight-through (the gradient
    passes the rounding as if it were the identity)."""
    from esr_kernels import reference as R

    scale, zero_point = grid

    def forward(x, w, b):
        xq = (R.quantize_u8(x, scale, zero_point).float() - zero_point) * scale
        w_q, w_scale = R.quantize_weight_int8(w)
        wq = w_q.float() * w_scale.view(-1, 1, 1, 1)
        return nn.Conv2d._conv_forward(conv, x + (xq - x).detach(), w + (wq - w).detach(), b)
    return forward


def run(name: str, steps: int, lr: float, batch: int, crop: int) -> None:
    import esr_models
    from esr_kernels import reference as R
    from esr_models.evaluation import int8 as Q

    torch.manual_seed(0)
    data = _data_dir()
    teacher = esr_models.load(name).eval()
    student = copy.deepcopy(teacher).train()
    cal_pairs = Q.hr_pairs(_hr_images(data / "BSD68", 8), 4)
    cal = Q.calibrate(teacher, (x for x, _ in cal_pairs))
    convs = Q.quantisable_convs(student)
    for n, c in convs.items():
        c._conv_forward = _fake_quant_forward(c, R.activation_qparams(*cal.ranges[n]))
    train = [x for x, _ in Q.hr_pairs(_hr_images(data / "BSD68")[8:], 4)]
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    for step in range(steps):
        crops = []
        for _ in range(batch):
            x = train[int(torch.randint(len(train), ()))]
            y0, x0 = (int(torch.randint(s - crop + 1, ())) for s in x.shape[-2:])
            crops.append(x[..., y0:y0 + crop, x0:x0 + crop])
        xb = torch.cat(crops)
        with torch.no_grad():
            target = teacher(xb)
        loss = F.l1_loss(student(xb), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step}: L1 to the float model {loss.item():.5f}", flush=True)
    for c in convs.values():
        c.__dict__.pop("_conv_forward", None)
    student.eval()
    recal = Q.calibrate(student, (x for x, _ in cal_pairs))
    with torch.no_grad():
        for ds in ("Set5", "Set14"):
            pairs = Q.hr_pairs(_hr_images(data / ds), 4)
            base = Q.mean_psnr(teacher, pairs, 4)
            print(f"{name} {ds}: float {base:.4f} dB; student float {Q.mean_psnr(student, pairs, 4) - base:+.4f}, "
                  f"student int8 {-Q.psnr_loss(student, cal, pairs, 4, None, base):+.4f} (original grids), "
                  f"{-Q.psnr_loss(student, recal, pairs, 4, None, base):+.4f} (recalibrated); "
                  f"float model int8 {-Q.psnr_loss(teacher, cal, pairs, 4, None, base):+.4f}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="rlfn")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=48, help="LR crop size")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    run(args.model, args.steps, args.lr, args.batch, args.crop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

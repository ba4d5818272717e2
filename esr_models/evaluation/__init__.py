"""Evaluation: MATLAB-compatible bicubic resize, PSNR/SSIM, and the challenge's protocol."""
from .imresize import imresize
from .metrics import psnr, rgb_to_y, ssim
from .protocol import evaluate_folder, make_lr, modcrop

__all__ = ["imresize", "psnr", "ssim", "rgb_to_y", "make_lr", "modcrop", "evaluate_folder"]

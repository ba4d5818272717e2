"""Training data: HR folders -> paired (LR, HR) patches.

Each HR image is decoded once, modcropped to the scale, and its LR made once by the package's
MATLAB-compatible bicubic (``evaluation.protocol.make_lr``, the challenge's own degradation):
downscaling the whole image, not each crop, so that patches near a crop edge see the same LR
as the evaluation does. Both are kept as uint8 tensors in shared memory, so DataLoader worker
processes read them without copying or decoding again. All of them stay in memory: about
3.2 bytes per HR pixel with its LR, so DIV2K's 800 training images (about 2.8 Mpixel each)
take about 7 GB.

Sampling is a pure function of (seed, global sample index): sample ``k`` belongs to epoch
``k // n_images``, whose image order is a permutation seeded by (seed, epoch); its crop
position and flips/rotation come from a generator seeded by (seed, k). The data "sampler
state" is therefore just the next sample index, and a resumed run draws exactly the batches an
uninterrupted one would, whatever the number of workers.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from esr_kernels.errors import InvalidValueError

from ..evaluation.protocol import list_images, make_lr, modcrop
from ..io.images import read_rgb_uint8


class PairedPatches(Dataset):
    """``ds[k]`` -> (lr (3, P/s, P/s) uint8, hr (3, P, P) uint8) for global sample index k.
    ``patch`` is the HR patch size, a multiple of ``scale``."""

    def __init__(self, folder: str | Path, patch: int, scale: int = 4, seed: int = 0):
        if patch % scale:
            raise InvalidValueError(f"patch size {patch} is not a multiple of the scale {scale}")
        files, _ = list_images(folder)
        self.patch, self.scale, self.seed = patch, scale, seed
        self.names, self.hr, self.lr = [], [], []
        small = []

        def decode(path: Path):
            hr = modcrop(read_rgb_uint8(path), scale)
            if min(hr.shape[-2:]) < patch:
                return None
            return hr.contiguous().share_memory_(), make_lr(hr, scale).share_memory_()

        # Threads: Pillow's decoder and torch's matmuls release the GIL, so a large training
        # set is decoded (once) several images at a time.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for path, pair in zip(files, pool.map(decode, files)):
                if pair is None:
                    small.append(path.name)
                    continue
                self.names.append(path.name)
                self.hr.append(pair[0])
                self.lr.append(pair[1])
        if small:
            warnings.warn(f"{len(small)} image(s) in {folder} smaller than the {patch}px patch left out: "
                          + ", ".join(small[:5]) + ("..." if len(small) > 5 else ""), stacklevel=2)
        if not self.hr:
            raise InvalidValueError(f"no image in {folder} is at least {patch}x{patch} pixels (after modcrop)")

    def with_patch(self, patch: int) -> "PairedPatches":
        """Same decoded images, another patch size (images now too small are left out)."""
        new = object.__new__(PairedPatches)
        new.patch, new.scale, new.seed = patch, self.scale, self.seed
        keep = [i for i, h in enumerate(self.hr) if min(h.shape[-2:]) >= patch]
        if not keep:
            raise InvalidValueError(f"no training image is at least {patch}x{patch} pixels")
        new.names = [self.names[i] for i in keep]
        new.hr = [self.hr[i] for i in keep]
        new.lr = [self.lr[i] for i in keep]
        return new

    def __len__(self) -> int:
        # Samples are addressed by an unbounded global index; the sampler never asks for len.
        return len(self.hr)

    def image_index(self, k: int) -> int:
        n = len(self.hr)
        epoch, pos = divmod(k, n)
        # One permutation per epoch, remembered for the epoch in progress (per process).
        cached = getattr(self, "_perm", None)
        if cached is None or cached[0] != (self.seed, epoch):
            cached = ((self.seed, epoch), np.random.default_rng([self.seed, 1, epoch]).permutation(n))
            self._perm = cached
        return int(cached[1][pos])

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.image_index(k)
        hr_img, lr_img = self.hr[i], self.lr[i]
        rng = np.random.default_rng([self.seed, 2, k])
        s, lp = self.scale, self.patch // self.scale
        lh, lw = lr_img.shape[-2:]
        y, x = int(rng.integers(0, lh - lp + 1)), int(rng.integers(0, lw - lp + 1))
        lr = lr_img[:, y:y + lp, x:x + lp]
        hr = hr_img[:, y * s:(y + lp) * s, x * s:(x + lp) * s]
        hflip, vflip, rot = rng.integers(0, 2, size=3)
        # h/v flips and a transpose give all 8 rotations/reflections (the 90-degree turns).
        if hflip:
            lr, hr = lr.flip(-1), hr.flip(-1)
        if vflip:
            lr, hr = lr.flip(-2), hr.flip(-2)
        if rot:
            lr, hr = lr.transpose(-1, -2), hr.transpose(-1, -2)
        return lr.contiguous(), hr.contiguous()


class IndexSampler(Sampler):
    """Yields global sample indices ``start, start + 1, ...`` without end."""

    def __init__(self, start: int = 0):
        self.start = start

    def __iter__(self):
        k = self.start
        while True:
            yield k
            k += 1


def make_loader(dataset: PairedPatches, batch: int, start_sample: int, num_workers: int,
                pin_memory: bool) -> DataLoader:
    """Endless loader of (lr (B, 3, P/s, P/s), hr (B, 3, P, P)) uint8 batches, starting at
    global sample ``start_sample`` (= iterations done x batch size)."""
    return DataLoader(dataset, batch_size=batch, sampler=IndexSampler(start_sample),
                      num_workers=num_workers, pin_memory=pin_memory, drop_last=True,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None)

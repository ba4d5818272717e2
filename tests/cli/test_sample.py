"""The shipped sample image is what its code makes, and the quick start upscales it."""
from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from esr_models.io.sample import SAMPLE_PATH, make_sample


def test_shipped_sample_is_made_by_its_code():
    # Exact against a PNG written on another machine: make_sample is +, *, clip and round (IEEE,
    # the same on every CPU) but for np.sin in the grass, whose SIMD and scalar paths can differ
    # by a few ulp (~1e-13 of a level); its values lie at least 1.6e-4 of a level from a rounding
    # edge.
    assert np.array_equal(np.asarray(Image.open(SAMPLE_PATH)), make_sample())


@pytest.mark.shared
def test_quick_start_needs_only_the_weights(run_esr, tmp_path):
    """`esr upscale --sample -o out` from another folder, with nothing from ../shared but the
    weights (ESR_WEIGHTS_DIR, set by conftest)."""
    proc = run_esr("upscale", "--sample", "-o", "out", "-q", cwd=tmp_path,
                   env={"ESR_SHARED_DIR": str(tmp_path / "absent")})
    assert proc.returncode == 0, proc.stderr
    out = Image.open(tmp_path / "out" / "sample_x4.png")
    assert out.size == (512, 384) and out.mode == "RGB"

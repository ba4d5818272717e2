"""csrc/common/spec.h is generated from esr_kernels/spec.py (python -m esr_kernels._spec_header):
the committed header must be what the generator writes now, and the C++/CUDA sources must take
the constants from it rather than restating them."""
from __future__ import annotations

import re
from pathlib import Path

from esr_kernels import spec
from esr_kernels._spec_header import HEADER_PATH, cpp_header

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"


def test_committed_header_equals_the_generated_one():
    assert HEADER_PATH.read_text() == cpp_header(), "run: python -m esr_kernels._spec_header"


def test_header_holds_every_constant_of_spec_py():
    text = HEADER_PATH.read_text()
    for name, value in vars(spec).items():
        if name.isupper() and name.startswith(("ACT_", "RES_", "SHORTCUT_")):
            assert f"{name} = {value}" in text
    assert f"kPoolKernel = {spec.POOL_KERNEL};" in text and f"kPoolStride = {spec.POOL_STRIDE};" in text
    assert f"kLeakySlope = {spec.LEAKY_SLOPE!r}f;" in text


def assert_nothing_restates(sources, patterns: dict, home: str) -> None:
    """No file of ``sources`` matches any of ``patterns`` ({what: regex}): ``home`` has them."""
    assert sources
    for path in sources:
        text = path.read_text()
        for what, pattern in patterns.items():
            assert not pattern.search(text), f"{path.relative_to(ROOT)} restates the {what}: use {home}"


def test_sources_do_not_restate_the_constants():
    sources = [p for p in CSRC.rglob("*") if p.suffix in (".h", ".cuh", ".cpp", ".cu") and p != HEADER_PATH]
    assert_nothing_restates(sources, {
        "enumerator definition": re.compile(r"\b(ACT|RES|SHORTCUT)_[A-Z_]+\s*=\s*\d"),
        "leaky slope": re.compile(r"0\.05f?\b"),
        "pool geometry": re.compile(r"\{\s*7\s*,\s*7\s*\}|\b7\s*\)\s*/\s*3\b|\bK\s*=\s*7\b|kPool(Kernel|Stride)\s*=\s*\d"),
    }, "csrc/common/spec.h")


def test_python_does_not_restate_the_pool_size_or_the_leaky_slope():
    """spec.py is their one Python home: ``pooled_size`` and ``LEAKY_SLOPE`` are imported, the
    formula and the slope not written again."""
    sources = [p for d in ("esr_kernels", "esr_models", "benchmarks", "tests") for p in (ROOT / d).rglob("*.py")
               if p not in (ROOT / "esr_kernels" / "spec.py", Path(__file__).resolve())]
    assert_nothing_restates(sources, {
        "pooled size": re.compile(r"-\s*(POOL_KERNEL|7)\)\s*//\s*(POOL_STRIDE|3)\b"),
        "leaky slope": re.compile(r"(LEAKY_SLOPE\s*=|leaky_relu\([^)]*,\s*0\.\d)"),
        "pool geometry": re.compile(r"max_pool2d\([^)]*,\s*7\s*,\s*3\s*\)"),
    }, "esr_kernels.spec")

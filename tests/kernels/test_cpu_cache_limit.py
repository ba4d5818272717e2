"""ESR_CPU_CACHE_MB has one parser, in Python (esr_kernels.env), used by the ``esr`` command's
checks and by the Python API when the CPU extension first loads; the extension takes the limit
through torch.ops.esr_native.set_cache_limit and reads no variable (issue 27: the C++ atoll
overflowed on 99999999999999999999 and turned the cache off, and "abc" passed the Python API).
The variable is read once per process: the API checks run in subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from esr_kernels.env import CPU_CACHE_VAR, cpu_cache_limit_bytes
from esr_kernels.errors import InvalidValueError

HUGE = "99999999999999999999"  # past 2**64


@pytest.mark.parametrize("text, limit", [(None, 1024 << 20), ("", 1024 << 20), ("0", 0), (" 64 ", 64 << 20),
                                         (str(1 << 30), 1 << 50), (str((1 << 30) + 1), None), (HUGE, None)])
def test_the_parser(monkeypatch, text, limit):
    if text is None:
        monkeypatch.delenv(CPU_CACHE_VAR, raising=False)
    else:
        monkeypatch.setenv(CPU_CACHE_VAR, text)
    assert cpu_cache_limit_bytes() == limit


@pytest.mark.parametrize("text", ["abc", "-1", "1.5", "1e3", "1_000", "١٢", "0x10"])
def test_the_parser_refuses_what_is_not_a_whole_number(monkeypatch, text):
    monkeypatch.setenv(CPU_CACHE_VAR, text)
    with pytest.raises(InvalidValueError, match=f"environment variable {CPU_CACHE_VAR}=.*whole number of megabytes"):
        cpu_cache_limit_bytes()


_API = """
import json, torch
from esr_kernels import policy
from esr_kernels.errors import InvalidValueError
out = {}
for name, call in [("empty_cache", policy.empty_cache),
                   ("resolve", lambda: policy.resolve_backend("cpu", torch.device("cpu"))),
                   ("limit", policy.cpu_cache_limit)]:
    try:
        out[name] = call()
    except InvalidValueError as e:
        out[name] = "InvalidValueError: " + str(e)
print(json.dumps(out))
"""


def _api(value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != CPU_CACHE_VAR}
    if value is not None:
        env[CPU_CACHE_VAR] = value
    r = subprocess.run([sys.executable, "-c", _API], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def settable():
    import torch

    from esr_kernels.extensions import native_ops

    try:
        ops = native_ops("_C_cpu")
    except RuntimeError as exc:
        pytest.skip(str(exc))
    if not hasattr(ops, "set_cache_limit"):
        pytest.skip("this build of the CPU extension predates set_cache_limit: rebuild it")
    return torch.ops.esr_native


@pytest.mark.native_cpu
@pytest.mark.parametrize("value, limit", [(None, 1024 << 20), ("0", 0), ("3", 3 << 20), (HUGE, None)])
def test_the_api_hands_the_parsed_limit_to_the_extension(settable, value, limit):
    assert _api(value)["limit"] == limit


@pytest.mark.native_cpu
def test_the_api_refuses_garbage_at_every_use_of_the_extension(settable):
    out = _api("abc")
    for name in ("empty_cache", "resolve", "limit"):
        assert out[name].startswith(f"InvalidValueError: environment variable {CPU_CACHE_VAR}='abc'"), out


@pytest.mark.native_cpu
def test_lowering_the_limit_evicts_at_once(settable):
    import torch

    before = settable.cache_limit()
    try:
        settable.set_cache_limit(-1)
        assert settable.cache_limit() == -1
        settable.empty_cache()
        settable.conv1x1([torch.randn(1, 16, 64, 128)], torch.zeros(16, 16), torch.zeros(16), 16, 0,
                         None, 16, None, 0, None, None, 0, 0)  # 512 KB, freed at once: cached
        settable.set_cache_limit(0)
        assert settable.cache_limit() == 0 and settable.empty_cache() == 0  # evicted by the new limit
    finally:
        settable.set_cache_limit(before)

"""Checkpoint lookup, checksum and download errors."""
from __future__ import annotations

import shutil

import pytest

from esr_models import weights


def test_env_dir_is_searched_first_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("ESR_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "team00_rlfn.pth").write_bytes(b"corrupt")
    with pytest.raises(weights.WeightsError, match="checksum mismatch"):
        weights.resolve("rlfn")


@pytest.mark.shared
def test_env_dir_copy_is_used(tmp_path, monkeypatch, shared):
    shutil.copy(shared / "weights" / "team01_pfdnlite.pth", tmp_path)
    monkeypatch.setenv("ESR_WEIGHTS_DIR", str(tmp_path))
    assert weights.resolve("pfdnlite") == tmp_path / "team01_pfdnlite.pth"


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ESR_WEIGHTS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("ESR_SHARED_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("ESR_CACHE_DIR", str(tmp_path / "cache"))

    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(weights.urllib.request, "urlopen", refuse)
    with pytest.raises(weights.WeightsError, match="could not download team33_IFADNet.pth"):
        weights.resolve("ifadnet")
    assert not any((tmp_path / "cache").iterdir())  # no partial file left behind


def test_downloaded_file_with_wrong_hash_is_rejected(tmp_path, monkeypatch):
    import io

    monkeypatch.setenv("ESR_SHARED_DIR", str(tmp_path / "none"))
    monkeypatch.delenv("ESR_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("ESR_CACHE_DIR", str(tmp_path / "cache"))

    class Resp(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(weights.urllib.request, "urlopen", lambda *a, **k: Resp(b"tampered"))
    with pytest.raises(weights.WeightsError, match="checksum mismatch"):
        weights.resolve("rlfn")
    assert not (tmp_path / "cache" / "team00_rlfn.pth").exists()


def test_unknown_name():
    with pytest.raises(weights.WeightsError, match="known"):
        weights.resolve("nope")

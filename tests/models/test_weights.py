"""Checkpoint lookup, checksum and download errors."""
from __future__ import annotations

import shutil

import pytest

from esr_models.arch import weights


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


def test_product_code_does_not_look_beside_the_package(tmp_path, monkeypatch):
    """../shared is this repository's test data: only the tests point at it (ESR_WEIGHTS_DIR)."""
    monkeypatch.delenv("ESR_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("ESR_CACHE_DIR", str(tmp_path / "cache"))
    paths = weights.candidate_paths(weights.CHECKPOINTS["rlfn"])
    assert paths == [tmp_path / "cache" / "team00_rlfn.pth"]
    with pytest.raises(weights.WeightsError):
        weights.resolve("rlfn", allow_download=False)


def test_hanging_download_gives_up_in_time(tmp_path, monkeypatch):
    """A server that accepts and then says nothing, or trickles bytes: a clear error within
    DOWNLOAD_TIMEOUT_S (shortened here), saying where to put the file."""
    import socket
    import threading
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    stop = threading.Event()

    def serve():
        conns = []
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conns.append(conn)
            conn.recv(4096)
            if len(conns) == 2:  # the second client gets a response that trickles
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n")
                threading.Thread(target=trickle, args=(conn,), daemon=True).start()
        for c in conns:
            c.close()

    def trickle(conn):
        for _ in range(200):
            if stop.is_set():
                return
            try:
                conn.sendall(b"x")
            except OSError:
                return
            time.sleep(0.05)

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.delenv("ESR_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("ESR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT_S", 1.5)
    monkeypatch.setattr(weights, "SOCKET_TIMEOUT_S", 1.0)
    ckpt = weights.CHECKPOINTS["rlfn"]
    monkeypatch.setitem(weights.CHECKPOINTS, "rlfn", weights.Checkpoint(
        ckpt.filename, ckpt.sha256, f"http://127.0.0.1:{server.getsockname()[1]}/team00_rlfn.pth"))
    try:
        for _ in range(2):  # silent, then trickling
            start = time.monotonic()
            with pytest.raises(weights.WeightsError, match=r"ESR_WEIGHTS_DIR.*by hand"):
                weights.resolve("rlfn")
            assert time.monotonic() - start < 4
    finally:
        stop.set()
        server.close()
    assert not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("content", [lambda torch: torch.zeros(3), lambda torch: [1, 2, 3]])
def test_a_file_that_is_not_a_state_dict(tmp_path, content):
    import torch

    import esr_models
    from esr_models.arch.checkpoints import CheckpointError

    path = tmp_path / "odd.pth"
    torch.save(content(torch), path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        esr_models.load(path)


@pytest.mark.shared
def test_non_finite_weights_are_refused_at_load(tmp_path, shared):
    import torch

    import esr_models
    from esr_models.arch.checkpoints import CheckpointError

    state = torch.load(shared / "weights" / "team01_pfdnlite.pth", weights_only=True)
    key = next(iter(state))
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        esr_models.load(tmp_path / "nan.pth")

"""Artifacts under faults: a failing disk never replaces a good file, and resuming skips what a crash left behind."""
import contextlib
import resource

import pytest
import torch

from pinas.engine.checkpoint import Checkpointer
from pinas.io.artifacts import ArtifactWriteError, atomic_torch_save, atomic_write_json, sha256_file


@contextlib.contextmanager
def file_size_limit(limit_bytes: int):
    """The kernel refuses writes past ``limit_bytes`` (EFBIG), as a full disk refuses them (ENOSPC)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_failed_write_names_the_file_and_keeps_the_good_one(tmp_path):
    target = tmp_path / "model.pt"
    atomic_torch_save({"w": torch.ones(10)}, target)
    good = sha256_file(target)
    with file_size_limit(64 * 1024), pytest.raises(ArtifactWriteError) as caught:
        atomic_torch_save({"w": torch.zeros(100_000)}, target)  # 400 kB: torch.save fails part-way
    message = str(caught.value)
    assert str(target) in message and "File too large" in message and "run the same command again" in message
    assert not message.startswith("[Errno")
    assert sha256_file(target) == good  # the previous file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left behind

    with file_size_limit(16), pytest.raises(ArtifactWriteError, match="summary.json"):
        atomic_write_json(tmp_path / "summary.json", {"text": "x" * 100})
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_checkpointer_keeps_resuming_from_the_last_good_checkpoint(tmp_path, caplog):
    ckpt = Checkpointer(tmp_path, keep=2)
    ckpt.save({"step": 2, "w": torch.ones(4)}, 2)
    with file_size_limit(64 * 1024), pytest.raises(ArtifactWriteError, match="checkpoint-00000004.pt"):
        ckpt.save({"step": 4, "w": torch.zeros(100_000)}, 4)
    assert ckpt.latest_step() == 2 and ckpt.load_latest()["step"] == 2

    # what a SIGKILL in the middle of a save leaves: a temp file, never a checkpoint name
    (tmp_path / ".checkpoint-00000006.pt.abc123.tmp").write_bytes(b"torn")
    assert ckpt.latest_step() == 2
    # a checkpoint damaged after it was written (bad disk, manual copy) is skipped with a warning
    (tmp_path / "checkpoint-00000008.pt").write_bytes(b"not a zip file")
    assert ckpt.load_latest()["step"] == 2
    assert "skipping unreadable checkpoint" in caplog.text
    ckpt.save({"step": 10, "w": torch.ones(4)}, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000008.pt", "checkpoint-00000010.pt"]

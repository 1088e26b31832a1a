"""`pinas-pipeline status` reads a run root's files: done, cached, corrupted, running, partial, missing."""
import torch

from flows.cli import main as cli_main
from flows.status import run_status
from pinas.io.artifacts import atomic_torch_save, write_manifest
from pinas.io.locking import hold


def _stage(root, name, key):
    folder = root / "stages" / f"{name}-{key}"
    folder.mkdir(parents=True)
    return folder


def test_states_of_stage_folders(tmp_path, capsys):
    done = _stage(tmp_path, "supernet", "a" * 16)
    atomic_torch_save({"w": torch.ones(2)}, done / "supernet.pt")
    write_manifest(done, "supernet", ["supernet.pt"], {})
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / ("a" * 64)).write_text("{}")  # Prefect's record for that key

    uncached = _stage(tmp_path, "search", "b" * 16)
    (uncached / "result.json").write_text("{}")
    write_manifest(uncached, "search", ["result.json"], {})

    broken = _stage(tmp_path, "retrain", "c" * 16)
    (broken / "model.pt").write_bytes(b"good")
    write_manifest(broken, "retrain", ["model.pt"], {})
    (broken / "model.pt").write_bytes(b"bad!")

    partial = _stage(tmp_path, "transfer-coco", "d" * 16)
    (partial / "iter_20.pth").write_bytes(b"x")
    (partial / "last_checkpoint").write_text(str(partial / "iter_20.pth"))

    running = _stage(tmp_path, "transfer-ade20k", "e" * 16)
    with hold(running):  # what a live run holds while it trains in the folder
        rows = {r["stage"]: r for r in run_status(tmp_path, ["supernet", "search", "retrain", "transfer-coco",
                                                             "transfer-ade20k", "export"])}
    assert rows["supernet"]["state"] == "cached"
    assert rows["search"]["state"] == "done"
    assert rows["retrain"]["state"] == "corrupted" and "model.pt" in rows["retrain"]["detail"]
    assert rows["transfer-coco"]["state"] == "partial" and "iter_20.pth" in rows["transfer-coco"]["detail"]
    assert rows["transfer-ade20k"]["state"] == "running"
    assert rows["export"]["state"] == "missing"

    assert cli_main(["status", "--run-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cached" in out and "partial" in out and "missing" in out

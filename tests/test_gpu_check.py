"""The prepared GPU check (benchmarks/gpu_check.py) at toy size on the CPU, so it cannot rot before a GPU is at
hand: every section runs, and its figures are consistent with each other."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_every_section_at_toy_size(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "gpu_check.py", "--toy", "--json", str(out)], cwd=REPO / "benchmarks",
                          capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["space"] == "demo" and report["bf16_peak_tflops"] is None
    for layout in ("nchw", "channels_last"):
        entry = report["supernet"][layout]
        pinas, bare = entry["pinas"]["images_per_s"], entry["bare"]["images_per_s"]
        assert pinas > 0 and bare > 0 and entry["ratio_pinas_over_bare"] == pytest.approx(pinas / bare, rel=0.02)
    layouts = report["supernet"]
    assert report["faster_memory_format"] == max(layouts, key=lambda k: layouts[k]["pinas"]["images_per_s"])
    search = report["search"]
    assert search["candidates"] >= 2 and search["speed-up"] == pytest.approx(
        search["prefix_sharing"]["evaluations_per_s"] / search["per_candidate"]["evaluations_per_s"], rel=0.02)
    assert report["retrain"]["images_per_s"] > 0 and report["probe"]["images_per_s"] > 0
    assert "memory format for the supernet step" in proc.stdout

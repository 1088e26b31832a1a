"""Photograph the Prefect UI of real pinas runs with headless Chromium: the run forms and the artifact pages.

    python scripts/ui_screenshots.py [--out ui-screenshots] [--keep]

A fresh ``prefect server start`` on a free port, the README's deployment commands as written
(``scripts/readme_deploy.py``: pools, ``deploy --all``, a worker, the demo, paper and study runs), then, once the
demo and the study have finished, one PNG per page into ``--out``: each deployment's "Custom run" form, the demo's
flow-run page, and every image, progress and table artifact of the demo and study runs. Needs Debian's chromium
(``apt-get install chromium``); takes 10-15 minutes on 2 cores (the demo pipeline, then the study's retrains).
Look at the pictures: that the plots render, that the form can be filled.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from readme_deploy import ReadmeDeployment, copy_checkout, readme_commands

REPO = Path(__file__).resolve().parents[1]
#: the artifacts photographed, with the window height their page needs
ARTIFACT_PAGES = {"supernet-curves": 1100, "retrain-curves": 1100, "search-plots": 1700, "study-plots": 2600,
                  "supernet-progress": 700, "search-top-k": 1100, "study-correlations": 900}


def screenshot(url: str, path: Path, height: int = 1100, width: int = 1400, tries: int = 3) -> Path:
    """A PNG of ``url`` after its scripts have run (virtual time lets the single-page app fetch and render).

    Under virtual time the UI's fade-in transition can stop part-way and leave the page dimmed (more often on a busy
    machine): reduced motion shortens it, and a dimmed picture is taken again.
    """
    for _ in range(tries):
        subprocess.run([shutil.which("chromium") or "chromium", "--headless", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--window-size={width},{height}", "--virtual-time-budget=20000",
                        "--force-prefers-reduced-motion", f"--screenshot={path}", url],
                       check=True, capture_output=True, timeout=120)
        if not dimmed(path):
            return path
    print(f"warning: {path.name} is still dimmed after {tries} tries", file=sys.stderr)
    return path


def dimmed(path: Path) -> bool:
    """Whether the page right of the sidebar has no near-white pixel: its headings are drawn white when fully lit."""
    from PIL import Image

    with Image.open(path) as image:
        main = image.convert("L").crop((image.width // 5, 0, image.width, image.height))
        return main.getextrema()[1] < 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "ui-screenshots")
    parser.add_argument("--timeout-s", type=float, default=3600, help="longest wait for the runs to finish")
    args = parser.parse_args(argv)
    if not shutil.which("chromium"):
        sys.exit("ui_screenshots: chromium not found (apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pinas-ui-"))
    checkout = copy_checkout(REPO, work / "checkout")
    with ReadmeDeployment(checkout, work, Path(sys.executable).parent) as deployment:
        deployment.run_commands(readme_commands(REPO / "README.md"))
        ui = deployment.api_url.removesuffix("/api")
        for deployment_row in deployment.api("/deployments/filter", {}):
            shot = screenshot(f"{ui}/deployments/deployment/{deployment_row['id']}/run",
                              args.out / f"form-{deployment_row['name']}.png", height=1900)
            print(f"run form of {deployment_row['name']}: {shot}")
        for name in ("pinas-pipeline/demo", "pinas-study/study-demo"):
            run = deployment.wait_final(deployment.flow_runs[name], args.timeout_s)
            print(f"{name}: {run['state']['name']}")
            page = screenshot(f"{ui}/runs/flow-run/{run['id']}", args.out / f"run-{name.split('/')[1]}.png")
            print(f"flow run page: {page}")
            seen = set()  # one page per key: the study's retrains publish one training curve each
            for artifact in deployment.api("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}):
                key = artifact["key"]
                if key in ARTIFACT_PAGES and key not in seen:
                    seen.add(key)
                    shot = screenshot(f"{ui}/artifacts/artifact/{artifact['id']}",
                                      args.out / f"{name.split('/')[1]}-{key}.png", ARTIFACT_PAGES[key])
                    print(f"{name} artifact {key}: {shot}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

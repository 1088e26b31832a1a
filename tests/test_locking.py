"""Folder locks: exclusive among live processes, freed by the kernel when the holder is killed."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pinas.io.locking import FolderBusyError, hold, is_held

REPO = Path(__file__).resolve().parents[1]
HOLDER = ("import sys, time\nfrom pinas.io.locking import hold\nwith hold(sys.argv[1]):\n"
          "    print('held', flush=True)\n    time.sleep(600)\n")


def test_a_second_holder_is_refused_until_the_first_is_killed(tmp_path):
    folder = tmp_path / "stages" / "supernet-abc"
    assert not is_held(folder)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout.readline().strip() == "held"
        assert is_held(folder)
        with pytest.raises(FolderBusyError, match=f"supernet-abc is in use by pid {proc.pid} on"), hold(folder):
            pytest.fail("a second holder got the lock")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not is_held(folder)  # SIGKILL released it: no stale lock to clean up by hand
    with hold(folder):
        assert is_held(folder)
    assert not is_held(folder)

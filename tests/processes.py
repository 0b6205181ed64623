"""Process helpers shared by the end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM the process group a test started with ``start_new_session=True`` (the process and
    every child it spawned), SIGKILL it after ``grace`` seconds; a group already gone is fine."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass

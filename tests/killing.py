"""Killing a child process mid-run, at a moment the child chooses: what the crash-resume tests share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def sigkill_once_ready(script: Path, *args, ready: Path) -> None:
    """Run `script` with `args`; once it creates `ready` (and stalls there), SIGKILL it.

    Asserts the child reached that point alive and died of the signal, not of its own accord.
    """
    proc = subprocess.Popen([sys.executable, str(script), *map(str, args)],
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    try:
        deadline = time.time() + 600  # only a limit for a broken child: it stalls once ready
        while not ready.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists() and proc.poll() is None, "the child neither stalled mid-run nor stayed alive"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

"""Child Python processes for the multi-process tests: started together, always reaped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from conftest import SRC


def run_children(
    script: str, args_per_child: list[list[str]], *, timeout: float = 300, together: bool = False
) -> list[str]:
    """Starts ``python -c script ARGS`` for each argument list at once (this checkout's
    embedml importable) and returns their stdout, once each has exited 0 (asserted, their
    stderr in the message); a child still running when this fails is killed.

    With ``together`` every child's stdin is one pipe, closed once all are started: a child
    that reads its stdin to the end waits there until all are running.
    """
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    start_r, start_w = os.pipe() if together else (None, None)
    try:
        children = [
            subprocess.Popen(
                [sys.executable, "-c", script, *args],
                env=env,
                stdin=start_r,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in args_per_child
        ]
    finally:
        if together:
            os.close(start_r)
            os.close(start_w)
    try:
        outputs = [child.communicate(timeout=timeout) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
                child.wait()
    assert all(c.returncode == 0 for c in children), [err for _, err in outputs]
    return [out for out, _ in outputs]

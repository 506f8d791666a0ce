"""Kill a `synth` subprocess at a chosen point of its run (read from its ``events.jsonl``): the shared
harness of the kill -9 / resume tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ENV = {**os.environ, "SYNTH_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}


def events(run_dir: Path) -> list[dict]:
    """The run's events so far (a line cut by a kill is left out)."""
    p = run_dir / "events.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.endswith("}")] if p.exists() else []


def run_and_kill(
    args: list[str], run_dir: Path, should_kill: Callable[[list[dict]], bool], timeout: float = 300
) -> bool:
    """Start the run; SIGKILL it as soon as ``should_kill(new_events)`` holds. True if killed."""
    before = len(events(run_dir))
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while proc.poll() is None and time.time() < deadline:
            if should_kill(events(run_dir)[before:]):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return False


def committed(stage: str, n: int = 1) -> Callable[[list[dict]], bool]:
    """True once ``n`` batches of ``stage`` are committed."""
    return lambda evs: sum(e["event"] == "batch_committed" and e["stage"] == stage for e in evs) >= n

"""Peak memory of one piece of work, measured in a fresh process: shared by the benchmarks.

A child process loads what it needs, calls ``reset_peak_rss()`` (Linux: clears the VmHWM mark and
returns the resident memory at that moment), does the work, and reports ``peak_rss_mb()``: the
difference is the memory the work itself needed. ``CHILD_ENV`` makes glibc hand every freed block
of 128 KiB or more straight back to the kernel (it otherwise keeps freed blocks of up to 32 MiB in
its heap), so the peak measures the tensors alive at once, the same way for every model measured.
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from pathlib import Path

CHILD_ENV = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", HF_HUB_OFFLINE="1")


def _status_mb(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024


def reset_peak_rss() -> float:
    """Reset the peak-RSS mark so the next reading covers only what follows; returns the current RSS."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def run_child(script: str, *args) -> dict:
    """Run `script` with `args` in a fresh interpreter; its last stdout line is a JSON object."""
    command = [sys.executable, script, *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env=CHILD_ENV)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])

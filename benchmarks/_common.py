"""Shared helpers for the benchmark scripts: environment facts, the reference runner, medians."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PHI3V_SHARED", REPO.parent / "shared"))
REF_PYTHON = os.environ.get("PHI3V_REF_PYTHON", "/tmp/phi3v-reference-env/bin/python")
REF_RUN = SHARED / "tools" / "reference" / "run.py"


def env_info() -> dict:
    import torch

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        sha = ""
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(python=platform.python_version(), torch=torch.__version__, threads=torch.get_num_threads(),
                cpu=cpu, cpu_count=os.cpu_count(), git_sha=sha)


def reference_available() -> bool:
    return Path(REF_PYTHON).is_file() and REF_RUN.is_file()


def run_reference(*args: str, timeout: int = 1800) -> dict:
    """Run the original implementation's runner; returns its last-line JSON."""
    out = subprocess.run([REF_PYTHON, str(REF_RUN), *args], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"reference runner failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(xs) -> float:
    return float(statistics.median(xs))


def peak_rss_mib() -> float:
    """VmHWM of this process (ru_maxrss would include a forking parent's peak)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def print_result(result: dict) -> None:
    """The last line of every benchmark: one JSON object."""
    print(json.dumps(result), flush=True)
    sys.stdout.flush()

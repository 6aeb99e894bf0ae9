"""The dry run's memory forecast against the measured peak of the same run.

    python benchmarks/run.py memory [--quick] [--workdir DIR]

For each kind of run (classes; classes with float32 probabilities; float16 features)
on a real orthophoto mosaic of 4096 x 4096 with the HRNetV2-W48 stand-in (the real
architecture and cost, random weights), ``isprs-seg ... --dry-run --json`` gives the
forecast peak host memory, then the same command without ``--dry-run`` runs in its own
process, whose peak resident memory (VmHWM, polled) is the measurement. Prints the
forecast, the measurement and their ratio per run; the last line is one JSON object
with the ratios (within 0.75-1.25 is the target).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

RUNS = {
    "classes": ["predict", "--no-cog"],
    "probabilities_float32": ["predict", "--no-cog", "--probabilities"],
    "features_float16": ["features"],
}


def _vm_hwm_mb(pid: int) -> float:
    from run import _peak_of  # the benchmarks' one reader of a process's peak

    return _peak_of(pid)


def _measured(command: list[str]) -> tuple[float, float]:
    """(peak resident MB, seconds) of ``command`` in its own process."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _vm_hwm_mb(proc.pid))
        time.sleep(0.1)
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed: {proc.stderr.read()[-400:]}")
    return peak, time.perf_counter() - started


def main(work: Path, image: Path, model_dir: Path) -> dict:
    cli = [sys.executable, "-m", "isprs_seg"]
    env_model = {**os.environ, "ISPRS_SEG_MODEL": str(model_dir)}
    os.environ.update(env_model)
    print(f"\n## dry-run memory forecast against the measured peak: {image.name}, W48 stand-in, CPU")
    results = {}
    for name, args in RUNS.items():
        out = work / f"memory_{name}.tif"
        common = [*args, str(image), "-o", str(out), "-q", "--overwrite"]
        planned = subprocess.run([*cli, *common, "--dry-run", "--json"], capture_output=True, text=True, check=True)
        forecast = json.loads(planned.stdout.splitlines()[0])["host_memory"] / 2**20
        peak, seconds = _measured([*cli, *common])
        results[name] = forecast / peak
        print(f"{name:22s} forecast {forecast:6.0f} MB, measured peak {peak:6.0f} MB, ratio {forecast / peak:.2f} "
              f"(run {seconds:.0f} s)", flush=True)
    summary = {f"{name}_ratio": round(ratio, 3) for name, ratio in results.items()}
    print(json.dumps(summary))
    return summary

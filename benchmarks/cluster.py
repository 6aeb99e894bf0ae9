"""--engine ray on one machine: 1 against 2 CPU workers, and what strip borders cost.

    python benchmarks/run.py cluster [--quick] [--workdir DIR]

With the HRNetV2-W48 stand-in (the real architecture and cost, random weights) on a
real orthophoto mosaic, a private Ray cluster runs ``predict`` with one worker, then
with two, each worker's TensorFlow limited to one thread (``--cpus-per-worker 1``), on
the same strips. Prints the time to start the cluster and load the model on every
worker, the time of each run (the model already loaded), the speed-up and the scaling
efficiency (time with one / (2 x time with two)), and checks the two class rasters are
the same bytes. Then, from the plan alone, the extra compute of the strip borders:
patches sent to the model by all the strips over the patches of one local run, for the
benchmark's strips and at the default strip size on mosaics users have. The last line
is one JSON object with the figures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def border_cost(height: int, width: int, strip_rows: int, tile: int = 768, overlap: int = 128, batch: int = 4
                ) -> float:
    """Patches run by all the strips of a ``height x width`` raster over those of one run."""
    from isprs_seg import contract
    from isprs_seg.tiling.grid import make_grid
    from isprs_seg.tiling.plan import plan_batches, plan_strips, strip_batches

    grid = make_grid(height, width, tile, overlap, contract.NETWORK_STRIDE)
    batches = plan_batches(grid, batch)
    run = sum(len(b) for s in plan_strips(height, strip_rows) for b in strip_batches(batches, s, grid.patch_shape[0]))
    return run / len(grid)


def main(work: Path, image: Path, model_dir: Path, strip_rows: int) -> dict:
    import rasterio

    from isprs_seg import predict_raster
    from isprs_seg.runs.cluster import ModelLoad, RayEngine
    from isprs_seg.tiling.plan import DEFAULT_STRIP_ROWS

    with rasterio.open(image) as src:
        height, width = src.height, src.width
    print(f"\n## --engine ray on {image.name} ({width} x {height}), W48 stand-in, strips of {strip_rows} rows, "
          "TensorFlow on one thread per worker")
    seconds, started = {}, {}
    for workers in (1, 2):
        began = time.perf_counter()
        with RayEngine(ModelLoad(str(model_dir)), workers=workers, cpus_per_worker=1, strip_rows=strip_rows) as engine:
            engine.describe("predict")
            started[workers] = time.perf_counter() - began
            out = work / f"cluster_{workers}.tif"
            result = predict_raster(image, out, engine=engine, tile=768, overlap=128)
            seconds[workers] = result.seconds
        print(f"{workers} worker(s): cluster started and model loaded in {started[workers]:.1f} s; run "
              f"{seconds[workers]:.1f} s ({result.tiles} patches)", flush=True)
    same = (work / "cluster_1.tif").read_bytes() == (work / "cluster_2.tif").read_bytes()
    speedup = seconds[1] / seconds[2]
    print(f"speed-up {speedup:.2f}, scaling efficiency {speedup / 2:.2f}; class rasters identical: {same}")
    here = border_cost(height, width, strip_rows)
    print(f"strip borders: {100 * (here - 1):.1f} % extra patches here ({strip_rows}-row strips)")
    default = {side: border_cost(side, side, DEFAULT_STRIP_ROWS) for side in (20_000, 100_000)}
    for side, cost in default.items():
        print(f"strip borders at the default {DEFAULT_STRIP_ROWS} rows, {side} px square: {100 * (cost - 1):.1f} % "
              "extra patches")
    summary = {"start_seconds": round(started[2], 1), "one_worker_seconds": round(seconds[1], 1),
               "two_workers_seconds": round(seconds[2], 1), "speedup": round(speedup, 3),
               "efficiency": round(speedup / 2, 3), "identical": same, "border_extra_here": round(here - 1, 4),
               **{f"border_extra_default_{side}": round(cost - 1, 4) for side, cost in default.items()}}
    print(json.dumps(summary))
    return summary

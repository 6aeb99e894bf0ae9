"""GIS outputs: the cost of Cloud Optimized GeoTIFFs and the throughput of vectorize.

    python benchmarks/run.py gis [--quick] [--workdir DIR]

1. COG conversion of a class raster (uint8, MODE overviews) and of float32 probabilities
   (7 bands, AVERAGE overviews): seconds and peak extra disk (GDAL's temporary overviews
   and the second copy) per gigapixel, measured on one large raster each;
2. vectorize: megapixels and polygons per second on a large class raster;
3. evaluate: megapixels per second and peak RSS (a fresh process) on a large class raster
   against labels of the same size (the class raster shifted by a few pixels).

The class raster is the small stand-in's prediction on a real orthophoto, mirrored to
size: its classes are noisier than a real model's, so it makes more polygons (a
pessimistic throughput for vectorize).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
from run import write_mosaic


def _disk(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())


def _peak_disk_while(directory: Path, work) -> tuple[float, int]:
    """(seconds, peak bytes in ``directory`` above what was there before) of ``work()``."""
    base, peak, done = _disk(directory), [0], threading.Event()

    def watch():
        while not done.is_set():
            try:
                peak[0] = max(peak[0], _disk(directory) - base)
            except FileNotFoundError:
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    done.set()
    thread.join()
    return seconds, peak[0]


def main(work: Path, quick: bool, ortho: Path, model_dir: Path) -> None:
    import rasterio

    from isprs_seg.analysis.vectorize import vectorize_raster
    from isprs_seg.api import predict_raster
    from isprs_seg.io.outputs import to_cog
    from isprs_seg.model import load_model

    gis = work / "gis"
    shutil.rmtree(gis, ignore_errors=True)
    gis.mkdir()
    result = predict_raster(ortho, gis / "seed.tif", model=load_model(model_dir), probabilities=True, cog=False,
                            tile=256, overlap=64)
    with rasterio.open(result.outputs[0]) as src:
        classes, profile = src.read(), src.profile
    with rasterio.open(result.outputs[1]) as src:
        probabilities = src.read()
    classes = np.concatenate([classes, classes[:, :, ::-1]], axis=2)
    classes = np.concatenate([classes, classes[:, ::-1]], axis=1)
    probabilities = np.concatenate([probabilities, probabilities[:, :, ::-1]], axis=2)
    probabilities = np.concatenate([probabilities, probabilities[:, ::-1]], axis=1)

    print("\n## 1. Cloud Optimized GeoTIFF: conversion of the streamed GeoTIFF (2 CPU cores)")
    for role, block, side, extra in (("classes", classes, 8192 if quick else 32768, {"nodata": 255}),
                                     ("probabilities", probabilities, 2048 if quick else 8192, {"predictor": 3})):
        folder = gis / role
        folder.mkdir()
        path = write_mosaic(folder / f"{role}.tif", block, side, side, profile | extra)
        before = path.stat().st_size
        seconds, peak = _peak_disk_while(folder, lambda path=path, role=role: to_cog(path, role, path))
        gp = side * side / 1e9
        after = path.stat().st_size
        print(f"{role:13s} {side} x {side} ({gp:.2f} Gpx): {seconds:.1f} s, {seconds / gp:.0f} s per gigapixel; "
              f"streamed GeoTIFF {before / 2**20:.0f} MB, COG {after / 2**20:.0f} MB; peak extra disk while "
              f"converting {peak / 2**20:.0f} MB ({peak / before:.2f} x the streamed file, "
              f"{peak / gp / 2**30:.2f} GB per gigapixel)", flush=True)
        os.remove(path)

    print("\n## 2. vectorize (all classes, pixel edges)")
    side = 4096 if quick else 16384
    path = write_mosaic(gis / "classes.tif", classes, side, side, profile | {"nodata": 255})
    with rasterio.open(result.outputs[0]) as src:
        names = src.tags()["CLASS_NAMES"]
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(CLASS_NAMES=names)
    started = time.perf_counter()
    done = vectorize_raster(path, gis / "classes.gpkg")
    seconds = time.perf_counter() - started
    mp = side * side / 1e6
    print(f"vectorize {side} x {side} ({mp:.0f} Mpx): {seconds:.1f} s, {mp / seconds:.1f} Mpx/s, "
          f"{done.polygons} polygons ({done.polygons / seconds:.0f} per second)", flush=True)

    print("\n## 3. evaluate (3 px eroded boundaries and all pixels, in one pass)")
    labels = gis / "labels.tif"
    with rasterio.open(path) as src, rasterio.open(labels, "w", **src.profile) as dst:
        for row in range(0, side, 1024):
            window = ((row, row + 1024), (0, side))
            dst.write(np.roll(src.read(1, window=window), 3, axis=1), 1, window=window)
    import json
    import subprocess
    import sys

    # peak RSS from VmHWM: ru_maxrss would carry over this (large) process's own peak
    script = ("import json, time; from isprs_seg.analysis.evaluate import evaluate; t = time.perf_counter(); "
              f"r = evaluate({str(path)!r}, {str(labels)!r}); "
              "hwm = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0]; "
              "print(json.dumps({'seconds': time.perf_counter() - t, 'rss_mb': hwm / 1024, "
              "'oa': r.all.metrics()['overall_accuracy']}))")
    report = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                       check=True).stdout.splitlines()[-1])
    print(f"evaluate {side} x {side} ({mp:.0f} Mpx): {report['seconds']:.1f} s, {mp / report['seconds']:.1f} Mpx/s, "
          f"peak RSS {report['rss_mb']:.0f} MB (overall accuracy {report['oa']:.3f})", flush=True)

"""Benchmarks of isprs-seg's pipeline, printed as ratios measured in one run on this machine.

    python benchmarks/run.py            # everything (about 20 minutes on 2 CPU cores)
    python benchmarks/run.py --quick    # smaller inputs, no W48 stand-in

Measures, with stand-in models built on the spot (isprs_seg.testing; random weights,
the real interface and, for W48, the real compute cost):

1. efficiency: end-to-end wall time of ``predict_raster`` over the model-only time for
   the same patches (the same batches through the same model call, nothing else);
2. memory: peak RSS on a tall input (2048 x 16384) over a square one (2048 x 2048);
3. throughput in megapixels per second;
4. against the whole-image approach a user might write with the ``tiler`` package (read
   the whole image with rasterio, split, predict, merge with a window, argmax, write):
   time and peak RSS at 4096 and 16384 px a side, on the same model;
5. features: size on disk per input megapixel and peak RSS for a 4096 x 4096 input.

Each measurement runs in its own process, so peak RSS is that of one job. Inputs are
built from a real orthophoto in ../shared/data (mirrored to the needed size). Needs
``pip install tiler`` for (4).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: A real orthophoto to mirror to size: 7.7 cm drone imagery from ../shared/data, else the
#: 0.6 m orthophoto shipped with the tests.
ORTHO = Path(os.environ.get("ISPRS_SEG_TEST_DATA", ROOT.parent / "shared" / "data")) / \
    "orthophoto" / "drone_zanzibar_8cm" / "tanzania_sample.tif"
if not ORTHO.exists():
    ORTHO = ROOT / "tests" / "data" / "rasterio_cogeo.tif"


# --------------------------------------------------------------------------- children


def _peak_rss_mb() -> float:
    """This process's own peak RSS. Not ru_maxrss: Linux carries it over from the parent
    across fork and exec, so a child of a large process would report the parent's peak."""
    return _peak_of("self") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_pipeline(model_dir: str, image: str, out: str, model_only: str) -> dict:
    """predict_raster on one input. With ``model_only`` "1", first one untimed run (a batch
    of many files is warm after its first), then end-to-end and model-only for the same
    patches, twice each, alternating; the best of each is reported."""
    from isprs_seg.api import predict_raster
    from isprs_seg.io.raster import RowReader, open_input
    from isprs_seg.model import load_model
    from isprs_seg.options import InputOptions, RunOptions
    from isprs_seg.runs.job import prepare_job
    from isprs_seg.tiling.stream import cut_batches

    model = load_model(model_dir)
    result: dict = {}

    def end_to_end() -> float:
        started = time.perf_counter()
        run = predict_raster(image, out, model=model)
        result.update(tiles=run.tiles, megapixels=run.width * run.height / 1e6)
        return time.perf_counter() - started

    if model_only == "0":
        result["seconds"] = end_to_end()
        result["rss_mb"] = _peak_rss_mb()
        return result
    with open_input(image) as src:  # the batches of the run's plan, as the engine cuts them
        job = prepare_job(src, RunOptions(), InputOptions(), model.batch_size)
        recipe, grid = job.recipe, job.grid
        reader = RowReader(src, recipe.bands, recipe.mask, grid.cols.origins[-1] + grid.patch_shape[1])
        batches = [(b.raw, b.weights) for b in cut_batches(job.batches, reader, grid, "taper", 1)
                   if b.raw is not None]

    def model_alone() -> float:  # the very calls the pipeline makes (weighted where the model runs)
        started = time.perf_counter()
        model.weighted("predict", *batches[0], None, recipe)  # the one warm-up call the pipeline makes too
        for raw, weights in batches:
            model.weighted("predict", raw, weights, None, recipe)
        return time.perf_counter() - started

    result["cold_seconds"] = end_to_end()
    timings = {"seconds": [], "model_seconds": []}
    for _ in range(2):
        timings["model_seconds"].append(model_alone())
        timings["seconds"].append(end_to_end())
    result.update({key: min(values) for key, values in timings.items()})
    result["rss_mb"] = _peak_rss_mb()
    return result


def child_whole(model_dir: str, image: str, out: str) -> dict:
    """The whole-image approach with ``tiler``: everything in memory at full size."""
    import rasterio
    from tiler import Merger, Tiler

    from isprs_seg.model import load_model

    model = load_model(model_dir)
    started = time.perf_counter()
    with rasterio.open(image) as src:
        profile = src.profile
        rgb = src.read([1, 2]).astype(np.float32) / 255
    image_array = np.stack([rgb[0], rgb[1], (rgb[0] + rgb[1]) / 2], axis=-1)
    del rgb
    tiles_in = Tiler(data_shape=image_array.shape, tile_shape=(768, 768, 3), overlap=128, channel_dimension=2)
    tiles_out = Tiler(data_shape=(*image_array.shape[:2], 7), tile_shape=(768, 768, 7), overlap=128,
                      channel_dimension=2)
    merger = Merger(tiler=tiles_out, window="hann")
    model.predict(np.zeros((1, 768, 768, 3), np.float32))  # warm-up
    for batch_id, batch in tiles_in(image_array, batch_size=model.batch_size):
        merger.add_batch(batch_id, model.batch_size, model.predict(batch))
    classes = merger.merge(unpad=True, argmax=2).astype(np.uint8)
    profile.update(count=1, dtype="uint8", compress="deflate", tiled=True, blockxsize=512, blockysize=512)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(classes[None])
    return {"seconds": time.perf_counter() - started, "rss_mb": _peak_rss_mb()}


def _memory_total_mb() -> float:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) / 1024


def _peak_of(pid: int | str) -> float:
    """Peak resident MB of process ``pid`` (or ``"self"``) from /proc (VmHWM); 0 when gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def child_features(model_dir: str, image: str, out: str, dtype: str) -> dict:
    """extract_features on one input: time, peak RSS and the size of the file written."""
    from isprs_seg.api import extract_features
    from isprs_seg.model import load_model

    model = load_model(model_dir)
    started = time.perf_counter()
    run = extract_features(image, out, model=model, dtype=dtype)
    return {"seconds": time.perf_counter() - started, "rss_mb": _peak_rss_mb(),
            "bytes": os.path.getsize(out), "megapixels": run.width * run.height / 1e6}


def child_model(model_dir: str) -> dict:
    """The model alone: loaded, then three batches of default patches (its own peak memory)."""
    from isprs_seg import contract
    from isprs_seg.io.recipe import InputRecipe
    from isprs_seg.model import load_model

    model = load_model(model_dir)
    raw = np.zeros((model.batch_size, 2, contract.DEFAULT_TILE, contract.DEFAULT_TILE), np.uint8)
    for _ in range(3):
        model.predict(raw, None, InputRecipe())
    return {"rss_mb": _peak_rss_mb()}


def _run_child(*args: str) -> dict:
    """One measurement in its own process. A child that outgrows 90 % of the machine's
    memory is stopped (before the kernel's OOM killer picks a process) and reported."""
    limit = 0.9 * _memory_total_mb()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, __file__, "_child", *args], stdout=out, stderr=err, text=True)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, _peak_of(proc.pid))
            if peak > limit:
                proc.kill()
                proc.wait()
                return {"failed": f"stopped at {peak / 1024:.1f} GB, out of memory", "rss_mb": peak}
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            return {"failed": f"exit {proc.returncode}: {err.read()[-300:].strip()}", "rss_mb": peak}
        return json.loads(out.read().strip().splitlines()[-1])


# --------------------------------------------------------------------------- setup


def write_mosaic(path: Path, block: np.ndarray, width: int, height: int, profile: dict) -> Path:
    """A tiled GeoTIFF of ``width x height`` repeating ``block`` [bands, h, w], written in strips."""
    import rasterio

    profile = profile | {"width": width, "height": height, "count": block.shape[0], "dtype": block.dtype.name,
                         "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate",
                         "bigtiff": "if_safer", "driver": "GTiff"}
    with rasterio.open(path, "w", **profile) as dst:
        bh, bw = block.shape[1:]
        for row in range(0, height, 1024):
            rows = min(1024, height - row)
            strip = np.tile(block, (1, -(-(row % bh + rows) // bh), -(-width // bw)))
            dst.write(strip[:, row % bh : row % bh + rows, :width], window=((row, row + rows), (0, width)))
    return path


def make_input(path: Path, width: int, height: int) -> Path:
    """A tiled GeoTIFF of ``width x height`` mirrored from a real orthophoto."""
    import rasterio

    with rasterio.open(ORTHO) as src:
        tile, profile = src.read(), src.profile
    block = np.concatenate([tile, tile[:, :, ::-1]], axis=2)
    block = np.concatenate([block, block[:, ::-1]], axis=1)  # seamless 2000 x 2000
    profile.pop("photometric", None)  # a JPEG-compressed source's YCbCr does not go with DEFLATE
    return write_mosaic(path, block, width, height, profile | ({"photometric": "rgb"} if tile.shape[0] == 3 else {}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    suites = ("pipeline", "gis", "host", "memory", "cluster")
    parser.add_argument("suite", nargs="?", default="pipeline", choices=suites,
                        help="pipeline: the measurements above (default); gis: COG conversion, vectorize and "
                             "evaluate (benchmarks/gis.py); host: the host's ceiling against the I/O floor "
                             "(benchmarks/host.py); memory: the dry run's memory forecast against the measured "
                             "peak (benchmarks/memory.py); cluster: --engine ray with 1 and 2 CPU workers "
                             "(benchmarks/cluster.py)")
    parser.add_argument("--no-cog", action="store_true", help="host: plain tiled GeoTIFF outputs")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, no W48 stand-in")
    parser.add_argument("--workdir", type=Path, help="keep inputs and models here (default: a temp dir)")
    args = parser.parse_args()
    from isprs_seg.testing.standins import build_standin

    work = args.workdir or Path(tempfile.mkdtemp(prefix="isprs-seg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# working in {work}", flush=True)
    if args.suite in ("cluster", "memory"):
        w48 = work / "w48"
        if not w48.exists():
            build_standin(w48, "hrnet-w48")
        side = {"cluster": 2048, "memory": 4096}[args.suite] // (2 if args.quick else 1)
        image = work / f"in_{side}x{side}.tif"
        if not image.exists():
            make_input(image, side, side)
        if args.suite == "cluster":
            import cluster

            cluster.main(work, image, w48, strip_rows=side // 2)
        else:
            import memory

            memory.main(work, image, w48)
        return
    if args.suite in ("gis", "host"):
        small = work / "small"
        if not small.exists():
            build_standin(small, "small")
        if args.suite == "gis":
            import gis

            gis.main(work, args.quick, ORTHO, small)
        else:
            import host

            side = 2048 if args.quick else 4096
            image = work / f"in_{side}x{side}.tif"
            if not image.exists():
                make_input(image, side, side)
            host.main(work, image, small, cog=not args.no_cog)
        return
    models = {"small": work / "small"}
    if not args.quick:
        models["w48"] = work / "w48"
    for kind, path in models.items():
        if not path.exists():
            build_standin(path, "small" if kind == "small" else "hrnet-w48")
    big = 4096 if args.quick else 16384
    sizes = {"square": (2048, 2048), "tall": (2048, 8192 if args.quick else 16384), "4096": (4096, 4096),
             str(big): (big, big)}
    inputs = {}
    for name, (w, h) in sizes.items():
        inputs[name] = work / f"in_{w}x{h}.tif"
        if not inputs[name].exists():
            make_input(inputs[name], w, h)

    out = work / "out.tif"
    print("\n## 1. efficiency: end-to-end over model-only, same patches (warm process, best of 2)")
    for kind, image in (("small", inputs["4096"]), ("w48", inputs["square"])):
        if kind not in models:
            continue
        run = _run_child("pipeline", str(models[kind]), str(image), str(out), "1")
        e2e, model_only, mp = run["seconds"], run["model_seconds"], run["megapixels"]
        print(f"{kind:6s} {image.name}: {run['tiles']} patches, end-to-end {e2e:.1f} s (first run in the "
              f"process {run['cold_seconds']:.1f} s), model only {model_only:.1f} s, ratio {e2e / model_only:.2f}, "
              f"throughput {mp / e2e:.2f} MP/s", flush=True)

    print("\n## 2. memory: peak RSS, tall over square (small stand-in, lowest of 3 runs each: the model's own")
    print("##    activations vary by a few hundred MB from process to process, whatever the input)")
    rss = {}
    for name in ("square", "tall"):
        runs = sorted(_run_child("pipeline", str(models["small"]), str(inputs[name]), str(out), "0")["rss_mb"]
                      for _ in range(3))
        rss[name] = runs[0]
        print(f"{name:6s} {inputs[name].name}: {rss[name]:.0f} MB (runs: {', '.join(f'{r:.0f}' for r in runs)})")
    print(f"ratio tall / square: {rss['tall'] / rss['square']:.2f}", flush=True)

    print("\n## 5. features of the 4096 px input: size on disk and peak RSS")
    for kind in models:
        for dtype in ("float16", "float32"):
            run = _run_child("features", str(models[kind]), str(inputs["4096"]), str(work / "features.tif"), dtype)
            per_mpx = run['bytes'] / 1e6 / run['megapixels']
            print(f"{kind:6s} {dtype}: {run['seconds']:.1f} s, {per_mpx:.1f} MB per input "
                  f"megapixel ({run['bytes'] / 1e6:.0f} MB), peak RSS {run['rss_mb']:.0f} MB", flush=True)

    print("\n## 3/4. isprs-seg against the whole-image approach with tiler (small stand-in)")
    try:
        import tiler  # noqa: F401
    except ImportError:
        print("tiler is not installed (pip install tiler): skipped")
        return
    alone = _run_child("model", str(models["small"]))["rss_mb"]
    print(f"the model alone (TensorFlow, weights, one batch of activations): {alone:.0f} MB")
    per_pixel = None
    for name in ("4096", str(big)):
        ours = _run_child("pipeline", str(models["small"]), str(inputs[name]), str(out), "0")
        whole = _run_child("whole", str(models["small"]), str(inputs[name]), str(work / "whole.tif"))
        pixels = sizes[name][0] * sizes[name][1]
        line = (f"{name} px: isprs-seg {ours['seconds']:.1f} s, {ours['rss_mb']:.0f} MB, "
                f"{ours['megapixels'] / ours['seconds']:.2f} MP/s; tiler whole-image ")
        if "failed" in whole:
            line += (f"did not finish ({whole['failed']}); memory ratio at least "
                     f"{whole['rss_mb'] / ours['rss_mb']:.1f}x")
            if per_pixel:
                needed = alone + per_pixel * pixels
                line += (f", about {needed / ours['rss_mb']:.0f}x by the {per_pixel * 1e6:.0f} MB per "
                         f"megapixel it used at 4096 px (it would need about {needed / 1024:.0f} GB)")
        else:
            per_pixel = (whole["rss_mb"] - alone) / pixels
            line += (f"{whole['seconds']:.1f} s, {whole['rss_mb']:.0f} MB; time ratio "
                     f"{whole['seconds'] / ours['seconds']:.2f}x, memory ratio {whole['rss_mb'] / ours['rss_mb']:.1f}x")
        print(line, flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        step, rest = sys.argv[2], sys.argv[3:]
        children = {"pipeline": child_pipeline, "whole": child_whole, "model": child_model, "features": child_features}
        report = children[step](*rest)
        print(json.dumps(report))
    else:
        main()

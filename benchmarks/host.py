"""The host's ceiling: how fast everything around the model runs, against the I/O floor.

    python benchmarks/run.py host [--quick] [--workdir DIR]

On a GPU server the model is fast and the host's share of the work decides the speed.
This runs the real pipeline on a real orthophoto mosaic (4096 x 4096) with the model call
replaced by a zero-cost stand-in that hands back outputs of the right shape and dtype at
once (a real model output of one batch, reused), so every step after the model call
runs as in a real run: the *ceiling*. In the same run it measures the *I/O floor* of
the same outputs: reading and decoding the input in the same row bands, and writing the
very same output pixels (read from the ceiling's files beforehand) with the same
creation options, Cloud Optimized GeoTIFF conversion included. Each figure is in
megapixels of input per second; each ratio is a ceiling over the floor of the same
outputs. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def _zero_cost(model):
    """``model`` with its calls replaced by handing back one real batch of outputs at once."""
    import isprs_seg.model.inference as model_module

    ready = {}
    real_run = model_module.Model._run

    def run(method, images, batch_size, prepare, tta=None, weights=None):
        key = (method, images.shape[0], weights is None)
        if key not in ready:  # once, then reused
            ready[key] = real_run(model, method, images, batch_size, prepare, tta, weights)
        return ready[key]

    model._run = run
    return model


def _read_floor(path: Path, patch_rows: int, width: int) -> None:
    """Read and decode the input in the pipeline's row bands, with its validity (as RowReader)."""
    import rasterio

    from isprs_seg.io.raster import RowReader, gdal_env

    with gdal_env(), rasterio.open(path) as src:
        reader = RowReader(src, [1, 2], "dataset", width)
        step = patch_rows - 128
        for row in range(0, src.height, step):
            reader.rows(row, patch_rows)


def _write_floor(arrays: dict, src_path: Path, out_dir: Path, cog: bool) -> None:
    """Write the same output pixels with the same creation options (block rows, then COG)."""
    import rasterio
    from rasterio.windows import Window

    from isprs_seg import contract
    from isprs_seg.io.outputs import class_raster, feature_raster, probability_raster, to_cog
    from isprs_seg.io.raster import gdal_env

    with gdal_env(), rasterio.open(src_path) as src:
        for role, (data, mask) in arrays.items():
            path = out_dir / f"floor.{role}.tif"
            if role == "classes":
                make = class_raster(path, src, contract.CLASS_NAMES, [c.color for c in contract.CLASSES], 255, {})
            elif role == "features":
                make = feature_raster(path, src, data.shape[0], 4, "float16", {})
            else:
                make = probability_raster(path, src, contract.CLASS_NAMES, data.dtype.name, {})
            with make as dst:
                rows = dst.block_shapes[0][0]
                for row in range(0, dst.height, rows):
                    window = Window(0, row, dst.width, min(rows, dst.height - row))
                    dst.write(data[:, row: row + rows], window=window)
                    if mask is not None:
                        dst.write_mask(mask[row: row + rows], window=window)
            if cog and role != "features":
                to_cog(path, role, path)


def _read_back(paths: dict) -> dict:
    import rasterio

    arrays = {}
    for role, path in paths.items():
        with rasterio.open(path) as ds:
            data = ds.read()
            mask = ds.read_masks(1) if ds.dtypes[0] == "uint8" and role != "classes" else None
        arrays[role] = (data, mask)
    return arrays


def main(work: Path, image: Path, model_dir: Path, cog: bool = True) -> dict:
    import rasterio

    from isprs_seg.api import extract_features, predict_raster
    from isprs_seg.model import load_model

    host = work / "host"
    host.mkdir(exist_ok=True)
    with rasterio.open(image) as src:
        mp = src.width * src.height / 1e6
        width = src.width
    model = _zero_cost(load_model(model_dir))
    runs = {
        "classes": dict(probabilities=None),
        "probabilities_uint8": dict(probabilities=True, probabilities_dtype="uint8"),
        "probabilities_float32": dict(probabilities=True, probabilities_dtype="float32"),
    }
    figures: dict = {}
    print(f"\n## host ceiling and I/O floor on {image.name} ({mp:.1f} Mpx), outputs as COG: {cog}")
    predict_raster(image, host / "warm.tif", model=model, cog=cog)  # traces and caches once
    for name, kwargs in runs.items():
        started = time.perf_counter()
        result = predict_raster(image, host / f"{name}.tif", model=model, cog=cog, **kwargs)
        ceiling = mp / (time.perf_counter() - started)
        roles = dict(zip(("classes", "probabilities"), map(Path, result.outputs)))
        arrays = _read_back(roles)
        started = time.perf_counter()
        _read_floor(image, 768, width + 768)
        _write_floor(arrays, image, host, cog)
        floor = mp / (time.perf_counter() - started)
        figures[f"{name}_mpxs"] = round(ceiling, 2)
        figures[f"io_floor_{name}_mpxs"] = round(floor, 2)
        figures[f"{name}_ratio"] = round(ceiling / floor, 3)
        print(f"{name:22s} ceiling {ceiling:6.1f} Mpx/s, I/O floor of the same outputs {floor:6.1f} Mpx/s, "
              f"ratio {ceiling / floor:.2f}", flush=True)
    figures["io_floor_mpxs"] = figures["io_floor_classes_mpxs"]
    started = time.perf_counter()
    extract_features(image, host / "features.tif", model=model)
    figures["features_mpxs"] = round(mp / (time.perf_counter() - started), 2)
    print(f"{'features':22s} ceiling {figures['features_mpxs']:6.1f} Mpx/s (float16, no COG)", flush=True)
    ordered = {k: figures[k] for k in ("io_floor_mpxs", "classes_mpxs", "probabilities_uint8_mpxs",
                                        "probabilities_float32_mpxs", "features_mpxs", "classes_ratio",
                                        "probabilities_uint8_ratio", "probabilities_float32_ratio")}
    ordered |= {k: v for k, v in figures.items() if k not in ordered}
    print(json.dumps(ordered), flush=True)
    return ordered


"""``isprs-seg vectorize``: class rasters to polygons, with the batch rules of ``predict``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import EXIT_FAILED_INPUTS, EXIT_USAGE, _examples, app, entered
from .options import BATCH_OPTIONS, INPUTS, VECTOR_OPTIONS, command, output_option
from .process import _expand_inputs, report


@command(app, _examples(
    "isprs-seg vectorize ortho.classes.tif -o buildings.gpkg --classes building --min-area 10",
    "isprs-seg vectorize results/*.classes.tif --out-dir polygons/ --simplify 0.2",
    "isprs-seg vectorize results/*.classes.tif --out-dir polygons/ --format parquet",
), VECTOR_OPTIONS, BATCH_OPTIONS,
    inputs="INPUT: class rasters (from predict), or GDAL paths; - reads more paths from stdin, one per line.")
def vectorize(ctx: typer.Context, inputs: List[str] = INPUTS,
              output: Optional[Path] = output_option("GeoPackage or GeoParquet", "OUT.gpkg"), **options) -> None:
    """Turn class rasters into polygons: one per connected region of a class, holes kept, in the
    raster's CRS, with class id, class name and area (OUT.gpkg, or DIR/<stem>.polygons.gpkg; GeoParquet
    with --format parquet or -o OUT.parquet)."""
    from ..analysis.vectorize import (
        expected_settings,
        polygon_suffixes,
        require_vector,
        vector_format,
        vectorize_raster,
    )
    from ..runs.batch import plan_outputs, run_batch
    from .progress import BatchProgress

    paths = _expand_inputs(inputs)
    settings = entered(ctx, options["as_json"])
    with settings.notes(options["quiet"]):
        with settings.reported(EXIT_USAGE):
            format = vector_format(output, options["format"])
            require_vector(format)
            planned = plan_outputs(paths, "polygons", output=output, out_dir=options["out_dir"],
                                   suffixes=polygon_suffixes(format))
        progress = BatchProgress(paths, options["quiet"])

        chosen = {key: options[key] for key in ("classes", "min_area", "simplify")}

        def one(path: str, outputs: dict):
            return vectorize_raster(path, outputs["polygons"], format=format, **chosen)

        records = run_batch(paths, planned, one, expected=lambda path: expected_settings(path, **chosen),
                            overwrite=options["overwrite"], stop_on_error=options["on_error"].value == "stop")
        failed = report(records, paths, progress, settings)
    if failed:
        raise typer.Exit(EXIT_FAILED_INPUTS)

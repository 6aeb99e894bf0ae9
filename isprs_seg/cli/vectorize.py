"""``isprs-seg vectorize``: class rasters to polygons, with the batch rules of ``predict``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import EXIT_FAILED_INPUTS, EXIT_USAGE, _examples, _notes, _reported, _state, app
from .options import BATCH_OPTIONS, INPUTS, with_options
from .process import _expand_inputs, report


@app.command(epilog=_examples(
    "isprs-seg vectorize ortho.classes.tif -o buildings.gpkg --classes building --min-area 10",
    "isprs-seg vectorize results/*.classes.tif --out-dir polygons/ --simplify 0.2",
))
@with_options(BATCH_OPTIONS)
def vectorize(
    inputs: List[str] = INPUTS,
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="OUT.gpkg", show_default=False,
                                          help="GeoPackage path, for one input.  [default: none: give -o or "
                                               "--out-dir]"),
    classes: Optional[str] = typer.Option(None, "--classes", metavar="NAMES", show_default=False,
                                          help="Classes to keep, by name or number: building,car.  [default: all]"),
    min_area: Optional[float] = typer.Option(None, "--min-area", metavar="M2", show_default=False,
                                             help="Drop polygons smaller than this, in square metres.  "
                                                  "[default: keep all]"),
    simplify: Optional[float] = typer.Option(None, "--simplify", metavar="METRES", show_default=False,
                                             help="Simplify each polygon with this tolerance, keeping it valid.  "
                                                  "[default: none: pixel edges]"),
    **options,
) -> None:
    """Turn class rasters into polygons: one per connected region of a class, holes kept, in the
    raster's CRS, with class id, class name and area (OUT.gpkg, or DIR/<stem>.polygons.gpkg).

    INPUT: class rasters (from predict), or GDAL paths; - reads more paths from stdin, one per line.
    """
    from ..batch import plan_outputs, run_batch
    from ..vectorize import expected_settings, require_vector, vectorize_raster
    from .progress import BatchProgress

    paths = _expand_inputs(inputs)
    _state["json"] = options["as_json"]
    with _notes(options["quiet"]):
        with _reported(EXIT_USAGE):
            require_vector()
            planned = plan_outputs(paths, "polygons", output=output, out_dir=options["out_dir"])
        progress = BatchProgress(paths, options["quiet"])

        def one(path: str, outputs: dict):
            return vectorize_raster(path, outputs["polygons"], classes=classes, min_area=min_area, simplify=simplify)

        records = run_batch(paths, planned, one, expected=lambda path: expected_settings(path, classes, min_area,
                                                                                          simplify),
                            overwrite=options["overwrite"], stop_on_error=options["on_error"].value == "stop")
        failed = report(records, paths, progress, options["as_json"])
    if failed:
        raise typer.Exit(EXIT_FAILED_INPUTS)

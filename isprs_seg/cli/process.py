"""``isprs-seg predict`` and ``isprs-seg features``: many inputs, one model, one record each."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..options import InputOptions, RunOptions
from . import EXIT_FAILED_INPUTS, EXIT_USAGE, Settings, _examples, _load, app, entered
from .options import (
    BATCH_OPTIONS,
    ENGINE_OPTIONS,
    FEATURE_OPTIONS,
    GRID_OPTIONS,
    INPUT_OPTIONS,
    INPUTS,
    MODEL_OPTIONS,
    PREDICT_OPTIONS,
    command,
    output_option,
)


def _expand_inputs(inputs: List[str]) -> List[str]:
    """Paths as given; ``-`` reads more paths from stdin (blank lines and # comments skipped)."""
    paths: List[str] = []
    for item in inputs:
        if item == "-":
            paths += [line.strip() for line in sys.stdin if line.strip() and not line.strip().startswith("#")]
        else:
            paths.append(item)
    return paths


def _run_command(settings: Settings, product, paths: List[str], output: Optional[Path], options: dict) -> None:
    """What ``predict`` and ``features`` share: check everything, build the engine, run the
    batch of ``product`` (:mod:`isprs_seg.products`), report."""
    from ..runs.batch import plan_outputs

    with settings.notes(options["quiet"]):
        with settings.reported(EXIT_USAGE):
            run = RunOptions(options["tile"], options["overlap"], options["batch_size"], options["blend"].value,
                             options.get("tta", "none")).check()
            product.check()
            reading = InputOptions(options["bands"], options["recipe"], options["scale"], options["normalize"],
                                   options["gsd"]).check()
            planned = plan_outputs(paths, product.main, product.roles(), output=output, out_dir=options["out_dir"],
                                   given=product.given(), suffixes=product.suffixes(),
                                   create=not options["dry_run"])
        if options["dry_run"]:
            from ..runs.dryrun import forecast
            from .dryrun import dry_run

            failed = dry_run(paths, planned,
                             lambda path, outputs, device: forecast(path, outputs, product, run, reading, device),
                             options["device"], settings)
        else:
            with _engine(settings, product, options) as engine:
                failed = _run_batch(settings, engine, product, paths, planned, output, run, reading, options)
    if failed:
        raise typer.Exit(EXIT_FAILED_INPUTS)


def _engine(settings: Settings, product, options: dict):
    """The engine the options ask for, ready, its model checked for ``product``: the local
    engine over the loaded model, or the Ray engine with its workers started."""
    if options["engine"].value == "ray":
        from ..runs.cluster import ModelLoad, RayEngine, check_supported

        with settings.reported(EXIT_USAGE):
            check_supported(bool(options["gsd"]), bool(options.get("pool")), bool(options.get("preview")))
            load = ModelLoad(options["model"], options["batch_size"], options["device"], options["precision"],
                             options["xla"])
            engine = RayEngine(load, address=options["ray_address"], workers=options["workers"],
                               gpus_per_worker=options["gpus_per_worker"],
                               cpus_per_worker=options["cpus_per_worker"], strip_rows=options["strip_rows"],
                               overwrite=options["overwrite"])
    else:
        from ..runs.local import LocalEngine

        engine = LocalEngine(_load(settings, options["model"], options["batch_size"], options["device"],
                                   options["precision"], options["xla"]))
    try:
        with settings.reported(EXIT_USAGE):
            engine.describe(product)
    except BaseException:
        engine.close()
        raise
    return engine


def _run_batch(settings: Settings, engine, product, paths, planned, output, run, reading, options) -> int:
    """Run every input of the batch on ``engine``, report, and say how many failed."""
    from ..api import run_product
    from ..io.provenance import run_settings
    from ..runs.batch import run_batch
    from .progress import BatchProgress

    model = engine.describe(product)  # digest, precision, device
    with settings.reported(EXIT_USAGE):
        expected = run_settings(model, run, reading, planned[0], product)
    logging.getLogger("isprs_seg").info("running the model on %s (%s)", model.device_description, model.handle)
    progress = BatchProgress(paths, options["quiet"])
    index = {path: i for i, path in enumerate(paths)}
    # where the API is told to write: as the command line was told (the outputs are named as planned: same rules)
    where = {"out_dir": options["out_dir"]} if options["out_dir"] is not None else {"output": output}

    def one(path: str, outputs: dict):
        return run_product(path, product, **where, options=run, reading=reading, engine=engine,
                           progress=progress.bar(index[path]))

    records = run_batch(paths, planned, one, expected=expected, overwrite=options["overwrite"],
                        stop_on_error=options["on_error"].value == "stop",
                        fields={"tile": run.tile, "overlap": run.overlap, "batch_size": run.batch_size})
    return report(records, paths, progress, settings)


def report(records, paths: List[str], progress, settings: Settings) -> int:
    """Say what became of each input as soon as it is known; return how many failed."""
    from ..runs.batch import ERROR, SKIPPED

    index = {path: i for i, path in enumerate(paths)}
    failed = 0
    for record in records:
        if record.status == ERROR:
            failed += 1
            settings.error(record.error, record.as_dict(), record.exception)
        elif record.status == SKIPPED:  # said even with -q and --json: nothing was written
            print(f"isprs-seg: {record.input}: skipped, its outputs are complete and were made with the same "
                  "settings (--overwrite to redo)", file=sys.stderr)
        progress.finished(index[record.input], record.seconds, ran=record.status != SKIPPED)
        if settings.json and record.status != ERROR:  # an error's record is told with it
            print(json.dumps(record.as_dict()), flush=True)
        elif record.status == "ok":
            for written in record.outputs:
                print(written, flush=True)
    return failed


@command(app, _examples(
    "isprs-seg predict sample_data/colorado_springs_15cm.tif -o sample.classes.tif --probabilities",
    "isprs-seg predict tiles/*.tif --out-dir results/ --gsd 0.08",
    "find /data -name '*.tif' | isprs-seg predict - --out-dir results/ --json > runs.jsonl",
), PREDICT_OPTIONS, GRID_OPTIONS, INPUT_OPTIONS, MODEL_OPTIONS, ENGINE_OPTIONS, BATCH_OPTIONS)
def predict(ctx: typer.Context, inputs: List[str] = INPUTS, output: Optional[Path] = output_option("Class raster"),
            **options) -> None:
    """Segment rasters into georeferenced class rasters (OUT.tif, or DIR/<stem>.classes.tif)."""
    from ..products import Classes

    o = options
    product = Classes(o["probabilities"], o["probabilities_dtype"].value, o["confidence"], o["vector"], o["cog"],
                      o["stac"])
    _run_command(entered(ctx, o["as_json"]), product, _expand_inputs(inputs), output, o)


@command(app, _examples(
    "isprs-seg features sample_data/colorado_springs_15cm.tif -o sample.features.tif --preview sample.png",
    "isprs-seg features tiles/*.tif --out-dir feats/ --pool 10 --preview 'feats/{stem}.png'",
    "isprs-seg features ortho.tif -o ortho.features.tif --pool 10 --pool-format parquet",
), FEATURE_OPTIONS, GRID_OPTIONS, INPUT_OPTIONS, MODEL_OPTIONS, ENGINE_OPTIONS, BATCH_OPTIONS)
def features(ctx: typer.Context, inputs: List[str] = INPUTS,
             output: Optional[Path] = output_option("Feature raster"), **options) -> None:
    """Write dense 1/4-resolution features (OUT.tif, or DIR/<stem>.features.tif)."""
    from ..products import Features

    o = options
    product = Features(o["dtype"].value, o["pool"], o["cog"], preview=o["preview"], pool_format=o["pool_format"],
                       stac=o["stac"])
    _run_command(entered(ctx, o["as_json"]), product, _expand_inputs(inputs), output, o)

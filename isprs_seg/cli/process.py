"""``isprs-seg predict`` and ``isprs-seg features``: many inputs, one model, one record each."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import List, Optional

import typer

from . import EXIT_FAILED_INPUTS, EXIT_USAGE, _examples, _load, _notes, _reported, _state, app
from ..options import CONFIDENCE_KINDS, FeatureOptions, InputOptions, RunOptions, check_choice
from ..outputs import COMPANIONS
from .options import BATCH_OPTIONS, ENGINE_OPTIONS, FEATURE_OPTIONS, GRID_OPTIONS, INPUT_OPTIONS, INPUTS, \
    MODEL_OPTIONS, PREDICT_OPTIONS, command, output_option


def _expand_inputs(inputs: List[str]) -> List[str]:
    """Paths as given; ``-`` reads more paths from stdin (blank lines and # comments skipped)."""
    paths: List[str] = []
    for item in inputs:
        if item == "-":
            paths += [line.strip() for line in sys.stdin if line.strip() and not line.strip().startswith("#")]
        else:
            paths.append(item)
    return paths


def _run_command(command: str, paths: List[str], output: Optional[Path], main: str, extra: List[str],
                 given: dict, specific: dict, work, plan, options: dict) -> None:
    """What ``predict`` and ``features`` share: check everything, load the model, run the batch, report.

    ``work(path, outputs, runner, run, reading, progress)`` runs one input (``runner``: the
    loaded model, or with ``--engine ray`` the Ray engine; see :func:`_runner`); ``specific``:
    the command's own options that change pixels (see :mod:`isprs_seg.provenance`);
    ``plan(path, outputs, run, reading, device)`` forecasts one input (``--dry-run``).
    """
    from ..batch import plan_outputs

    quiet = options["quiet"]
    _state["json"] = options["as_json"]
    with _notes(quiet):
        with _reported(EXIT_USAGE):
            run = RunOptions(options["tile"], options["overlap"], options["batch_size"], options["blend"].value,
                             options.get("tta", "none")).check()
            if command == "predict" and specific.get("confidence") is not None:
                check_choice("--confidence", specific["confidence"], CONFIDENCE_KINDS)
            reading = InputOptions(options["bands"], options["recipe"], options["scale"], options["normalize"],
                                   options["gsd"]).check()
            planned = plan_outputs(paths, main, extra, output=output, out_dir=options["out_dir"], given=given,
                                   create=not options["dry_run"])
        if options["dry_run"]:
            from .dryrun import dry_run

            failed = dry_run(paths, planned, lambda path, outputs, device: plan(path, outputs, run, reading, device),
                             options["device"], options["as_json"])
            if failed:
                raise typer.Exit(EXIT_FAILED_INPUTS)
            return
        with contextlib.ExitStack() as engine:
            if options["engine"].value == "ray":
                model = engine.enter_context(_ray_engine(command, options))
            else:
                model = _load(options["model"], options["batch_size"], options["device"], options["precision"],
                              options["xla"])
                with _reported(EXIT_USAGE):
                    model.check_for(command)
            failed = _run_batch(command, paths, planned, model, run, reading, specific, work, options)
    if failed:
        raise typer.Exit(EXIT_FAILED_INPUTS)


def _ray_engine(command: str, options: dict):
    """The Ray engine of ``--engine ray``, started, its workers' model checked for ``command``."""
    from ..cluster import ModelLoad, RayEngine, check_supported

    with _reported(EXIT_USAGE):
        check_supported(bool(options["gsd"]), bool(options.get("pool")), bool(options.get("preview")))
        load = ModelLoad(options["model"], options["batch_size"], options["device"], options["precision"],
                         options["xla"])
        engine = RayEngine(load, address=options["ray_address"], workers=options["workers"],
                           gpus_per_worker=options["gpus_per_worker"], cpus_per_worker=options["cpus_per_worker"],
                           strip_rows=options["strip_rows"], overwrite=options["overwrite"])
        try:
            engine.describe(command)
        except BaseException:
            engine.close()
            raise
    return engine


def _runner(runner) -> dict:
    """How a run is told where to run: ``model=`` a loaded model, or ``engine=`` the Ray engine."""
    from ..model import Model

    return {"model": runner} if isinstance(runner, Model) else {"engine": runner}


def _run_batch(command, paths, planned, runner, run, reading, specific, work, options) -> int:
    """Run every input on ``runner`` (a loaded model or the Ray engine), report, and say how many failed."""
    from ..batch import run_batch
    from ..model import Model
    from ..provenance import run_settings
    from .progress import BatchProgress

    model = runner if isinstance(runner, Model) else runner.describe(command)  # digest, precision, device
    with _reported(EXIT_USAGE):
        expected = run_settings(model, run, reading, planned[0], **specific)
    logging.getLogger("isprs_seg").info("running the model on %s (%s)", model.device_description, model.handle)
    progress = BatchProgress(paths, options["quiet"])
    index = {path: i for i, path in enumerate(paths)}

    def one(path: str, outputs: dict):
        return work(path, outputs, runner, run, reading, progress.bar(index[path]))

    records = run_batch(paths, planned, one, expected=expected, overwrite=options["overwrite"],
                        stop_on_error=options["on_error"].value == "stop",
                        fields={"tile": run.tile, "overlap": run.overlap, "batch_size": run.batch_size})
    return report(records, paths, progress, options["as_json"])


def _where(output: Optional[Path], options: dict) -> dict:
    """Where the API is told to write: as the command line was told."""
    return {"out_dir": options["out_dir"]} if options["out_dir"] is not None else {"output": output}


def report(records, paths: List[str], progress, as_json: bool) -> int:
    """Say what became of each input as soon as it is known; return how many failed."""
    from ..batch import ERROR, SKIPPED

    index = {path: i for i, path in enumerate(paths)}
    failed = 0
    for record in records:
        if record.status == ERROR:
            failed += 1
            if _state["debug"] and record.exception is not None:
                traceback.print_exception(record.exception)
            print(f"isprs-seg: error: {record.error}", file=sys.stderr)
        elif record.status == SKIPPED:  # said even with -q and --json: nothing was written
            print(f"isprs-seg: {record.input}: skipped, its outputs are complete and were made with the same "
                  "settings (--overwrite to redo)", file=sys.stderr)
        progress.finished(index[record.input], record.seconds, ran=record.status != SKIPPED)
        if as_json:
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
def predict(inputs: List[str] = INPUTS, output: Optional[Path] = output_option("Class raster"), **options) -> None:
    """Segment rasters into georeferenced class rasters (OUT.tif, or DIR/<stem>.classes.tif)."""
    from ..pipeline import predict_raster

    o = options
    asked = {"probabilities": o["probabilities"], "confidence": o["confidence"], "polygons": o["vector"]}

    def work(path, outputs, runner, run, reading, progress):  # names the outputs as planned: same rules
        return predict_raster(
            path, **_where(output, o), **_runner(runner), probabilities=o["probabilities"], tile=run.tile,
            overlap=run.overlap, batch_size=run.batch_size, blend=run.blend,
            probabilities_dtype=o["probabilities_dtype"].value, cog=o["cog"], vector=o["vector"],
            confidence=o["confidence"], tta=o["tta"], reading=reading, progress=progress,
        )

    def plan(path, outputs, run, reading, device):
        from ..dryrun import forecast_predict

        return forecast_predict(path, outputs, run, reading, device,
                                probabilities_dtype=o["probabilities_dtype"].value, cog=o["cog"])

    specific = {"probabilities_dtype": o["probabilities_dtype"].value, "vector": o["vector"],
                "confidence": o["confidence"]}
    _run_command("predict", _expand_inputs(inputs), output, "classes",
                 [role for role, wanted in asked.items() if wanted] + list(COMPANIONS), {}, specific, work, plan, o)


@command(app, _examples(
    "isprs-seg features sample_data/colorado_springs_15cm.tif -o sample.features.tif --preview sample.png",
    "isprs-seg features tiles/*.tif --out-dir feats/ --pool 10 --preview 'feats/{stem}.png'",
), FEATURE_OPTIONS, GRID_OPTIONS, INPUT_OPTIONS, MODEL_OPTIONS, ENGINE_OPTIONS, BATCH_OPTIONS)
def features(inputs: List[str] = INPUTS, output: Optional[Path] = output_option("Feature raster"), **options) -> None:
    """Write dense 1/4-resolution features (OUT.tif, or DIR/<stem>.features.tif)."""
    from ..embeddings import pool_text
    from ..pipeline import extract_features

    o = options
    with _reported(EXIT_USAGE):
        feature_options = FeatureOptions(o["dtype"].value, o["pool"], o["cog"]).check()

    def work(path, outputs, runner, run, reading, progress):  # names the outputs as planned: same rules
        return extract_features(
            path, **_where(output, o), **_runner(runner), tile=run.tile, overlap=run.overlap,
            batch_size=run.batch_size, blend=run.blend, dtype=o["dtype"].value, pool=o["pool"], preview=o["preview"],
            cog=o["cog"], reading=reading, progress=progress,
        )

    def plan(path, outputs, run, reading, device):
        from ..dryrun import forecast_features

        return forecast_features(path, outputs, run, reading, device, feature_options)

    given = {"preview": o["preview"]} if o["preview"] else {}
    specific = {"dtype": o["dtype"].value, "pool": pool_text(o["pool"]) if o["pool"] else None}
    _run_command("features", _expand_inputs(inputs), output, "features", ["pooled"] if o["pool"] else [], given,
                 specific, work, plan, o)

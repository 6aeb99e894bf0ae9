"""``isprs-seg evaluate``: class rasters scored against labels, per pair and pooled."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import EXIT_FAILED_INPUTS, EXIT_USAGE, Settings, _examples, app, entered


def _pairs(items: List[str], settings: Settings) -> list[tuple[str, str]]:
    """``PRED LABELS``, or ``PRED=LABELS ...``; ``-`` reads such pairs from stdin, one per line."""
    if len(items) == 2 and not any("=" in item or item == "-" for item in items):
        return [(items[0], items[1])]
    pairs = []
    for item in items:
        lines = [line.strip() for line in sys.stdin] if item == "-" else [item]
        for line in lines:
            if not line or line.startswith("#"):
                continue
            pred, sep, labels = line.partition("=") if "=" in line else line.partition(" ")
            if not sep or not pred.strip() or not labels.strip():
                settings.fail(f"{line!r} is not a pair: give PRED.tif LABELS.tif, or PRED.tif=LABELS.tif for each pair",
                      EXIT_USAGE)
            pairs.append((pred.strip(), labels.strip()))
    if not pairs:
        settings.fail("no prediction and labels given", EXIT_USAGE)
    return pairs


@app.command(epilog=_examples(
    "isprs-seg evaluate ortho.classes.tif labels.tif",
    "isprs-seg evaluate a.classes.tif=a_labels.tif b.classes.tif=b_labels.tif --json",
    "isprs-seg evaluate ortho.classes.tif labels_rgb.tif --erode 0 --figure confusion.png",
))
def evaluate(
    ctx: typer.Context,
    items: List[str] = typer.Argument(..., metavar="PRED LABELS | PRED=LABELS...", show_default=False,
                                      hidden=True),
    erode: int = typer.Option(3, "--erode", metavar="PX",
                              help="Also score without label pixels this close to another class (the ISPRS "
                                   "protocol's eroded boundaries); 0 for none."),
    ignore: str = typer.Option("background", "--ignore", metavar="CLASSES",
                               help="Label classes not scored, by name or number, or none."),
    labels_format: str = typer.Option("auto", "--labels-format", metavar="auto|index|rgb",
                                      help="Class ids, or ISPRS colours in three bands; auto: rgb for three bands "
                                           "or more."),
    as_json: bool = typer.Option(False, "--json", show_default=False,
                                 help="One JSON object per pair and one for all pairs pooled.  [default: off]"),
    figure: Optional[Path] = typer.Option(None, "--figure", metavar="PNG", show_default=False,
                                          help="The confusion matrix normalised by label class, as a PNG (pooled for "
                                               "several pairs, or one per pair with a {stem} pattern).  "
                                               "[default: none]"),
    quiet: bool = typer.Option(False, "--quiet", "-q", show_default=False, help="No notes.  [default: off]"),
) -> None:
    """Score class rasters against labels: confusion matrix, per-class precision, recall, F1 and
    IoU, overall accuracy, mean F1 and mean IoU, on all pixels and with eroded boundaries.

    PRED LABELS: a class raster and its labels (class ids, or ISPRS colours); several pairs as
    PRED=LABELS, or - to read such pairs from stdin, one per line.
    """
    from ..analysis.evaluate import evaluate as score
    from ..analysis.evaluate import figure as draw
    from ..analysis.evaluate import table

    settings = entered(ctx, as_json)
    with settings.notes(quiet):
        pairs = _pairs(items, settings)
        pooled, failed = None, 0
        for pred, labels in pairs:
            try:
                result = score(pred, labels, erode=erode, ignore=ignore, labels_format=labels_format)
            except Exception as exc:  # noqa: BLE001 - one bad pair does not end the others
                from ..runs.batch import error_message

                failed += 1
                message = error_message(pred, exc)
                record = {"prediction": pred, "labels": labels, "status": "error", "error": message}
                settings.error(message, record, exc)
                continue
            pooled = result if pooled is None else pooled + result
            print(json.dumps(result.as_dict() | {"status": "ok"}) if as_json else table(result), flush=True)
            if figure and "{stem}" in str(figure):
                with settings.reported(EXIT_USAGE):
                    draw(result, Path(str(figure).replace("{stem}", Path(pred).name.rsplit(".", 1)[0])))
        if pooled is not None and len(pairs) > 1:
            print(json.dumps(pooled.as_dict() | {"status": "pooled"}) if as_json else "\n" + table(pooled),
                  flush=True)
        if figure and "{stem}" not in str(figure) and pooled is not None:
            with settings.reported(EXIT_USAGE):
                draw(pooled, figure)
    if failed:
        raise typer.Exit(EXIT_FAILED_INPUTS)

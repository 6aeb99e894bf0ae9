"""``isprs-seg model info`` and ``isprs-seg model fetch``."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

from ..errors import IsprsSegWarning
from . import EXIT_USAGE, _examples, _load, entered, model_app
from .options import MODEL_HELP


@model_app.command("info", epilog=_examples("isprs-seg model info", "isprs-seg model info --model isprs-hrnet/ --json"))
def model_info(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="HANDLE", show_default=False,
                                        help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", show_default=False, help="Print one JSON object.  [default: off]"),
) -> None:
    """Load the model and describe it: source, calling convention, classes, features."""
    info = _load(entered(ctx, as_json), model).info()
    if as_json:
        print(json.dumps(info, indent=2))
        return
    features = (
        f"{info['feature_channels']} channels at 1/{info['feature_stride']} resolution"
        if info["feature_channels"] else "not available (no get_features)"
    )
    lines = [
        f"model:        {info['handle']}",
        f"loaded from:  {info['loaded_from']}",
        f"input:        {info['input']}",
        f"recipe:       {info['input_recipe']}",
        "methods:      " + ", ".join(f"{k} ({v})" for k, v in info["methods"].items()),
        f"output:       {info['output']}",
        f"features:     {features}",
        f"defaults:     tile {info['default_tile']}, overlap {info['default_overlap']}, "
        f"network stride {info['network_stride']}",
        "classes:",
    ]
    lines += [f"  {c['index']}  {c['color']}  {c['name']}" for c in info["classes"]]
    print("\n".join(lines))


@model_app.command("fetch", epilog=_examples(
    "isprs-seg model fetch --to isprs-hrnet/ --verify",
    "isprs-seg predict ortho.tif -o ortho.classes.tif --model isprs-hrnet/   # on the offline machine",
))
def model_fetch(
    ctx: typer.Context,
    to: Path = typer.Option(..., "--to", metavar="DIR", show_default=False,
                            help="Directory to create: pass it as --model on an offline machine."),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="HANDLE", show_default=False,
                                        help=MODEL_HELP),
    verify: bool = typer.Option(False, "--verify", show_default=False,
                                help="Report the model's digest (sha256 of its SavedModel files) and warn when it "
                                     "differs from the one recorded for the official model.  [default: off]"),
) -> None:
    """Download and unpack the model into a directory usable offline with --model DIR."""
    from ..model import fetch_model
    from ..model.hub import recorded_digest

    settings = entered(ctx)
    with settings.notes(False), settings.reported(EXIT_USAGE):
        fetched = fetch_model(model, to)
        print(to)
        print(f"isprs-seg: fetched {fetched.handle}; on an offline machine use --model {to}", file=sys.stderr)
        if verify:
            recorded = recorded_digest(fetched.handle)
            verdict = {None: ": no digest is recorded for this model to compare it with",
                       fetched.digest: ": the one recorded for the official model"}.get(recorded, "")
            print(f"isprs-seg: digest {fetched.digest}{verdict}", file=sys.stderr)
            if verdict == "":
                warnings.warn(f"the digest of {fetched.handle} differs from the one recorded for the official model, "
                              f"{recorded}: what was fetched is another model or a changed copy", IsprsSegWarning)



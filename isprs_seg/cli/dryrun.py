"""``--dry-run``: the forecast of each input (:mod:`isprs_seg.runs.dryrun`), then a total."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Callable, List

from . import EXIT_USAGE, Settings

#: Forecasts one input: (input, its outputs by role, the device) -> a Forecast.
ForecastOne = Callable[[str, dict, str], object]


def dry_run(paths: List[str], planned: List[dict], forecast_one: ForecastOne, device: str | None,
            settings: Settings) -> int:
    """Print the forecast of every input (one JSON record each with ``as_json``); return
    how many could not be forecast. Nothing is written and no model is loaded."""
    from ..model.inference import describe_device, resolve_device
    from ..runs.batch import error_message
    from ..runs.dryrun import describe

    as_json = settings.json
    with settings.reported(EXIT_USAGE):
        device_name = describe_device(resolve_device(device))
    logging.getLogger("isprs_seg").info("dry run: forecasts for HRNetV2-W48 on %s, without loading the model; "
                                        "nothing is written", device_name)
    failed, forecasts = 0, []
    for path, outputs in zip(paths, planned):
        try:
            forecast = forecast_one(path, outputs, device_name)
        except Exception as exc:  # noqa: BLE001 - one bad input must not end the plan
            failed += 1
            message = error_message(path, exc)
            settings.error(message, {"input": path, "status": "error", "error": message}, exc)
            continue
        forecasts.append(forecast)
        if as_json:
            print(json.dumps({**forecast.as_dict(), "status": "ok"}), flush=True)
        else:
            print(describe(forecast), flush=True)
    _disk(forecasts, as_json)
    return failed


def _disk(forecasts: list, as_json: bool) -> None:
    """The outputs of all inputs against the free space where the first one goes."""
    from ..runs.dryrun import size_text

    if not forecasts:
        return
    total = sum(o.bytes for f in forecasts for o in f.outputs if o.bytes is not None)
    total += max(f.disk_peak - sum(o.bytes or 0 for o in f.outputs) for f in forecasts)  # one COG copy at a time
    where = Path(forecasts[0].outputs[0].path).parent
    free = _free_space(where)
    if not as_json:
        print(f"{len(forecasts)} input{'s' if len(forecasts) > 1 else ''}: up to {size_text(total)} on disk"
              + (f"; {size_text(free)} free on the disk under {where}" if free is not None else ""),
              flush=True)
    if free is not None and total > free:
        print(f"isprs-seg: warning: the outputs may not fit in the {size_text(free)} free under {where} (up to "
              f"{size_text(total)} uncompressed; compressed they are usually much smaller)", file=sys.stderr)


def _free_space(path: Path) -> int | None:
    """Free bytes on the file system that will hold ``path`` (its nearest existing ancestor)."""
    here = path.absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return shutil.disk_usage(here).free
    except OSError:
        return None

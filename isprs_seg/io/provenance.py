"""What produced an output, recorded in it, and what a rerun does with an existing output.

Every GeoTIFF output carries the *settings* of the run that made it (tag
:data:`SETTINGS_TAG`, JSON): for each output role of that run, the tool's version, the
model's digest (of the SavedModel's files, not the handle as typed) and every option
that changes that output's pixels. Options that only change speed or float rounding
(``--batch-size``, ``--device``, ``--xla``) are not part of it. Outputs that are not
GeoTIFFs (the pooled table, the preview) are described by the record of the run's main
output.

A rerun skips an input only when every expected output exists, is complete and was
made with the same settings (:func:`existing_outputs`).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import rasterio

from .. import __version__
from ..errors import first_line
from ..options import parse_bands, parse_scale
from .atomic import verify_complete
from .vector import check_readable, read_table_metadata

#: GeoTIFF tag holding the settings of the run that wrote the file, by output role.
SETTINGS_TAG = "ISPRS_SEG_SETTINGS"

#: How a setting is named on the command line, for messages.
FLAGS = {
    "tile": "--tile", "overlap": "--overlap", "blend": "--blend", "tta": "--tta", "confidence": "--confidence",
    "bands": "--bands", "recipe": "--recipe",
    "scale": "--scale", "normalize": "--normalize", "gsd": "--gsd", "precision": "--precision",
    "probabilities_dtype": "--probabilities-dtype", "dtype": "--dtype", "pool": "--pool", "vector": "--vector",
    "classes": "--classes", "min_area": "--min-area", "simplify": "--simplify",
}


def run_settings(model, options, reading, roles, product) -> dict[str, dict]:
    """The settings of each output role of a run (see the module docstring).

    ``model``: a loaded model or its description (its digest and precision);
    ``options``, ``reading``: the run's :class:`RunOptions` and :class:`InputOptions`;
    ``product``: what the run makes (:mod:`isprs_seg.products`), whose
    ``ROLE_SETTINGS`` say which of its settings change each role's pixels.
    """
    bands, scale = parse_bands(reading.bands), parse_scale(reading.scale)
    common = {
        "software": f"isprs-seg {__version__}",
        "model": model.digest,
        "tile": options.tile,
        "overlap": options.overlap,
        "blend": options.blend,
        "tta": options.tta,
        "bands": ",".join(map(str, bands)) if bands else None,
        "recipe": reading.recipe,
        "scale": f"{scale[0]:g},{scale[1]:g}" if scale else "auto",
        "normalize": reading.normalize,
        "gsd": reading.gsd,
        "precision": model.precision,
    }
    values = product.pixel_settings()
    return {role: common | {key: values[key] for key in product.ROLE_SETTINGS[role]} for role in roles}


def settings_tags(settings: Mapping[str, dict], handle: str) -> dict[str, str]:
    """The tags that record ``settings`` in a GeoTIFF (plus the model's handle, for people)."""
    return {SETTINGS_TAG: json.dumps(settings, sort_keys=True), "MODEL_DIGEST": next(iter(settings.values()))["model"],
            "MODEL": handle}


def read_settings(path: Path) -> dict | None:
    """The recorded settings of a GeoTIFF, GeoPackage or GeoParquet output, or None when it has none."""
    if _is_vector(path):
        text = read_table_metadata(path).get(SETTINGS_TAG)
    else:
        with rasterio.open(path) as ds:
            text = ds.tags().get(SETTINGS_TAG)
    return json.loads(text) if text else None


def difference(path: Path, recorded: dict, expected: dict) -> str | None:
    """One sentence saying how ``path`` was made differently, or None when it was not."""
    if recorded == expected:
        return None
    if recorded.get("software") != expected["software"]:
        return f"{path} was made by {recorded.get('software') or 'another program'}, not {expected['software']}"
    if recorded.get("model") != expected.get("model"):
        return f"{path} was made with another model (digest {str(recorded.get('model'))[:19]})"
    if recorded.get("source") != expected.get("source"):
        return f"{path} was made from another version of its input (the class raster changed since)"
    for key, flag in FLAGS.items():
        if key in expected and recorded.get(key) != expected[key]:
            old = recorded.get(key)
            return f"{path} was made without {flag}" if old is None else f"{path} was made with {flag} {old}"
    return f"{path} was made with other settings"


@dataclass
class Existing:
    """What is already there for one input: the verdict and the notes that go with it."""

    complete: bool = True  # every expected output exists, is complete and has the same settings
    conflict: str | None = None  # an output made with other settings: refuse without --overwrite
    notes: list[str] = field(default_factory=list)  # outputs that are incomplete and will be made again


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in (".tif", ".tiff")


def _is_vector(path: Path) -> bool:
    return path.suffix.lower() in (".gpkg", ".parquet", ".geoparquet")


def _problem(path: Path) -> str | None:
    """None when ``path`` is a complete output, else why it is not."""
    try:
        if path.stat().st_size == 0:
            return "it is empty"
        if _is_tiff(path):
            verify_complete(path, path)
        elif _is_vector(path):
            check_readable(path)
        elif path.suffix.lower() == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix.lower() in (".xml", ".qml"):
            ET.parse(path)
        else:
            with rasterio.open(path):
                pass
    except Exception as exc:  # noqa: BLE001 - whatever the reader says, the file is not usable
        return f"it cannot be read: {first_line(exc)}"
    return None


def existing_outputs(outputs: Mapping[str, Path], expected: Mapping[str, dict]) -> Existing:
    """Compare the outputs of one input (by role, main last) with the settings of this run."""
    found = Existing()
    main_role = list(outputs)[-1]
    main_record = None
    for role in reversed(list(outputs)):  # the main output first: it describes the others
        path = outputs[role]
        if not path.exists():
            found.complete = False
            continue
        problem = _problem(path)
        if problem:
            found.complete = False
            found.notes.append(f"{path} is incomplete ({problem}); it is made again")
            continue
        if not _is_tiff(path) and role != main_role:  # described by the main output, when that is there
            if main_record is None or role not in main_record:
                found.complete = False
            else:
                found.conflict = found.conflict or difference(path, main_record[role], expected[role])
            continue
        record = read_settings(path)
        if role == main_role:
            main_record = record
        if record is None or role not in record:
            found.conflict = found.conflict or (
                f"{path} exists but has no record of isprs-seg {role} settings (made by another program or "
                "an older version)")
        else:
            found.conflict = found.conflict or difference(path, record[role], expected[role])
    if found.conflict:
        found.complete = False
    return found

"""Class rasters: the class of every pixel, and on request its probabilities, a
confidence score and polygons (``isprs-seg predict``, :func:`isprs_seg.api.predict_raster`)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Mapping

import numpy as np

from .. import contract
from ..io.legend import write_legend
from ..io.outputs import COMPANIONS, BlockRowWriter, class_raster, confidence_raster, probability_raster, to_cog
from ..model.inference import require_class_raster
from ..options import CONFIDENCE_KINDS, PROBABILITY_DTYPES, check_choice
from ..tiling.blend import argmax_planes
from .base import OutputSink, RunKind


@dataclass(frozen=True)
class Classes:
    """The class raster and what may go with it (a :class:`isprs_seg.products.base.Product`).

    ``probabilities``: also the per-class probabilities (``True``: beside the class raster,
    ``OUT.probabilities.tif``; or a path), stored as ``probabilities_dtype``
    (float32 with NaN where invalid, or uint8 x 255 with a mask); ``confidence``: also
    the highest probability (``"max"``) or its margin over the second (``"margin"``),
    x 255; ``vector``: also polygons of these classes (``"building,car"`` or ``"all"``);
    ``cog``: Cloud Optimized GeoTIFFs with overviews; ``stac``: also a STAC Item of the
    output set (``OUT.stac.json``, :mod:`isprs_seg.io.stac`).
    """

    probabilities: bool | str | os.PathLike = False
    probabilities_dtype: str = "float32"
    confidence: str | None = None
    vector: str | None = None
    cog: bool = True
    stac: bool = False

    command: ClassVar[str] = "predict"
    main: ClassVar[str] = "classes"
    ROLE_SETTINGS: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "classes": (),
        "categories": (),
        "legend": (),
        "probabilities": ("probabilities_dtype",),
        "confidence": ("confidence",),
        "polygons": ("vector",),
        "stac": (),
    }

    def check(self) -> Classes:
        check_choice("--probabilities-dtype", self.probabilities_dtype, PROBABILITY_DTYPES)
        if self.confidence is not None:
            check_choice("--confidence", self.confidence, CONFIDENCE_KINDS)
        if self.vector:
            from ..analysis.vectorize import require_vector

            require_vector()
        return self

    def roles(self) -> list[str]:
        wanted = (("probabilities", self.probabilities), ("confidence", self.confidence), ("polygons", self.vector))
        return [role for role, asked in wanted if asked] + list(COMPANIONS) + (["stac"] if self.stac else [])

    def suffixes(self) -> dict[str, str]:
        return {}

    def given(self) -> dict[str, object]:
        chosen = self.probabilities is not True and self.probabilities
        return {"probabilities": self.probabilities} if chosen else {}

    def kind(self, finals: Mapping[str, Path]) -> RunKind:
        written = "probabilities" in finals
        return RunKind("predict", 1, written, 4 if self.probabilities_dtype == "float32" else 1)

    def pixel_settings(self) -> dict[str, object]:
        return {"probabilities_dtype": self.probabilities_dtype, "vector": self.vector,
                "confidence": self.confidence}

    def size_settings(self) -> dict[str, object]:
        return {"probabilities_dtype": self.probabilities_dtype, "cog": self.cog}

    def check_model(self, model) -> None:
        require_class_raster(model)

    def channels(self, model) -> int:
        return model.num_classes

    def open_sink(self, stack: contextlib.ExitStack, temps: dict[str, Path], src, tags: dict, model) -> ClassSink:
        return ClassSink(stack, temps, src, tags, model, self.probabilities_dtype, self.cog, self.vector,
                         self.confidence)


class ClassSink(OutputSink):
    """The class raster (argmax of the probabilities) and, when asked, the probabilities."""

    def __init__(self, stack: contextlib.ExitStack, temps: dict[str, Path], src, tags: dict, model, dtype: str,
                 cog: bool, vector: str | None, confidence: str | None):
        names = model.class_names
        self.colors, self.cog, self.vector = model.class_colors, cog, vector
        classes = stack.enter_context(
            class_raster(temps["classes"], src, names, model.class_colors, contract.CLASS_NODATA, tags))
        self.classes = BlockRowWriter(classes)
        self.probabilities = None
        self.as_bytes = dtype == "uint8"  # 0-255 with a mask; float32 with NaN
        if "probabilities" in temps:
            probabilities = stack.enter_context(probability_raster(temps["probabilities"], src, names, dtype, tags))
            self.probabilities = BlockRowWriter(probabilities, mask=self.as_bytes, fill=0 if self.as_bytes else np.nan)
        self.confidence = None
        if "confidence" in temps:
            self.confidence_kind = confidence
            raster = stack.enter_context(confidence_raster(temps["confidence"], src, confidence, tags))
            self.confidence = BlockRowWriter(raster, mask=True, fill=0)
        self.names = names
        self.counts = np.zeros(len(names), np.int64)
        # the class alone is the argmax of the weighted sums: no division needed
        self.needs_means = bool(self.probabilities or self.confidence)

    def write(self, row: int, values: np.ndarray, valid: np.ndarray) -> None:
        classes = argmax_planes(values)
        classes[~valid] = contract.CLASS_NODATA
        self.counts += np.bincount(classes.ravel(), minlength=256)[: len(self.names)]  # 255 (nodata) left out
        self.classes.write(row, classes, valid)
        if self.probabilities:
            self.probabilities.write(row, np.rint(values * 255) if self.as_bytes else values, valid)
        if self.confidence:
            if self.confidence_kind == "max":
                score = values.max(axis=0)
            else:  # the margin of the highest probability over the second
                top = np.partition(values, -2, axis=0)
                score = top[-1] - top[-2]
            self.confidence.write(row, np.rint(score * 255), valid)

    def finish(self) -> None:
        self.classes.finish()
        for writer in (self.probabilities, self.confidence):
            if writer:
                writer.finish()

    def closed(self, temps: dict[str, Path], finals: dict[str, Path]) -> None:
        for role in ("probabilities", "confidence", "classes"):
            if self.cog and role in temps:
                to_cog(temps[role], role, finals[role])
        write_legend(temps["categories"], temps["legend"], self.names, self.colors)
        if "polygons" in temps:
            from ..analysis.vectorize import vectorize_raster

            vectorize_raster(temps["classes"], temps["polygons"], classes=None if self.vector == "all" else self.vector)

    def writers(self) -> dict[str, BlockRowWriter]:
        return {role: writer for role, writer in (("classes", self.classes), ("probabilities", self.probabilities),
                                                  ("confidence", self.confidence)) if writer}

    def add_counts(self, pixels: dict[str, int]) -> None:
        self.counts += np.array([pixels[name] for name in self.names], np.int64)

    def summary(self) -> dict:
        total = self.counts.sum()
        return {"class_fractions": {n: float(c / total) if total else 0.0 for n, c in zip(self.names, self.counts)},
                "class_pixels": {n: int(c) for n, c in zip(self.names, self.counts)}}

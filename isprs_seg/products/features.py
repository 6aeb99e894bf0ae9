"""Feature rasters: the model's 720-channel embeddings at 1/4 resolution, and on request
pooled embeddings per grid cell and a PCA quick-look (``isprs-seg features``,
:func:`isprs_seg.api.extract_features`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Mapping

import numpy as np

from .. import contract
from ..errors import InputError
from ..io.outputs import BlockRowWriter, feature_raster, to_cog
from ..io.vector import EXTENSIONS, format_of
from ..model.inference import require_features
from ..options import FEATURE_DTYPES, check_choice
from .base import OutputSink, RunKind
from .embeddings import CellPooler, PcaPreview, parse_pool_spec, pool_cell, pool_text, require_pool_format


@dataclass(frozen=True)
class Features:
    """The feature raster and what may go with it (a :class:`isprs_seg.products.base.Product`).

    ``dtype``: ``float16`` (half precision on disk, GDAL Float32 with NBITS=16) or
    ``float32``; ``pool``: cell size of mean-pooled embeddings (metres ``"10"``/``"10m"``,
    or pixels ``"256px"``), written as a GeoPackage to ``pooled`` (default
    ``OUT.pooled.gpkg``), or as GeoParquet with ``pool_format="parquet"``
    (``OUT.pooled.parquet``); ``preview``: path of a PNG false-colour quick-look (the
    first three principal components); ``cog``: a Cloud Optimized GeoTIFF with overviews;
    ``stac``: also a STAC Item of the output set (``OUT.stac.json``, :mod:`isprs_seg.io.stac`).
    """

    dtype: str = "float16"
    pool: str | None = None
    cog: bool = False
    pooled: str | None = None
    preview: str | None = None
    pool_format: str = "gpkg"
    stac: bool = False

    command: ClassVar[str] = "features"
    main: ClassVar[str] = "features"
    ROLE_SETTINGS: ClassVar[Mapping[str, tuple[str, ...]]] = {
        "features": ("dtype",),
        "pooled": ("pool",),
        "preview": ("dtype",),
        "stac": (),
    }

    def check(self) -> Features:
        check_choice("--dtype", self.dtype, FEATURE_DTYPES)
        if self.pool:
            parse_pool_spec(self.pool)
            require_pool_format(self.pool_format)
            if self.pooled and format_of(self.pooled) != self.pool_format:
                raise InputError(f"the pooled table {self.pooled} is not named *{EXTENSIONS[self.pool_format]}, "
                                 f"the extension of --pool-format {self.pool_format}")
        return self

    def roles(self) -> list[str]:
        return (["pooled"] if self.pool else []) + (["stac"] if self.stac else [])

    def suffixes(self) -> dict[str, str]:
        return {"pooled": f".pooled{EXTENSIONS[self.pool_format]}"} if self.pool else {}

    def given(self) -> dict[str, object]:
        chosen = (("pooled", self.pooled if self.pool else None), ("preview", self.preview))
        return {role: path for role, path in chosen if path}

    def kind(self, finals: Mapping[str, Path]) -> RunKind:
        return RunKind("get_features", contract.FEATURE_STRIDE, True, 4)

    def pixel_settings(self) -> dict[str, object]:
        return {"dtype": self.dtype, "pool": pool_text(self.pool) if self.pool else None}

    def size_settings(self) -> dict[str, object]:
        return {"dtype": self.dtype, "pool": self.pool, "cog": self.cog}

    def check_model(self, model) -> None:
        require_features(model)

    def channels(self, model) -> int:
        return model.feature_channels

    def open_sink(self, stack: contextlib.ExitStack, temps: dict[str, Path], src, tags: dict, model) -> FeatureSink:
        return FeatureSink(stack, temps, src, tags, model, self)


class FeatureSink(OutputSink):
    """The feature raster and, when asked, the pooled table and the PCA preview."""

    def __init__(self, stack: contextlib.ExitStack, temps: dict[str, Path], src, tags: dict, model,
                 features: Features):
        stride, channels = contract.FEATURE_STRIDE, model.feature_channels
        height, width = -(-src.height // stride), -(-src.width // stride)
        dataset = stack.enter_context(
            feature_raster(temps["features"], src, channels, stride, features.dtype, tags))
        self.writer = BlockRowWriter(dataset, fill=np.nan)
        self.pooler = None
        if "pooled" in temps:
            cell = pool_cell(features.pool, src)
            self.pooler = CellPooler(temps["pooled"], src, cell, stride, height, width, channels,
                                     features.pool_format)
        self.sampler = PcaPreview(height * width) if "preview" in temps else None
        self.cog = features.cog

    def write(self, row: int, values: np.ndarray, valid: np.ndarray) -> None:
        self.writer.write(row, values, valid)
        if self.pooler:
            self.pooler.add(row, values, valid)
        if self.sampler:
            self.sampler.add(values, valid)

    def finish(self) -> None:
        self.writer.finish()
        if self.pooler:
            self.pooler.close()

    def writers(self) -> dict[str, BlockRowWriter]:
        return {"features": self.writer}

    def closed(self, temps: dict[str, Path], finals: dict[str, Path]) -> None:
        if self.sampler:
            self.sampler.write(temps["features"], temps["preview"])
        if self.cog:
            to_cog(temps["features"], "features", finals["features"])

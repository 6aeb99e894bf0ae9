"""The Python API of one input: :func:`predict_raster` and :func:`extract_features`.

Each call checks its options (the same checks and sentences as the command line),
names the outputs (:func:`isprs_seg.io.outputs.output_paths`), describes the run as a
:class:`isprs_seg.runs.engine.RunSpec` holding its product (:mod:`isprs_seg.products`)
and hands it to an engine: ``engine=`` (for example a
:class:`isprs_seg.runs.cluster.RayEngine`), else the local engine over ``model=``.
"""

from __future__ import annotations

import os

from . import contract
from .io.outputs import output_paths
from .model import Model
from .options import InputOptions, RunOptions
from .products import Classes, Features, Product
from .runs.engine import Engine, ProgressFactory, RunResult, RunSpec
from .runs.local import with_model

__all__ = ["InputOptions", "RunOptions", "RunResult", "predict_raster", "extract_features", "run_product"]


def run_product(input: str | os.PathLike, product: Product, output: str | os.PathLike | None = None, *,
                out_dir: str | os.PathLike | None = None, options: RunOptions = RunOptions(),
                reading: InputOptions = InputOptions(), engine: Engine | None = None,
                model: Model | str | None = None, progress: ProgressFactory | None = None) -> RunResult:
    """Make ``product`` from one raster: what :func:`predict_raster` and
    :func:`extract_features` do once they have built their product."""
    options.check()
    reading.check()
    product.check()
    finals = output_paths(input, product.main, product.roles(), output=output, out_dir=out_dir,
                          given=product.given(), suffixes=product.suffixes())
    spec = RunSpec(product, str(input), finals, options, reading)
    return with_model(engine, model).run(spec, progress)


def predict_raster(
    input: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    model: Model | str | None = None,
    probabilities: str | os.PathLike | bool | None = None,
    tile: int = contract.DEFAULT_TILE,
    overlap: int = contract.DEFAULT_OVERLAP,
    batch_size: int | None = None,
    blend: str = "taper",
    probabilities_dtype: str = "float32",
    cog: bool = True,
    vector: str | None = None,
    confidence: str | None = None,
    tta: str = "none",
    stac: bool = False,
    reading: InputOptions = InputOptions(),
    progress: ProgressFactory | None = None,
    engine: Engine | None = None,
) -> RunResult:
    """Segment one raster into a class raster at ``output`` (or ``out_dir/<stem>.classes.tif``).

    ``probabilities``: a path for the per-class probability raster, ``True`` for the
    name beside the class raster (``OUT.probabilities.tif``), or ``None``.
    ``model``: a loaded :class:`Model`, a handle, or ``None`` for the default model.
    ``reading``: band mapping, scaling and normalisation (:class:`InputOptions`).
    ``progress``: called with the number of patches, returns a :class:`Progress`
    (for example ``lambda total: tqdm(total=total)``), advanced once per patch.
    ``cog``: the class and probability rasters are Cloud Optimized GeoTIFFs with
    overviews (else tiled GeoTIFFs without). Beside the class raster go its category
    names (``OUT.tif.aux.xml``) and a QGIS style (``OUT.qml``), see :mod:`isprs_seg.io.legend`.
    ``vector``: also polygonise these classes (``"building,car"``, or ``"all"``) into
    ``OUT.polygons.gpkg`` (see :func:`isprs_seg.analysis.vectorize.vectorize_raster`).
    ``confidence``: also write ``OUT.confidence.tif``, uint8: the highest class
    probability (``"max"``) or its margin over the second (``"margin"``), times 255.
    ``tta``: test-time augmentation, ``"flips"`` or ``"d4"`` (see :meth:`Model.predict`).
    ``stac``: also write a STAC Item of the outputs, ``OUT.stac.json`` (see :mod:`isprs_seg.io.stac`).
    ``engine``: where to run (an :class:`isprs_seg.runs.engine.Engine`, for example a
    :class:`isprs_seg.runs.cluster.RayEngine` whose workers hold their own model;
    ``model`` is then not used); the outputs are identical. Outputs appear under their
    final names only when complete.
    """
    product = Classes(probabilities or False, probabilities_dtype, confidence, vector, cog, stac)
    options = RunOptions(tile, overlap, batch_size, blend, tta)
    return run_product(input, product, output, out_dir=out_dir, options=options, reading=reading, engine=engine,
                       model=model, progress=progress)


def extract_features(
    input: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    model: Model | str | None = None,
    tile: int = contract.DEFAULT_TILE,
    overlap: int = contract.DEFAULT_OVERLAP,
    batch_size: int | None = None,
    blend: str = "taper",
    dtype: str = "float16",
    pool: str | float | None = None,
    pooled: str | os.PathLike | None = None,
    preview: str | os.PathLike | None = None,
    cog: bool = False,
    pool_format: str = "gpkg",
    stac: bool = False,
    reading: InputOptions = InputOptions(),
    progress: ProgressFactory | None = None,
    engine: Engine | None = None,
) -> RunResult:
    """Write the model's dense features of one raster to ``output`` (or ``out_dir/<stem>.features.tif``).

    The feature raster has ``ceil(H/4) x ceil(W/4)`` pixels and one band per feature
    channel; its transform is the input's times ``Affine.scale(4)``, so feature pixel
    (i, j) covers input pixels [4i, 4i+4) x [4j, 4j+4). ``dtype`` ``float16`` stores
    half precision (GDAL Float32 with NBITS=16), ``float32`` full precision.
    ``pool``: cell size of mean-pooled embeddings (metres, or pixels with a ``px``
    suffix), written as a GeoPackage to ``pooled`` (default ``OUT.pooled.gpkg``), or with
    ``pool_format="parquet"`` as GeoParquet 1.1 (default ``OUT.pooled.parquet``).
    ``preview``: path of a PNG false-colour quick-look (first three principal
    components). ``cog``: write the feature raster as a Cloud Optimized GeoTIFF with
    overviews. ``stac``: also write a STAC Item of the outputs, ``OUT.stac.json``. Other
    arguments as in :func:`predict_raster`.
    """
    product = Features(dtype, str(pool) if pool else None, cog, pooled, preview, pool_format, stac)
    options = RunOptions(tile, overlap, batch_size, blend)
    return run_product(input, product, output, out_dir=out_dir, options=options, reading=reading, engine=engine,
                       model=model, progress=progress)

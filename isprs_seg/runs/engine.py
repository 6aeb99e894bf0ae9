"""Where a run is computed: the :class:`Engine` protocol, and the plain data that crosses it.

An engine takes a :class:`RunSpec` (one input, its outputs and every setting, as
picklable plain data) and returns a :class:`RunResult`. Two engines implement it: the
local engine (:class:`isprs_seg.runs.local.LocalEngine`: this process, one loaded
model) and the Ray engine (:class:`isprs_seg.runs.cluster.RayEngine`: workers that
each load the model). The API and the command line hold an engine and never ask which
one it is.

Guarantees every engine gives (each tested in ``tests/test_engines.py`` or
``tests/test_cluster.py``):

- **Same outputs**: for the same spec and model, the same files with the same bytes
  (feature rasters: the same pixels) whatever the engine.
- **Checked before work**: :meth:`Engine.describe` raises the error a run would raise
  when the model cannot serve the product (a class raster holds at most 255 classes, a
  features run needs ``get_features``), before any input is opened.
- **Outputs appear whole**: outputs appear under their final names only when
  complete; a failed or interrupted run leaves none there.
- **One sentence**: errors meant for users are :class:`isprs_seg.errors.IsprsSegError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from ..io.provenance import run_settings, settings_tags
from ..options import InputOptions, RunOptions
from ..tiling.stream import Progress

if TYPE_CHECKING:
    from ..products import Product

#: Called with the number of planned patches; returns a :class:`Progress` display.
ProgressFactory = Callable[[int], Progress]


@dataclass
class RunResult:
    """What one run of one input did."""

    input: str
    outputs: list[str]  # the main output first
    width: int
    height: int
    tiles: int  # patches sent to the model
    skipped_tiles: int  # patches without a valid pixel, never sent
    tile: int
    overlap: int
    batch_size: int
    seconds: float
    class_fractions: dict[str, float] = field(default_factory=dict)  # classes only
    class_pixels: dict[str, int] = field(default_factory=dict, repr=False)  # classes: valid pixels per class


@dataclass(frozen=True)
class ModelFacts:
    """What the outputs need to know of a model, without TensorFlow: a loaded
    :class:`isprs_seg.model.Model` answers the same attributes; the driver of a
    distributed run gets this from a worker (:meth:`of`)."""

    handle: str
    digest: str
    precision: str
    batch_size: int
    num_classes: int
    feature_channels: int | None
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    device_description: str

    @classmethod
    def of(cls, model) -> ModelFacts:
        return cls(model.handle, model.digest, model.precision, model.batch_size, model.num_classes,
                   model.feature_channels, tuple(model.class_names), tuple(model.class_colors),
                   model.device_description)


@dataclass(frozen=True)
class RunSpec:
    """One run of one input, as plain data: what any engine needs, besides the model, to
    compute it or any strip of it.

    ``product``: what is made (:mod:`isprs_seg.products`), with its own settings;
    ``finals``: the outputs by role, the main output last (as
    :func:`isprs_seg.io.outputs.output_paths` orders them).
    """

    product: Product
    input: str
    finals: dict[str, Path]
    options: RunOptions
    reading: InputOptions

    def record(self, model) -> dict[str, str]:
        """The tags that record what made the outputs (:mod:`isprs_seg.io.provenance`)."""
        return settings_tags(self.settings(model), model.handle)

    def settings(self, model) -> dict[str, dict]:
        """The settings of each output role (:func:`isprs_seg.io.provenance.run_settings`)."""
        return run_settings(model, self.options, self.reading, self.finals, self.product)


class Engine(Protocol):
    """Computes runs. Use as a context manager (or call :meth:`close`)."""

    def describe(self, product: Product) -> ModelFacts:
        """The model this engine runs, checked for ``product`` (the error a run would raise)."""
        ...

    def run(self, spec: RunSpec, progress: ProgressFactory | None = None) -> RunResult:
        """Compute ``spec`` into its outputs."""
        ...

    def close(self) -> None: ...
    def __enter__(self) -> Engine: ...
    def __exit__(self, *exc) -> None: ...

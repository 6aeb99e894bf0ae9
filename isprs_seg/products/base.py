"""What every product shares: the :class:`Product` protocol, the run kind and the sink base."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Mapping, Protocol

import numpy as np

if TYPE_CHECKING:
    from ..io.outputs import BlockRowWriter


@dataclass(frozen=True)
class RunKind:
    """What a run asks of the model and what it writes."""

    method: str  # model method: "predict" or "get_features"
    stride: int  # input pixels per output pixel, along each axis
    written: bool  # every channel is written (probabilities, features), not only the classes
    output_bytes: int  # bytes per written channel value in the writers' buffers


class OutputSink:
    """A product's sink (an :class:`isprs_seg.tiling.stream.Sink`) and what it reports."""

    #: The sink needs the weighted means, not only the weighted sums (see :func:`isprs_seg.tiling.stream.stream`).
    needs_means = True

    def write(self, row: int, values: np.ndarray, valid: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Flush the last rows; the outputs are still open."""

    def closed(self, temps: dict[str, Path], finals: dict[str, Path]) -> None:
        """Work on the finished outputs, after they are closed and before they are committed."""

    def summary(self) -> dict:
        """Fields of the run's :class:`isprs_seg.runs.engine.RunResult` that the sink knows."""
        return {}

    def writers(self) -> dict[str, BlockRowWriter]:
        """The writer of each raster output, by role."""
        raise NotImplementedError

    def add_counts(self, pixels: dict[str, int]) -> None:
        """Count pixels written elsewhere (another strip) as if written here."""


class Product(Protocol):
    """One kind of output set (class rasters, feature rasters) with its own settings.

    A product is a frozen dataclass of the settings of its command (picklable: it
    travels to the workers of a distributed run) and owns everything that depends on
    them: which outputs a run writes, what it asks of the model, which settings change
    which output's pixels (read by :mod:`isprs_seg.io.provenance`, the command line and
    the dry run, never listed again elsewhere), and the sink that writes the outputs.
    """

    #: The command that makes it, in messages and in the model's check.
    command: ClassVar[str]
    #: The main output's role: the others are named after it.
    main: ClassVar[str]
    #: For each output role, the product's settings that change its pixels.
    ROLE_SETTINGS: ClassVar[Mapping[str, tuple[str, ...]]]

    def check(self) -> Product:
        """Raise the one-sentence error for a setting that cannot be used; return self."""
        ...

    def roles(self) -> list[str]:
        """The output roles a run writes besides the main one, in order."""
        ...

    def suffixes(self) -> dict[str, str]:
        """File name suffixes of roles that differ from :data:`isprs_seg.io.outputs.SUFFIXES`
        (a format chosen for them)."""
        ...

    def given(self) -> dict[str, object]:
        """Output paths chosen by the caller, by role (the others are named after the main output)."""
        ...

    def kind(self, finals: Mapping[str, Path]) -> RunKind: ...

    def pixel_settings(self) -> dict[str, object]:
        """The values of the settings in :attr:`ROLE_SETTINGS`."""
        ...

    def size_settings(self) -> dict[str, object]:
        """The settings that change the outputs' sizes on disk (for the dry run)."""
        ...

    def check_model(self, model) -> None:
        """Raise the clear error when ``model`` cannot make this product."""
        ...

    def channels(self, model) -> int:
        """Values per output pixel that the model gives for this product."""
        ...

    def open_sink(self, stack: contextlib.ExitStack, temps: dict[str, Path], src, tags: dict, model) -> OutputSink:
        """The product's sink on new datasets at ``temps`` (closed by ``stack``), on the grid of
        ``src``; ``model``: a loaded model or its :class:`isprs_seg.runs.engine.ModelFacts`."""
        ...


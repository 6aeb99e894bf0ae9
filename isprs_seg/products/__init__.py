"""What a run makes: one product per command, each owning its settings, its outputs and its sink.

- :class:`Classes` (``predict``): the class raster, with on request probabilities,
  confidence and polygons;
- :class:`Features` (``features``): the feature raster, with on request pooled
  embeddings and a PCA preview.

Both implement :class:`isprs_seg.products.base.Product`; a run
(:class:`isprs_seg.runs.engine.RunSpec`) holds one.
"""

from .base import OutputSink, Product, RunKind
from .classes import Classes
from .features import Features

__all__ = ["Product", "RunKind", "OutputSink", "Classes", "Features"]

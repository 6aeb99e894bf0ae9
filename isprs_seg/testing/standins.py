"""Stand-in SavedModels with exactly the interface of the ISPRS HRNet model.

For tests and benchmarks only: the real weights cannot be downloaded on every machine.
A stand-in is never a default and its outputs mean nothing. Two kinds:

``small``
    A small, fast network with a bounded receptive field (:data:`SMALL_RECEPTIVE_RADIUS`
    pixels) that computes its output from the input as if the image were surrounded by
    zeros. It is equivariant to shifts by multiples of its stride (4), so a correct
    tiler that pads with zeros reproduces its whole-image output exactly wherever a
    pixel is at least that radius away from a patch edge inside the image.
``hrnet-w48``
    HRNetV2-W48 with seeded random weights: the real architecture and compute cost
    (about 65.8 M parameters), for benchmarks.

Both export ``predict(x) -> [B, H, W, 7]`` softmax probabilities at full resolution and
``get_features(x) -> [B, ceil(H/4), ceil(W/4), 720]``. Variants exercise the model
layer: ``convention="list"`` takes a Python list of one ``[H, W, 3]`` image (as the
model card calls it), ``methods="signatures"`` exposes the methods only as serving
signatures, ``logits=True`` returns logits instead of probabilities.
"""

from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

import numpy as np

from .. import contract
from .._tf import tensorflow

tf = tensorflow()

#: Output pixels of the small stand-in depend only on input pixels within this
#: Chebyshev distance (fine branch 4 px, stride-4 branch at most 7 px).
SMALL_RECEPTIVE_RADIUS = 8
KINDS = ("small", "hrnet-w48")
_STRIDE = contract.FEATURE_STRIDE


def _variable(rng: np.random.Generator, shape, scale: float) -> tf.Variable:
    return tf.Variable(rng.normal(0.0, scale, size=shape).astype(np.float32))


def _conv(x, w, b):
    return tf.nn.conv2d(x, w, strides=1, padding="VALID") + b


class SmallNet(tf.Module):
    """The bounded-receptive-field stand-in (see the module docstring)."""

    def __init__(self, seed: int = 0, num_classes: int = 7, channels: int = 720):
        super().__init__(name="small_standin")
        rng = np.random.default_rng(seed)
        widths = [(5, 3, 16), (3, 16, 16), (3, 16, 16)]
        self.fine = [
            (_variable(rng, (k, k, cin, cout), (2.0 / (k * k * cin)) ** 0.5), _variable(rng, (cout,), 0.05))
            for k, cin, cout in widths
        ]
        self.fine_head = (_variable(rng, (1, 1, 16, num_classes), 0.5), _variable(rng, (num_classes,), 0.1))
        self.coarse = (_variable(rng, (3, 3, 3, 32), 0.5), _variable(rng, (32,), 0.05))
        self.embed = (_variable(rng, (1, 1, 32, channels), 0.3), _variable(rng, (channels,), 0.1))
        self.coarse_head = (_variable(rng, (1, 1, channels, num_classes), 0.05), _variable(rng, (num_classes,), 0.1))

    def features(self, x):
        """[B, ceil(H/4), ceil(W/4), C]: 4x4 mean pooling, a 3x3 conv and a 1x1 embedding."""
        h, w = tf.shape(x)[1], tf.shape(x)[2]
        x = tf.pad(x, [[0, 0], [0, (-h) % _STRIDE], [0, (-w) % _STRIDE], [0, 0]])
        pooled = tf.nn.avg_pool2d(x, _STRIDE, _STRIDE, "VALID")
        pooled = tf.pad(pooled, [[0, 0], [1, 1], [1, 1], [0, 0]])
        hidden = tf.nn.relu(_conv(pooled, *self.coarse))
        return tf.tanh(_conv(hidden, *self.embed))

    def logits(self, x):
        """[B, H, W, classes]: a full-resolution conv stack plus the upsampled stride-4 branch."""
        h, w = tf.shape(x)[1], tf.shape(x)[2]
        r = sum(int(k.shape[0]) // 2 for k, _ in self.fine)
        y = tf.pad(x, [[0, 0], [r, r], [r, r], [0, 0]])
        for kernel, bias in self.fine:
            y = tf.nn.relu(_conv(y, kernel, bias))
        fine = _conv(y, *self.fine_head)
        coarse = _conv(self.features(x), *self.coarse_head)
        coarse = tf.repeat(tf.repeat(coarse, _STRIDE, axis=1), _STRIDE, axis=2)[:, :h, :w]
        return fine + coarse


class _HRNetStandin(tf.Module):
    """HRNetV2-W48 with a bilinear x4 upsampling of the head, as the real model predicts."""

    def __init__(self, seed: int = 0, width: int = 48, num_classes: int = 7):
        from .hrnet import HRNetV2

        super().__init__(name="hrnet_standin")
        self.net = HRNetV2(width=width, num_classes=num_classes, seed=seed)

    def features(self, x):
        return self.net.features(x)

    def logits(self, x):
        size = tf.shape(x)[1:3]
        return tf.image.resize(self.net.logits(x), size, method="bilinear")


def _export(net: tf.Module, path: Path, convention: str, methods: str, logits: bool) -> Path:
    if convention == "tensor":
        spec = [tf.TensorSpec([None, None, None, 3], tf.float32)]

        def batch(x):
            return x

    elif convention == "list":
        spec = [[tf.TensorSpec([None, None, 3], tf.float32)]]

        def batch(images):
            return tf.stack(images)

    else:
        raise ValueError(f"unknown convention {convention!r}")

    def predict(x):
        y = net.logits(batch(x))
        return y if logits else tf.nn.softmax(y, axis=-1)

    def get_features(x):
        return net.features(batch(x))

    module = tf.Module()
    module.net = net
    predict_fn = tf.function(predict, input_signature=spec)
    features_fn = tf.function(get_features, input_signature=spec)
    signatures = None
    if methods == "attributes":
        module.predict = predict_fn
        module.get_features = features_fn
    elif methods == "signatures":
        if convention != "tensor":
            raise ValueError("serving signatures take tensors: use convention='tensor'")
        signatures = {
            "predict": tf.function(lambda x: {"output": predict(x)}, input_signature=spec),
            "get_features": tf.function(lambda x: {"features": get_features(x)}, input_signature=spec),
        }
    else:
        raise ValueError(f"unknown methods {methods!r}")
    path = Path(path)
    tf.saved_model.save(module, str(path), signatures=signatures)
    return path


def build_standin(
    path: str | Path,
    kind: str = "small",
    *,
    convention: str = "tensor",
    methods: str = "attributes",
    logits: bool = False,
    seed: int = 0,
) -> Path:
    """Export a stand-in SavedModel to ``path`` (see the module docstring for the options)."""
    if kind == "small":
        net = SmallNet(seed=seed)
    elif kind == "hrnet-w48":
        net = _HRNetStandin(seed=seed)
    else:
        raise ValueError(f"unknown stand-in kind {kind!r}; choose from {KINDS}")
    return _export(net, Path(path), convention, methods, logits)


def make_archive(model_dir: str | Path, archive: str | Path) -> Path:
    """Pack a SavedModel directory as a ``.tar.gz`` laid out like TF Hub's downloads."""
    model_dir, archive = Path(model_dir), Path(archive)
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(model_dir.iterdir()):
            tar.add(item, arcname=item.name)
    return archive


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m isprs_seg.testing",
        description="Export a stand-in SavedModel for tests and benchmarks (not the real model).",
    )
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("path", type=Path, help="directory to write the SavedModel to")
    parser.add_argument("--convention", choices=("tensor", "list"), default="tensor")
    parser.add_argument("--methods", choices=("attributes", "signatures"), default="attributes")
    parser.add_argument("--logits", action="store_true", help="predict returns logits")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = build_standin(
        args.path, args.kind, convention=args.convention, methods=args.methods,
        logits=args.logits, seed=args.seed,
    )
    print(out)

"""HRNetV2 semantic segmentation network in plain TensorFlow, with seeded random weights.

Stand-in SavedModels for benchmarks are built from :class:`HRNetV2`: it has the
architecture, parameter count and cost of the HRNetV2-W48 segmentation model, but
random weights. Only ``tf.Variable`` and ``tf.nn`` / ``tf.image`` ops are used, so a
module holding it saves cleanly with ``tf.saved_model.save``.

Every BatchNorm is folded into a per-channel bias of the preceding convolution.
All convolutions use ``SAME`` padding and every upsampling resizes to the run-time
size of its target, so any input size works: the stem gives ``ceil(H / 4)`` rows.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

#: Gain of the last convolution of each residual branch and of each fusion path, so
#: that activations stay O(1) through the depth of the network without BatchNorm
#: statistics (every addition then changes its input by only a small amount).
_RESIDUAL_GAIN = 0.2

#: Standard deviation of the random (folded BatchNorm) biases.
_BIAS_STD = 0.01

#: Stem output channels and stage-1 Bottleneck settings.
_STEM_CHANNELS = 64
_BOTTLENECK_PLANES = 64
_BOTTLENECK_EXPANSION = 4
_STAGE1_BLOCKS = 4

#: Number of high-resolution modules in stages 2, 3 and 4 (stage ``k`` has ``k`` branches).
_STAGE_MODULES = (1, 4, 3)

#: BasicBlocks per branch in every high-resolution module.
_BRANCH_BLOCKS = 4


def _apply(layers, x):
    """Apply ``layers`` in sequence (an empty sequence is the identity)."""
    for layer in layers:
        x = layer(x)
    return x


def _resize_to(x, target):
    """Bilinearly resize ``x`` to the spatial size of ``target``."""
    return tf.image.resize(x, tf.shape(target)[1:3], method="bilinear")


class _Conv(tf.Module):
    """Convolution plus per-channel bias (a folded BatchNorm), optionally followed by ReLU."""

    def __init__(self, rng, c_in, c_out, kernel=3, stride=1, relu=True, gain=1.0, name=None):
        super().__init__(name=name)
        std = gain * np.sqrt(2.0 / (kernel * kernel * c_in))
        w = rng.standard_normal((kernel, kernel, c_in, c_out), dtype=np.float32) * np.float32(std)
        b = rng.standard_normal(c_out, dtype=np.float32) * np.float32(_BIAS_STD)
        self.w = tf.Variable(w, name="w")
        self.b = tf.Variable(b, name="b")
        self.stride = stride
        self.relu = relu

    def __call__(self, x):
        y = tf.nn.bias_add(tf.nn.conv2d(x, self.w, self.stride, "SAME"), self.b)
        return tf.nn.relu(y) if self.relu else y


class _Bottleneck(tf.Module):
    """1x1 -> 3x3 -> 1x1 residual block with 4x channel expansion."""

    def __init__(self, rng, c_in, planes, name=None):
        super().__init__(name=name)
        c_out = planes * _BOTTLENECK_EXPANSION
        self.convs = [
            _Conv(rng, c_in, planes, kernel=1),
            _Conv(rng, planes, planes),
            _Conv(rng, planes, c_out, kernel=1, relu=False, gain=_RESIDUAL_GAIN),
        ]
        self.downsample = [] if c_in == c_out else [_Conv(rng, c_in, c_out, kernel=1, relu=False)]

    def __call__(self, x):
        return tf.nn.relu(_apply(self.downsample, x) + _apply(self.convs, x))


class _BasicBlock(tf.Module):
    """Two 3x3 convolutions with an identity shortcut."""

    def __init__(self, rng, channels, name=None):
        super().__init__(name=name)
        self.convs = [
            _Conv(rng, channels, channels),
            _Conv(rng, channels, channels, relu=False, gain=_RESIDUAL_GAIN),
        ]

    def __call__(self, x):
        return tf.nn.relu(x + _apply(self.convs, x))


class _HRModule(tf.Module):
    """Parallel branches of BasicBlocks followed by multi-resolution fusion.

    ``fuse[i][j]`` maps branch ``j`` to the channels and resolution of branch ``i``:
    the identity for ``j == i``; a 1x1 convolution (then upsampling) for ``j > i``;
    ``i - j`` stride-2 3x3 convolutions for ``j < i``, ReLU between them but not after
    the last. Each output is the ReLU of the sum over all sources.
    """

    def __init__(self, rng, channels, name=None):
        super().__init__(name=name)
        self.branches = [[_BasicBlock(rng, c) for _ in range(_BRANCH_BLOCKS)] for c in channels]
        self.fuse = [
            [self._fuse_path(rng, channels, i, j) for j in range(len(channels))]
            for i in range(len(channels))
        ]

    @staticmethod
    def _fuse_path(rng, channels, i, j):
        """Layers mapping branch ``j`` onto branch ``i`` (upsampling excluded)."""
        if j > i:
            return [_Conv(rng, channels[j], channels[i], kernel=1, relu=False, gain=_RESIDUAL_GAIN)]
        steps = [_Conv(rng, channels[j], channels[j], stride=2) for _ in range(i - j - 1)]
        if j < i:
            steps.append(
                _Conv(rng, channels[j], channels[i], stride=2, relu=False, gain=_RESIDUAL_GAIN)
            )
        return steps

    def __call__(self, xs):
        xs = [_apply(blocks, x) for blocks, x in zip(self.branches, xs)]
        fused = []
        for i, paths in enumerate(self.fuse):
            y = xs[i]
            for j, path in enumerate(paths):
                if j < i:
                    y += _apply(path, xs[j])
                elif j > i:
                    y += _resize_to(_apply(path, xs[j]), xs[i])
            fused.append(tf.nn.relu(y))
        return fused


class HRNetV2(tf.Module):
    """HRNetV2 segmentation network (W48 with the default ``width``), seeded random weights.

    Branch channels are ``width * [1, 2, 4, 8]``; the HRNetV2 representation
    concatenates all four branches at 1/4 of the input resolution
    (``15 * width`` channels) and the head maps it to ``num_classes`` logits.
    """

    def __init__(self, width: int = 48, num_classes: int = 7, seed: int = 0, name=None):
        super().__init__(name=name)
        rng = np.random.default_rng(seed)
        self.width = width
        self.num_classes = num_classes
        self.stem = [
            _Conv(rng, 3, _STEM_CHANNELS, stride=2),
            _Conv(rng, _STEM_CHANNELS, _STEM_CHANNELS, stride=2),
        ]
        stage1_out = _BOTTLENECK_PLANES * _BOTTLENECK_EXPANSION
        self.stage1 = [
            _Bottleneck(rng, _STEM_CHANNELS if k == 0 else stage1_out, _BOTTLENECK_PLANES)
            for k in range(_STAGE1_BLOCKS)
        ]
        self.transitions = []
        self.stages = []
        previous = [stage1_out]
        for num_branches, num_modules in enumerate(_STAGE_MODULES, start=2):
            channels = [width * 2**k for k in range(num_branches)]
            self.transitions.append(self._transition(rng, previous, channels))
            self.stages.append([_HRModule(rng, channels) for _ in range(num_modules)])
            previous = channels
        features = sum(previous)
        self.head = [
            _Conv(rng, features, features, kernel=1),
            _Conv(rng, features, num_classes, kernel=1, relu=False),
        ]

    @staticmethod
    def _transition(rng, previous, channels):
        """Per-branch layers from ``previous`` branches to ``channels`` (one new branch).

        Existing branches get a 3x3 convolution only if their width changes; the new
        branch is a stride-2 3x3 convolution of the lowest-resolution previous branch.
        """
        layers = [[] if p == c else [_Conv(rng, p, c)] for p, c in zip(previous, channels)]
        layers.append([_Conv(rng, previous[-1], channels[-1], stride=2)])
        return layers

    def features(self, x):
        """HRNetV2 features of float32 ``[B, H, W, 3]`` images.

        Returns float32 ``[B, ceil(H/4), ceil(W/4), 15 * width]``.
        """
        x = _apply(self.stage1, _apply(self.stem, tf.convert_to_tensor(x, tf.float32)))
        xs = [x]
        for transition, modules in zip(self.transitions, self.stages):
            xs = [_apply(path, xs[min(i, len(xs) - 1)]) for i, path in enumerate(transition)]
            xs = _apply(modules, xs)
        return tf.concat([xs[0]] + [_resize_to(t, xs[0]) for t in xs[1:]], axis=-1)

    def logits(self, x):
        """Class logits of float32 ``[B, H, W, 3]`` images.

        Returns float32 ``[B, ceil(H/4), ceil(W/4), num_classes]``.
        """
        return _apply(self.head, self.features(x))

    def count_params(self) -> int:
        """Total number of scalar values in the module's variables."""
        return sum(v.shape.num_elements() for v in self.variables)

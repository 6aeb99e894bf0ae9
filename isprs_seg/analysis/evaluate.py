"""How good is the map: a class raster scored against labels, with the ISPRS protocol.

Both rasters are read in bands of rows, so memory is bounded for rasters of any size.
For each pair a confusion matrix is counted (rows: label class, columns: predicted
class) twice: on every labelled pixel, and with the ISPRS protocol's *eroded* labels,
where a label pixel within ``erode`` pixels (Euclidean, a disc) of a pixel of another
label class is left out; the band of rows read carries ``erode`` rows of the labels
above and below it, so bands see across their borders. Label pixels that are nodata,
of an ignored class, or without a prediction (nodata in the prediction) are not scored;
a prediction of an ignored class on a scored label pixel is an error.

Labels are class-index rasters, or ISPRS colour-coded RGB rasters (each colour of the
ISPRS legend, :data:`isprs_seg.contract.CLASSES`, stands for its class). When the labels
do not lie on the prediction's grid they are resampled onto it by nearest neighbour
(reprojected if their CRS differs), with a note.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from rasterio.windows import Window

from .. import contract
from ..errors import InputError
from ..io.legend import class_ids, class_names
from ..io.raster import gdal_env, is_georeferenced, open_input

log = logging.getLogger("isprs_seg")

LABEL_FORMATS = ("auto", "index", "rgb")
#: Rows scored at once.
BAND_ROWS = 1024
#: Pixels within this radius of another label class are left out of the eroded scores (ISPRS).
DEFAULT_ERODE = 3
_NONE = -1  # a label pixel that is not scored


def disc(radius: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) of the pixels within ``radius`` of a pixel (Euclidean), itself excepted."""
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
            if 0 < dy * dy + dx * dx <= radius * radius]


def near_other_class(labels: np.ndarray, radius: int) -> np.ndarray:
    """Where a pixel of another class lies within ``radius`` (labels < 0 are no class and make no boundary)."""
    near = np.zeros(labels.shape, bool)
    h, w = labels.shape
    for dy, dx in disc(radius):
        a = labels[max(0, -dy): h - max(0, dy), max(0, -dx): w - max(0, dx)]  # the pixel
        b = labels[max(0, dy): h - max(0, -dy), max(0, dx): w - max(0, -dx)]  # its neighbour at (dy, dx)
        near[max(0, -dy): h - max(0, dy), max(0, -dx): w - max(0, dx)] |= (b >= 0) & (a >= 0) & (a != b)
    return near


@dataclass
class Scores:
    """A confusion matrix (``matrix[label, predicted]``) and the scores that follow from it."""

    names: list[str]
    matrix: np.ndarray
    ignored: tuple[int, ...] = ()

    def __add__(self, other: Scores) -> Scores:
        return Scores(self.names, self.matrix + other.matrix, self.ignored)

    def metrics(self) -> dict:
        """Per class precision, recall, F1 and IoU; overall accuracy, mean F1 and mean IoU.

        A class's score is None where it is undefined (no label, no prediction of it);
        the means are over the scored classes that have a defined score.
        """
        m = self.matrix.astype(np.float64)
        scored = [c for c in range(len(self.names)) if c not in self.ignored]
        rows = m[scored]  # label pixels of scored classes
        per_class = {}
        for c in scored:
            tp, fp, fn = m[c, c], rows[:, c].sum() - m[c, c], m[c].sum() - m[c, c]
            precision = tp / (tp + fp) if tp + fp else None
            recall = tp / (tp + fn) if tp + fn else None
            f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
            iou = tp / (tp + fp + fn) if tp + fp + fn else None
            per_class[self.names[c]] = {"precision": precision, "recall": recall, "f1": f1, "iou": iou,
                                        "support": int(m[c].sum())}
        total = rows.sum()
        f1s = [v["f1"] for v in per_class.values() if v["f1"] is not None]
        ious = [v["iou"] for v in per_class.values() if v["iou"] is not None]
        return {
            "pixels": int(total),
            "overall_accuracy": float(np.trace(m[np.ix_(scored, scored)]) / total) if total else None,
            "mean_f1": float(np.mean(f1s)) if f1s else None,
            "mean_iou": float(np.mean(ious)) if ious else None,
            "classes": per_class,
        }


@dataclass
class Evaluation:
    """The scores of one prediction (or of several, pooled)."""

    prediction: str
    labels: str
    all: Scores
    eroded: Scores
    erode: int
    unpredicted: int = 0  # scored label pixels where the prediction is nodata
    notes: list[str] = field(default_factory=list)

    def __add__(self, other: Evaluation) -> Evaluation:
        return Evaluation("pooled", "pooled", self.all + other.all, self.eroded + other.eroded, self.erode,
                          self.unpredicted + other.unpredicted)

    def as_dict(self) -> dict:
        return {"prediction": self.prediction, "labels": self.labels, "erode": self.erode,
                "unpredicted_pixels": self.unpredicted, "notes": self.notes,
                "confusion_matrix": self.all.matrix.tolist(), "eroded_confusion_matrix": self.eroded.matrix.tolist(),
                "classes": self.all.names, "ignored": [self.all.names[c] for c in self.all.ignored],
                "all": self.all.metrics(), "eroded": self.eroded.metrics()}


def parse_ignore(text: str | Sequence | None, names: Sequence[str]) -> tuple[int, ...]:
    """``"background"``, ``"0,6"``, ``"none"`` -> class ids."""
    if text is None or str(text).strip().lower() == "none":
        return ()
    return class_ids(text, names, "--ignore")


class _Labels:
    """The labels as class ids on the prediction's grid, in bands of rows (< 0: not a label)."""

    def __init__(self, path: str, pred, fmt: str, classes: int):
        from rasterio.vrt import WarpedVRT

        self.src = open_input(path)
        self.notes: list[str] = []
        self.view = self.src
        same = (self.src.width, self.src.height) == (pred.width, pred.height)
        if is_georeferenced(self.src) and is_georeferenced(pred):
            same = same and self.src.crs == pred.crs and self.src.transform.almost_equals(pred.transform)
        if not same:
            if not (is_georeferenced(self.src) and is_georeferenced(pred)):
                raise InputError(f"{path} is {self.src.width} x {self.src.height} px and {pred.name} "
                                 f"{pred.width} x {pred.height} px, and without georeferencing they cannot be aligned")
            how = "reprojected" if self.src.crs != pred.crs else "resampled"
            self.notes.append(f"{path} does not lie on the grid of {pred.name}: {how} onto it by nearest neighbour")
            self.view = WarpedVRT(self.src, crs=pred.crs, transform=pred.transform, width=pred.width,
                                  height=pred.height, resampling=0)
        self.fmt = _label_format(self.src, fmt)
        self.classes = classes
        if self.fmt == "rgb":
            colours = np.full(256 ** 3, _NONE, np.int16)
            for c in contract.CLASSES:
                r, g, b = c.color
                colours[(r << 16) | (g << 8) | b] = c.index
            self.colours = colours

    def rows(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Class ids of rows ``[first, first + count)`` and where a valid label is no class of
        the prediction (or no ISPRS colour); both are set to -1 in the ids."""
        window = Window(0, first, self.view.width, count)
        valid = self.view.dataset_mask(window=window) > 0
        if self.fmt == "rgb":
            rgb = self.view.read([1, 2, 3], window=window).astype(np.int64)
            labels = self.colours[(rgb[0] << 16) | (rgb[1] << 8) | rgb[2]].astype(np.int64)
            unknown = valid & (labels < 0)
        else:
            labels = self.view.read(1, window=window).astype(np.int64)
            unknown = valid & ((labels < 0) | (labels >= self.classes))
        labels[unknown | ~valid] = _NONE
        return labels, unknown

    def close(self) -> None:
        if self.view is not self.src:
            self.view.close()
        self.src.close()


def _label_format(src, fmt: str) -> str:
    if fmt != "auto":
        if fmt == "rgb" and src.count < 3:
            raise InputError(f"{src.name} has {src.count} band(s): colour-coded labels need three (R, G, B)")
        return fmt
    return "rgb" if src.count >= 3 else "index"


def evaluate(prediction: str | os.PathLike, labels: str | os.PathLike, *, erode: int = DEFAULT_ERODE,
             ignore: str | Sequence | None = "background", labels_format: str = "auto",
             band_rows: int = BAND_ROWS) -> Evaluation:
    """Score one class raster against its labels (see the module docstring).

    ``ignore``: label classes left out of the scores, by name or id (default
    ``background``, which the ISPRS benchmark does not score); ``"none"`` scores all.
    """
    if labels_format not in LABEL_FORMATS:
        raise InputError(f"--labels-format must be one of {', '.join(LABEL_FORMATS)}, got {labels_format!r}")
    if erode < 0:
        raise InputError(f"--erode must be a number of pixels, at least 0, got {erode}")
    with gdal_env(), open_input(prediction) as pred:
        if pred.count != 1:
            raise InputError(f"{prediction} is not a class raster (it has {pred.count} bands)")
        names = class_names(pred)
        k = len(names)
        ignored = parse_ignore(ignore, names)
        truth = _Labels(str(labels), pred, labels_format, k)
        try:
            matrices = [np.zeros((k, k), np.int64), np.zeros((k, k), np.int64)]
            unpredicted = unknown = 0
            for top in range(0, pred.height, band_rows):
                rows = min(band_rows, pred.height - top)
                first, last = max(0, top - erode), min(pred.height, top + rows + erode)
                label_band, unknown_band = truth.rows(first, last - first)
                core = slice(top - first, top - first + rows)
                near = near_other_class(label_band, erode)[core] if erode else None
                label = label_band[core]
                unknown += int(unknown_band[core].sum())
                predicted = pred.read(1, window=Window(0, top, pred.width, rows)).astype(np.int64)
                scored = (label >= 0) & ~np.isin(label, ignored)
                unpredicted += int((scored & (predicted >= k)).sum())
                scored &= predicted < k
                for matrix, keep in ((matrices[0], scored), (matrices[1], scored & ~near if erode else scored)):
                    matrix += np.bincount(label[keep] * k + predicted[keep], minlength=k * k).reshape(k, k)
            notes = truth.notes
            if unknown:
                what = "colours of no ISPRS class" if truth.fmt == "rgb" else "classes the prediction does not have"
                notes.append(f"{labels}: {unknown} label pixels hold {what} and are not scored")
        finally:
            truth.close()
    for note in notes:
        log.info("%s", note)
    return Evaluation(str(prediction), str(labels), Scores(names, matrices[0], ignored),
                      Scores(names, matrices[1], ignored), erode, unpredicted, notes)


def table(evaluation: Evaluation) -> str:
    """A readable report of one evaluation: per-class scores and the summary, both protocols."""
    lines = [f"{evaluation.prediction} against {evaluation.labels}"]
    if evaluation.unpredicted:
        lines.append(f"  {evaluation.unpredicted} labelled pixels have no prediction (nodata) and are not scored")
    for title, scores in (("all pixels", evaluation.all), (f"eroded boundaries ({evaluation.erode} px)",
                                                           evaluation.eroded)):
        metrics = scores.metrics()
        lines.append(f"  {title}: {metrics['pixels']} pixels")
        lines.append(f"    {'class':22s} {'precision':>9s} {'recall':>9s} {'F1':>9s} {'IoU':>9s} {'pixels':>11s}")
        for name, v in metrics["classes"].items():
            cells = " ".join(f"{v[k]:9.4f}" if v[k] is not None else f"{'-':>9s}"
                             for k in ("precision", "recall", "f1", "iou"))
            lines.append(f"    {name:22s} {cells} {v['support']:11d}")
        summary = ", ".join(f"{label} {metrics[key]:.4f}" if metrics[key] is not None else f"{label} -"
                            for label, key in (("overall accuracy", "overall_accuracy"), ("mean F1", "mean_f1"),
                                               ("mean IoU", "mean_iou")))
        lines.append(f"    {summary}")
    return "\n".join(lines)


def figure(evaluation: Evaluation, path: Path) -> None:
    """The confusion matrix normalised by row (each label class sums to 1), as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--figure draws with matplotlib, which is not installed: pip install 'isprs-seg[plot]'") \
            from None
    scores = evaluation.eroded if evaluation.erode else evaluation.all
    keep = [c for c in range(len(scores.names)) if c not in scores.ignored]
    m = scores.matrix[np.ix_(keep, range(len(scores.names)))].astype(np.float64)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.7 * len(scores.names)
    fig, ax = plt.subplots(figsize=(size, size * len(keep) / len(scores.names) + 1))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(share.shape[0]):
        for j in range(share.shape[1]):
            ax.text(j, i, f"{share[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(scores.names)), scores.names, rotation=45, ha="right")
    ax.set_yticks(range(len(keep)), [scores.names[c] for c in keep])
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    protocol = f"eroded boundaries ({evaluation.erode} px)" if evaluation.erode else "all pixels"
    ax.set_title(f"{Path(evaluation.prediction).name}: confusion by label class, {protocol}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

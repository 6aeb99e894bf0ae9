"""What GIS programs show of a class raster: class names, colours, a legend.

Two files beside each class raster ``NAME.tif``:

``NAME.tif.aux.xml``
    GDAL's auxiliary metadata (PAM): the band's category names and a thematic raster
    attribute table (value, class name, red, green, blue, alpha). GeoTIFF has no place
    for these inside the file; GDAL, ``gdalinfo``, QGIS and ArcGIS read them from here.
``NAME.qml``
    A QGIS layer style that QGIS loads by itself when it opens ``NAME.tif``: a paletted
    renderer with the class colours and names; nodata (not in the palette) is
    transparent.

Pure text, no GDAL: the formats are those GDAL and QGIS write themselves. Also the one
place that reads class names back from a class raster and parses lists of classes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

from .. import contract
from ..errors import InputError

#: GDAL raster attribute table field types and usages (gdal.h: GDALRATFieldType, GDALRATFieldUsage).
_INTEGER, _STRING = 0, 2
_MIN_MAX, _NAME, _RED, _GREEN, _BLUE, _ALPHA = 5, 2, 6, 7, 8, 9


def class_names(src) -> list[str]:
    """The class names of a class raster (its ``CLASS_NAMES`` tag), else the model's."""
    names = src.tags().get("CLASS_NAMES")
    return names.split(",") if names else list(contract.CLASS_NAMES)


def class_ids(text: str | Sequence | None, names: Sequence[str], option: str) -> tuple[int, ...] | None:
    """``"building,car"`` or ``"2,5"`` -> (2, 5); None (every class) stays None; ``option`` names
    the option in the sentence about a class that does not exist."""
    if text is None:
        return None
    items = [str(item).strip() for item in (text.split(",") if isinstance(text, str) else text)]
    ids = []
    for item in items:
        if item.isdigit() and int(item) < len(names):
            ids.append(int(item))
        elif item in names:
            ids.append(names.index(item))
        else:
            raise InputError(f"{option}: no class {item!r}; the classes are {', '.join(names)}")
    return tuple(sorted(set(ids)))


def pam_path(raster: Path) -> Path:
    """``NAME.tif`` -> ``NAME.tif.aux.xml``, where GDAL looks for auxiliary metadata."""
    return raster.with_name(raster.name + ".aux.xml")


def style_path(raster: Path) -> Path:
    """``NAME.tif`` -> ``NAME.qml``, the style QGIS loads with the layer."""
    return raster.with_suffix(".qml")


def _sub(parent: ET.Element, tag: str, text: object | None = None, **attributes) -> ET.Element:
    node = ET.SubElement(parent, tag, {k: str(v) for k, v in attributes.items()})
    if text is not None:
        node.text = str(text)
    return node


def pam_xml(names: Sequence[str], colors: Sequence[tuple[int, int, int]]) -> str:
    """Category names and a thematic attribute table for band 1 of a class raster."""
    root = ET.Element("PAMDataset")
    band = _sub(root, "PAMRasterBand", band=1)
    categories = _sub(band, "CategoryNames")
    for name in names:
        _sub(categories, "Category", name)
    table = _sub(band, "GDALRasterAttributeTable", tableType="thematic")
    fields = (("value", _INTEGER, _MIN_MAX), ("class", _STRING, _NAME), ("red", _INTEGER, _RED),
              ("green", _INTEGER, _GREEN), ("blue", _INTEGER, _BLUE), ("alpha", _INTEGER, _ALPHA))
    for index, (name, kind, usage) in enumerate(fields):
        field = _sub(table, "FieldDefn", index=index)
        _sub(field, "Name", name)
        _sub(field, "Type", kind)
        _sub(field, "Usage", usage)
    for value, (name, color) in enumerate(zip(names, colors)):
        row = _sub(table, "Row", index=value)
        for cell in (value, name, *color, 255):
            _sub(row, "F", cell)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def qgis_style(names: Sequence[str], colors: Sequence[tuple[int, int, int]]) -> str:
    """A QGIS layer style (``.qml``): a paletted renderer of band 1 with the class colours and names."""
    root = ET.Element("qgis", version="3.22.0", styleCategories="Symbology")
    pipe = _sub(root, "pipe")
    renderer = _sub(pipe, "rasterrenderer", type="paletted", band=1, opacity=1, alphaBand=-1, nodataColor="")
    _sub(renderer, "rasterTransparency")
    palette = _sub(renderer, "colorPalette")
    for value, (name, (r, g, b)) in enumerate(zip(names, colors)):
        _sub(palette, "paletteEntry", value=value, color=f"#{r:02x}{g:02x}{b:02x}", alpha=255, label=name)
    _sub(pipe, "brightnesscontrast", brightness=0, contrast=0, gamma=1)
    _sub(pipe, "huesaturation", saturation=0, grayscaleMode=0, colorizeOn=0, colorizeStrength=100)
    _sub(pipe, "rasterresampler", maxOversampling=2)
    _sub(root, "blendMode", 0)
    ET.indent(root)
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, encoding="unicode") + "\n"


def write_legend(pam: Path, style: Path, names: Sequence[str], colors: Sequence[tuple[int, int, int]]) -> None:
    """Write both files (to the given paths: temporaries until the outputs are committed)."""
    pam.write_text(pam_xml(names, colors), encoding="utf-8")
    style.write_text(qgis_style(names, colors), encoding="utf-8")

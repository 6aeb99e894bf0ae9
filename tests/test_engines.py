"""The seams between the parts: products name their settings once, engines check before they
work, runs travel as plain data, and GDAL defaults give way to the caller's.

(The engines' identical outputs are tested in ``tests/test_cluster.py``.)
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import rasterio

from isprs_seg.errors import ModelError
from isprs_seg.io.outputs import output_paths
from isprs_seg.io.provenance import run_settings
from isprs_seg.io.raster import GDAL_SETTINGS, gdal_env
from isprs_seg.options import InputOptions, RunOptions
from isprs_seg.products import Classes, Features
from isprs_seg.runs.engine import ModelFacts, RunSpec
from isprs_seg.runs.local import LocalEngine

FACTS = ModelFacts("stand-in", "sha256:" + "0" * 64, "float32", 4, 7, None, tuple("abcdefg"),
                   ((0, 0, 0),) * 7, "CPU")

#: Every setting of each product, with another value it may take.
OTHER_VALUES = {
    Classes: {"probabilities_dtype": "uint8", "confidence": "margin", "vector": "building"},
    Features: {"dtype": "float32", "pool": "20m"},
}
ASKED = {Classes: Classes(True, "float32", "max", "all"), Features: Features("float16", "10m", preview="p.png")}


@pytest.mark.parametrize("kind", [Classes, Features], ids=lambda k: k.__name__)
def test_each_pixel_setting_changes_the_record_of_exactly_the_outputs_it_changes(kind, tmp_path):
    product = ASKED[kind]
    roles = [product.main, *product.roles(), *product.given()]
    assert set(roles) <= set(product.ROLE_SETTINGS), "every output a product writes says what changes it"
    named = {name for names in product.ROLE_SETTINGS.values() for name in names}
    assert set(product.pixel_settings()) == named == set(OTHER_VALUES[kind]), "one list, and it is complete"

    def record(p):
        finals = output_paths(tmp_path / "in.tif", p.main, p.roles(), given=p.given(), out_dir=tmp_path)
        return run_settings(FACTS, RunOptions(), InputOptions(), finals, p)

    before = record(product)
    for name, value in OTHER_VALUES[kind].items():
        after = record(dataclasses.replace(product, **{name: value}))
        changed = {role for role in before if before[role] != after[role]}
        assert changed == {role for role, names in product.ROLE_SETTINGS.items() if name in names and role in before}


class _Described:
    """A model as far as the checks see it: its description, and a failure when used."""

    def __init__(self, **fields):
        self.facts = dataclasses.replace(FACTS, **fields)

    def __getattr__(self, name):
        if name in {f.name for f in dataclasses.fields(ModelFacts)}:
            return getattr(self.facts, name)
        raise AssertionError(f"the model was used ({name}) before it was checked")


@pytest.mark.parametrize("product,fields,said", [
    (Features(), {"feature_channels": None}, "has no get_features method, so it cannot produce features"),
    (Classes(), {"num_classes": 300}, "has 300 classes, more than the 255 a class raster holds"),
])
def test_the_local_engine_checks_the_product_before_it_opens_anything(product, fields, said, tmp_path):
    engine = LocalEngine(_Described(**fields))
    with pytest.raises(ModelError, match=said):
        engine.describe(product)
    finals = output_paths(tmp_path / "absent.tif", product.main, product.roles(), out_dir=tmp_path)
    with pytest.raises(ModelError, match=said):  # not "absent.tif does not exist": the model is refused first
        engine.run(RunSpec(product, str(tmp_path / "absent.tif"), finals, RunOptions(), InputOptions()))
    assert list(tmp_path.iterdir()) == []


def test_a_run_travels_as_plain_data(tmp_path):
    product = Features("float32", "256px", cog=True, preview=str(tmp_path / "p.png"))
    finals = output_paths(tmp_path / "in.tif", product.main, product.roles(), given=product.given(), out_dir=tmp_path)
    spec = RunSpec(product, str(tmp_path / "in.tif"), finals, RunOptions(512, 64, 2, "crop"), InputOptions(gsd=0.1))
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert list(spec.finals)[-1] == "features" and set(spec.finals) == {"pooled", "preview", "features"}


def test_gdal_defaults_step_aside_for_the_callers_own_env(monkeypatch):
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "9")
    with gdal_env():
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] == GDAL_SETTINGS["GDAL_CACHEMAX"]
        assert "GDAL_HTTP_MAX_RETRY" not in rasterio.env.getenv(), "the process environment's own setting"
    with rasterio.Env(GDAL_CACHEMAX=1 << 30, GDAL_HTTP_TIMEOUT=5):
        with gdal_env():
            options = rasterio.env.getenv()
            assert options["GDAL_CACHEMAX"] == 1 << 30 and options["GDAL_HTTP_TIMEOUT"] == 5
            assert options["GDAL_HTTP_LOW_SPEED_TIME"] == GDAL_SETTINGS["GDAL_HTTP_LOW_SPEED_TIME"]
        assert "GDAL_HTTP_LOW_SPEED_TIME" not in rasterio.env.getenv(), "ours end with the block"


def test_outputs_of_a_product_are_named_as_the_command_line_names_them(tmp_path):
    classes = Classes(probabilities=tmp_path / "p.tif", confidence="max")
    finals = output_paths(Path("a/in.tif"), classes.main, classes.roles(), given=classes.given(), out_dir=tmp_path)
    assert finals["probabilities"] == tmp_path / "p.tif"
    assert finals["classes"] == tmp_path / "in.classes.tif" and finals["confidence"].name == "in.confidence.tif"

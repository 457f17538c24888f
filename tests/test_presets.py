"""Presets state only what differs from their method's and form's defaults, and each resolves
to the published settings it was written from (tests/data/presets_published.json: every
preset's settings stated in full)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ddm.config import (
    CondenseConfig,
    available_presets,
    check_settings,
    load_preset,
    restated_defaults,
)

PUBLISHED = json.loads((Path(__file__).parent / "data" / "presets_published.json").read_text())


def test_every_preset_is_pinned():
    assert sorted(PUBLISHED) == available_presets()


@pytest.mark.parametrize("name", available_presets())
def test_preset_resolves_to_its_published_settings(name):
    stated = load_preset(name)["settings"]
    assert CondenseConfig(**stated).resolved() == CondenseConfig(**PUBLISHED[name]).resolved()


@pytest.mark.parametrize("name", available_presets())
def test_preset_restates_no_default(name):
    preset = load_preset(name)
    assert restated_defaults(preset["settings"], preset.get("per_setting", ())) == []


def test_restated_defaults_finds_what_the_form_fills():
    released = {"dataset": "cifar10", "method": "ddm", "form": "released"}
    assert restated_defaults({**released, "w_mm": 180.0, "w_cd": 31.0}) == ["w_mm"]
    assert restated_defaults({**released, "lr_img": 1.0, "iterations": 20000}) == [
        "lr_img",
        "iterations",
    ]
    # a setting the method needs is kept even where it equals nothing filled
    ncfm = {"dataset": "cifar10", "method": "ncfm", "pool": "p", "init": "real"}
    assert restated_defaults(ncfm) == ["init"]
    # what names the preset, and what its source lists per setting, stays
    idm = {"dataset": "cifar10", "method": "idm", "base": "idm", "ipc": 10, "ce_weight": 0.5}
    assert restated_defaults(idm) == ["ce_weight"]
    assert restated_defaults(idm, keep=("ce_weight",)) == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ipcs": 10}, "unknown setting(s) ipcs"),
        ({"ipc": "ten"}, "ipc: expected an integer"),
        ({"w_mm": True}, "w_mm: expected a number"),
        ({"dsa": "yes"}, "dsa: expected true or false"),
        ({"precision": "fp16"}, "precision: expected one of auto, fp32, bf16"),
    ],
)
def test_preset_values_are_checked_by_their_fields(settings, message):
    with pytest.raises(ValueError, match="preset p: .*" + re.escape(message)):
        check_settings(CondenseConfig, settings, "preset p")
    check_settings(CondenseConfig, {"ipc": 10, "w_mm": 1e4, "dsa": False, "depth": None}, "p")

"""Each setting is declared once: its field carries the flag, and every command, the config-file
loader and continual's derived settings read it from there."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from ddm.cli import build_parser
from ddm.cli.flags import add_flags, values_from
from ddm.config import CondenseConfig, EvalConfig
from ddm.continual import _SET_BY_CONTINUAL, ContinualConfig, _prepare
from ddm.diagnose import DiagnoseConfig
from ddm.pool import PoolConfig
from ddm.settings import BY_METHOD, flag_spec, flag_specs, parse_bool, setting, shared
from ddm.teacher import TeacherConfig

SRC = Path(__file__).resolve().parent.parent / "src" / "ddm"


@dataclasses.dataclass(frozen=True)
class _Toy:
    batch_real: int = setting(8, help="real images")
    w_mm: float | None = setting(None, help="a weight", shown=BY_METHOD)
    dsa: bool = setting(True, help="augment")
    mode: str = setting("a", help="a mode", choices=("a", "b"), flag="toy-mode", aliases=("mode",))
    fast: bool = setting(False, help="go fast", switch=True)
    note: str | None = None  # no flag


@dataclasses.dataclass(frozen=True)
class _Other:
    size: int = shared(_Toy, "batch_real", 3, help="other images")


def test_flag_spec_reads_the_field():
    spec = flag_spec(_Toy, "batch_real")
    assert (spec.flag, spec.kind, spec.parse, spec.default, spec.optional) == (
        "batch-real",
        int,
        int,
        8,
        False,
    )
    assert spec.help_text() == "real images (default: 8)"
    weight = flag_spec(_Toy, "w_mm")
    assert (weight.kind, weight.optional, weight.help_text()) == (
        float,
        True,
        "a weight (default: by method)",
    )
    assert flag_spec(_Toy, "dsa").parse is parse_bool and flag_spec(_Toy, "dsa").shown == "true"
    assert [s.name for s in flag_specs(_Toy)] == ["batch_real", "w_mm", "dsa", "mode", "fast"]
    with pytest.raises(KeyError, match="declares no flag"):
        flag_spec(_Toy, "note")
    other = flag_spec(_Other, "size")
    # the other class's field name, its own default and help; the type and parser carried over
    assert (other.flag, other.help, other.default, other.kind) == ("size", "other images", 3, int)


def test_add_flags_builds_argparse_arguments():
    p = argparse.ArgumentParser()
    add_flags(p, _Toy)
    args = p.parse_args(["--batch-real", "3", "--dsa", "no", "--mode", "b", "--fast"])
    assert values_from(args, _Toy) == {
        "batch_real": 3,
        "w_mm": None,
        "dsa": False,
        "mode": "b",
        "fast": True,
    }
    assert p.parse_args(["--toy-mode", "b"]).toy_mode == "b"  # the alias and the flag
    with pytest.raises(SystemExit):
        p.parse_args(["--toy-mode", "c"])  # choices
    quiet = argparse.ArgumentParser()
    add_flags(quiet, _Toy, only=("batch_real",), suppress=True)
    assert values_from(quiet.parse_args([]), _Toy) == {}  # only what is typed


def test_every_condense_field_is_a_condense_flag():
    """A new CondenseConfig field carries its flag, and `ddm condense` has it: one place."""
    condense = build_parser()._subparsers._group_actions[0].choices["condense"]
    flags = {o for a in condense._actions for o in a.option_strings}
    for f in dataclasses.fields(CondenseConfig):
        assert "flag" in f.metadata, f"CondenseConfig.{f.name} declares no flag"
        assert f"--{flag_spec(CondenseConfig, f.name).flag}" in flags


@pytest.mark.parametrize("cls", [CondenseConfig, EvalConfig, DiagnoseConfig, PoolConfig])
def test_flag_defaults_are_the_dataclass_defaults(cls):
    for spec in flag_specs(cls):
        assert spec.default == getattr(cls(), spec.name)


def test_by_method_defaults_are_shown_from_the_forms():
    help_text = flag_spec(CondenseConfig, "w_mm").help_text()
    assert help_text == "DDM moments weight (default: by form: paper 10000, released 180)"
    assert "by base: dm 1, idm 0.2, ncfm 0.001" in flag_spec(CondenseConfig, "lr_img").shown
    assert flag_spec(TeacherConfig, "seed").help == flag_spec(CondenseConfig, "seed").help


def test_continual_derives_its_condensation_and_evaluation_settings():
    """Every condensation setting continual has a flag for reaches each step's CondenseConfig;
    the evaluation's reach its EvalConfig."""
    assert {
        "dataset",
        "data_root",
        "image_size",
        "ipc",
        "method",
        "base",
        "iterations",
        "batch_real",
        "form",
        "w_mm",
        "w_cm",
        "w_icd",
        "seed",
        "device",
    } == _SET_BY_CONTINUAL
    changed = {
        "data_root": "/data",
        "image_size": 16,
        "ipc": 3,
        "method": "ddm",
        "base": "idm",
        "iterations": 7,
        "batch_real": 9,
        "form": "released",
        "w_mm": 1.5,
        "w_cm": 2.5,
        "w_icd": 3.5,
        "seed": 4,
        "device": "cpu",
    }
    settings = ContinualConfig(dataset="digits", **changed, condense={"model_lr": 0.5})
    cfg = settings.condense_config("digits-part")
    assert cfg.dataset == "digits-part" and cfg.model_lr == 0.5
    for key, value in changed.items():
        assert getattr(cfg, key) == value, key
    ecfg = ContinualConfig(runs=2, epochs=9, eval_precision="bf16", device="cpu").eval_config(0, 1)
    assert (ecfg.runs, ecfg.epochs, ecfg.precision, ecfg.device) == (2, 9, "bf16", "cpu")


# a continual run's saved settings (config.json's "continual" section), as runs wrote them
OLD_CONTINUAL = {
    "dataset": "digits",
    "data_root": None,
    "image_size": None,
    "method": "ddm",
    "steps": 2,
    "ipc": 2,
    "orders": 1,
    "runs": 1,
    "epochs": 2,
    "eval_precision": "fp32",
    "iterations": 3,
    "batch_real": 256,
    "base": None,
    "form": None,
    "w_mm": None,
    "w_cm": None,
    "w_icd": None,
    "herding_epochs": 2,
    "seed": 0,
    "device": "auto",
    "condense": None,
}


def test_old_continual_config_loads_and_continues(tmp_path):
    from ddm.io import atomic_write_json

    settings = ContinualConfig(**OLD_CONTINUAL)
    assert settings.to_dict() == OLD_CONTINUAL  # the same keys are written
    atomic_write_json(tmp_path / "config.json", {"continual": OLD_CONTINUAL, "version": "0"})
    entry = {"order": 0, "step": 1, "classes_seen": 5, "classes": [0], "accuracies": [1.0]}
    atomic_write_json(tmp_path / "progress.json", {"entries": [entry]})
    assert _prepare(tmp_path, {"continual": settings.to_dict()}, overwrite=False) == [entry]
    # the continual command reads the same settings from its flags
    argv = ["continual", "--dataset", "digits", "--method", "ddm", "--steps", "2", "--ipc", "2"]
    argv += ["--orders", "1", "--runs", "1", "--epochs", "2", "--eval-precision", "fp32"]
    args = build_parser().parse_args([*argv, "--iterations", "3", "--out", str(tmp_path)])
    assert ContinualConfig(**values_from(args, ContinualConfig)) == settings


def test_library_modules_do_not_import_argparse():
    for path in sorted(SRC.rglob("*.py")):
        if "cli" in path.relative_to(SRC).parts:
            continue
        assert not re.search(r"^\s*(import argparse|from argparse)", path.read_text(), re.M), path


def test_benchmarks_build_runs_through_public_names():
    root = SRC.parent.parent / "benchmarks"
    for path in sorted(root.glob("*.py")):
        text = path.read_text()
        for line in re.findall(
            r"^\s*from ddm\.(?:condense|bases|objective) import .*$", text, re.M
        ):
            names = [n.strip() for n in line.split(" import ", 1)[1].strip("()").split(",")]
            assert not [n for n in names if n.startswith("_")], f"{path.name}: {line}"
        assert not re.search(r"\b_Run\b|\b_new_net\b", text), path.name

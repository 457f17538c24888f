"""--config FILE: layering, saved config.json files as configs, every key and type checked."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from ddm.cli import _condense_config, main, parse_command_line
from ddm.cli.configfile import apply_config_file, config_settings
from ddm.config import CondenseConfig, parse_overrides
from ddm.continual import ContinualConfig
from ddm.io import load_synthetic, read_json


def ddm(*args: str) -> int:
    return main(["--quiet", *args])


def _write(path, text: str):
    path.write_text(text)
    return str(path)


def test_file_sits_between_preset_and_flags(tmp_path):
    cfg_file = _write(
        tmp_path / "run.yaml",
        "# YAML 1.1 reads 1e4 as a string: still a number here\n"
        "batch-real: 16\nipc: 2\niterations: 3\nw_mm: 1e4\nmethod: ddm\ndsa: no\nbf16: true\n",
    )
    args = parse_command_line(["condense", "--config", cfg_file, "--ipc", "3", "--out", "x"])
    cfg = _condense_config(args)
    assert (cfg.batch_real, cfg.iterations, cfg.method) == (16, 3, "ddm")
    assert cfg.ipc == 3  # the explicit flag wins over the file
    assert cfg.w_mm == 1e4 and isinstance(cfg.w_mm, float) and cfg.dsa is False
    assert cfg.precision == "bf16"  # the deprecated bf16 switch
    # preset < file < flags
    args = parse_command_line(
        ["condense", "--preset", "idm-cifar10-ipc1", "--config", cfg_file, "--out", "x"]
    )
    cfg = _condense_config(args)
    assert cfg.method == "ddm" and cfg.batch_real == 16  # the file over the preset
    assert cfg.net_generate_interval == 5  # the preset where the file says nothing
    # the file may name the preset itself
    args = parse_command_line(
        ["condense", "--config", _write(tmp_path / "p.json", '{"preset": "idm-cifar10-ipc1"}')]
        + ["--out", "x"]
    )
    assert _condense_config(args).method == "idm"


def test_saved_config_json_repeats_a_condensation_exactly(tmp_path):
    first, again = tmp_path / "a", tmp_path / "b"
    flags = ["--dataset", "digits", "--batch-real", "16", "--ipc", "1", "--iterations", "2"]
    assert ddm("condense", *flags, "--method", "ddm", "--w-cm", "0", "--out", str(first)) == 0
    assert ddm("condense", "--config", str(first / "config.json"), "--out", str(again)) == 0
    assert read_json(first / "config.json") == read_json(again / "config.json")
    assert torch.equal(load_synthetic(first).images, load_synthetic(again).images)


def test_saved_baseline_config_repeats_the_selection(tmp_path):
    first, again = tmp_path / "a", tmp_path / "b"
    assert ddm("baseline", "--ipc", "2", "--seed", "3", "--out", str(first)) == 0
    assert ddm("baseline", "--config", str(first / "config.json"), "--out", str(again)) == 0
    assert torch.equal(load_synthetic(first).images, load_synthetic(again).images)
    args = parse_command_line(
        ["baseline", "--config", _write(tmp_path / "h.yaml", "method: herding\nherding_epochs: 1")]
        + ["--out", "x"]
    )
    assert (args.method, args.herding_epochs, args.ipc) == ("herding", 1, 10)


def test_evaluate_settings_from_a_file(tmp_path):
    f = _write(tmp_path / "e.yml", "epochs: 3\nruns: 2\nmodel: mlp\neval-seed: 4\nsyn-mean: 0.5\n")
    args = parse_command_line(["evaluate", "RUN", "--config", f, "--runs", "1"])
    assert (args.epochs, args.runs, args.model, args.eval_seed) == (3, 1, "mlp", 4)
    assert args.syn_mean == [0.5] and args.runs_dirs == ["RUN"]


def test_saved_continual_config_is_a_config(tmp_path):
    settings = ContinualConfig(
        dataset="digits", method="idm", steps=2, ipc=1, condense={"model_train_steps": 5}
    )
    saved = {
        "continual": settings.to_dict(),
        "condense": {"dataset": "digits", "ipc": 1},  # resolved outputs: ignored
        "evaluation": {"epochs": 1000},
        "dataset": {"name": "digits", "num_classes": 10},
        "version": "0.1.0",
    }
    f = _write(tmp_path / "config.json", json.dumps(saved))
    args = parse_command_line(
        ["continual", "--config", f, "--set", "model_batch=64", "--steps", "5", "--out", "x"]
    )
    assert (args.dataset, args.method, args.ipc, args.steps) == ("digits", "idm", 1, 5)
    assert parse_overrides(args.set) == {"model_train_steps": 5, "model_batch": 64}
    # a hand-written file: --set as a mapping, choices checked
    f = _write(tmp_path / "c.yaml", "method: ddm\nset: {model_batch: 32, dsa: false}\n")
    args = parse_command_line(["continual", "--config", f, "--out", "x"])
    assert parse_overrides(args.set) == {"model_batch": 32, "dsa": False}


def test_fields_added_to_the_dataclass_are_keys_without_a_flag():
    """A field the CLI has no flag for (e.g. a new loss weight) works in files at once."""
    extended = dataclasses.make_dataclass(
        "Extended", [("w_new", "float | None", None)], bases=(CondenseConfig,), frozen=True
    )
    parser = argparse.ArgumentParser()
    assert "w_new" not in config_settings(parser, CondenseConfig)
    assert config_settings(parser, extended)["w_new"].type is float
    # every CondenseConfig field is a condense key, whether or not it has a flag
    keys = config_settings(parser, CondenseConfig)
    assert {f.name for f in dataclasses.fields(CondenseConfig)} <= set(keys)


def test_new_field_value_is_checked_and_set(tmp_path):
    extended = dataclasses.make_dataclass(
        "Extended", [("w_new", "float | None", None)], bases=(CondenseConfig,), frozen=True
    )
    parser = argparse.ArgumentParser()
    f = _write(tmp_path / "n.yaml", "w-new: 3\n")
    assert apply_config_file(parser, f, command="condense", fields=extended) == {"w_new": 3.0}
    assert parser.parse_args([]).w_new == 3.0
    bad = _write(tmp_path / "m.yaml", "w-new: x\n")
    with pytest.raises(ValueError, match="w-new: expected a number, got 'x'"):
        apply_config_file(parser, bad, command="condense", fields=extended)


@pytest.mark.parametrize(
    ("command", "text", "name", "message"),
    [
        ("condense", "ipc: ten\n", "c.yaml", "ipc: expected an integer, got 'ten'"),
        ("condense", "ipc: 2.5\n", "c.yaml", "ipc: expected an integer, got 2.5"),
        ("condense", "dsa: 1\n", "c.yaml", "dsa: expected true or false, got 1"),
        ("condense", "ipc: null\n", "c.yaml", "ipc: expected an integer, got null"),
        ("condense", "batch-rael: 4\n", "c.yaml", "unknown setting(s) batch-rael"),
        ("condense", "batch-rael: 4\n", "c.yaml", "did you mean batch_real?"),
        ("condense", "ipc: 1\nipc-: 2\n", "c.yaml", "unknown setting(s) ipc-"),
        ("condense", "out: runs/x\n", "c.yaml", "give --out on the command line"),
        ("condense", '{"ipc": 2, "ipc": "x"}', "c.json", "'ipc' is given twice"),
        ("condense", "ipc: [1\n", "c.yaml", "not valid YAML"),
        ("condense", "{ipc: 2}", "c.json", "not valid JSON"),
        ("condense", "- ipc\n", "c.yaml", "expected a mapping of settings"),
        ("condense", "ipc: 2\n", "c.toml", "expected a .json, .yaml or .yml file"),
        ("evaluate", "epochs: many\n", "e.yaml", "epochs: expected an integer, got 'many'"),
        ("evaluate", "quiet: true\n", "e.yaml", "unknown setting(s) quiet for `ddm evaluate`"),
        ("baseline", "ipc: '2x'\n", "b.yaml", "ipc: expected an integer, got '2x'"),
        ("continual", "method: gm\n", "k.yaml", "method: expected one of random, herding"),
        ("continual", "set: [1, 2]\n", "k.yaml", "set: expected a string"),
    ],
)
def test_bad_config_files_exit_2_with_one_line(tmp_path, capsys, command, text, name, message):
    f = _write(tmp_path / name, text)
    positional = ["RUN"] if command == "evaluate" else []
    out = [] if command == "evaluate" else ["--out", str(tmp_path / "o")]
    assert ddm(command, *positional, "--config", f, *out) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_missing_config_file(tmp_path, capsys):
    assert ddm("condense", "--config", str(tmp_path / "nope.yaml"), "--out", "x") == 2
    assert "missing file" in capsys.readouterr().err


def test_empty_file_sets_nothing(tmp_path):
    args = parse_command_line(
        ["condense", "--config", _write(tmp_path / "e.yaml", ""), "--out", "x"]
    )
    assert _condense_config(args) == CondenseConfig()

"""First runs: the time estimate of long runs, the CPU-sized presets, the package's version
and its shipped preset files."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import pytest

import ddm
import ddm.condense as condense_module
from ddm.cli import main
from ddm.condense import condense, cpu_preset_for, estimate_message
from ddm.config import CondenseConfig, EvalConfig, available_presets, load_preset
from ddm.data import load_dataset
from ddm.evaluate import evaluate_folder
from ddm.io import read_json

ROOT = Path(__file__).resolve().parents[1]
CPU_PRESETS = (
    "dm-cifar10-ipc10-cpu",
    "ddm-paper-cifar10-ipc10-cpu",
    "ddm-released-cifar10-ipc10-cpu",
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# --- the time estimate ----------------------------------------------------------------------------


def test_estimate_message_numbers():
    # 20,000 iterations at 3 s: 19,995 left = 59,985 s = 16.7 hours; 1,800 s fit 600 more
    # (605 in all, rounded down to 600)
    note = estimate_message(3.0, 5, 20000, preset="ddm-paper-cifar10-ipc10-cpu")
    assert note is not None
    assert "at 3.00 s per iteration, the 19,995 iterations left take about 16.7 hours. " in note
    assert "--preset ddm-paper-cifar10-ipc10-cpu, or --iterations 600 (about 30 min)" in note
    assert note.endswith("This run goes on.")


def test_estimate_message_counts_the_work_that_follows():
    # 1,000 s of iterations stay under 30 min alone; with 900 s of evaluation they do not
    assert estimate_message(1.0, 0, 1000) is None
    note = estimate_message(1.0, 0, 1000, extra_s=900.0)
    assert note is not None and "about 17 min plus 15 min of evaluation" in note
    assert "(about 32 min in all)" in note
    # the iterations suggested leave room for the evaluation: (1,800 - 900) / 1 s = 900
    assert "--iterations 900 (about 30 min)" in note and "--preset" not in note


def test_estimate_message_silent_when_short_or_done():
    assert estimate_message(1.0, 10, 1810) is None  # 1,800 s left: at the limit
    assert estimate_message(1.0, 10, 1811) is not None
    assert estimate_message(100.0, 50, 50) is None  # nothing left
    assert estimate_message(0.0, 0, 10**9) is None  # no measurement


def test_estimate_message_days_and_small_fits():
    note = estimate_message(400.0, 4, 1000, limit_s=1200.0)
    assert note is not None and "about 4.6 days" in note and "--iterations 7 (about 20 min)" in note


def _stderr_notes(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if "s per iteration" in line]


def test_condense_prints_the_estimate_once(digits, monkeypatch, capsys):
    monkeypatch.setattr(condense_module, "ESTIMATE_ABOVE_S", 0.0)
    cfg = CondenseConfig(dataset="digits", ipc=2, iterations=9, batch_real=8, precision="fp32")
    condense(cfg, None, dataset=digits, progress=False)
    notes = _stderr_notes(capsys)
    assert len(notes) == 1  # after the 4th iteration, not again
    assert notes[0].startswith("note: at ") and "the 5 iterations left" in notes[0]
    # no CPU-sized preset for digits DM: only --iterations (nothing fits in 0 s: one more)
    assert "--preset" not in notes[0] and "--iterations 5 " in notes[0]


def test_condense_estimate_counts_only_this_call(digits, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(condense_module, "ESTIMATE_ABOVE_S", 0.0)
    cfg = CondenseConfig(dataset="digits", ipc=2, iterations=500, batch_real=8, precision="fp32")
    condense(cfg, tmp_path / "r", dataset=digits, progress=False, stop_after=6)
    notes = _stderr_notes(capsys)
    assert len(notes) == 1 and "the 2 iterations left" in notes[0]


def test_condense_short_run_prints_no_estimate(digits, capsys):
    cfg = CondenseConfig(dataset="digits", ipc=2, iterations=6, batch_real=8, precision="fp32")
    condense(cfg, None, dataset=digits, progress=False)
    assert _stderr_notes(capsys) == []


def test_estimate_only_on_rank_0(digits, monkeypatch, capsys):
    """Under torchrun every rank times its iterations; only rank 0 prints."""
    monkeypatch.setattr(condense_module, "ESTIMATE_ABOVE_S", 0.0)
    monkeypatch.setattr(condense_module.dist, "is_main", lambda: False)
    cfg = CondenseConfig(dataset="digits", ipc=2, iterations=9, batch_real=8, precision="fp32")
    condense(cfg, None, dataset=digits, progress=False)
    assert _stderr_notes(capsys) == []


# --- CPU-sized presets ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", CPU_PRESETS)
def test_cpu_presets_load_and_validate(name):
    preset = load_preset(name)
    cfg = CondenseConfig(**preset["settings"]).resolved()
    assert cfg.dataset == "cifar10" and cfg.ipc == 10 and cfg.batch_real == 128
    full = CondenseConfig(**load_preset(name.removesuffix("-cpu"))["settings"]).resolved()
    assert cfg.iterations < full.iterations
    # the same method and form as the full preset: only the budget differs
    changed = {k for k, v in cfg.to_dict().items() if full.to_dict()[k] != v}
    assert changed == {"iterations", "batch_real"}
    # the description says what it reaches and how long it takes
    assert re.search(r"\d\d\.\d\d \+- \d\.\d\d %", preset["description"])
    assert "2-core CPU" in preset["description"]


def test_long_runs_suggest_their_cpu_preset():
    for name in CPU_PRESETS:
        full = CondenseConfig(**load_preset(name.removesuffix("-cpu"))["settings"]).resolved()
        assert cpu_preset_for(full) == name
        # a run already at (or below) the preset's budget is not sent to it
        assert cpu_preset_for(CondenseConfig(**load_preset(name)["settings"]).resolved()) is None
    assert cpu_preset_for(CondenseConfig(dataset="digits").resolved()) is None


def test_cpu_presets_listed(capsys):
    assert main(["--quiet", "presets"]) == 0
    out = capsys.readouterr().out
    for name in CPU_PRESETS:
        assert name in out


# --- the package ----------------------------------------------------------------------------------


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_presets_are_package_data():
    """A wheel carries the preset files: pyproject declares them, and every shipped preset
    is found through importlib.resources (as `ddm presets` reads them when installed)."""
    data = _pyproject()["tool"]["setuptools"]["package-data"]["ddm"]
    assert "presets/*.json" in data
    on_disk = sorted(p.stem for p in (ROOT / "src" / "ddm" / "presets").glob("*.json"))
    assert on_disk and available_presets() == on_disk
    assert files("ddm").joinpath("presets", f"{on_disk[0]}.json").is_file()


def test_version_agrees_with_pyproject():
    project = _pyproject()["project"]
    assert project["version"] == ddm.SOURCE_VERSION
    assert project["license"] == "MIT"  # an SPDX expression, not the deprecated table


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"ddm {ddm.__version__}"


class _FakeDist:
    def __init__(self, version: str, init: Path) -> None:
        self.version, self._init = version, init

    def locate_file(self, path: str) -> Path:
        return self._init


def test_package_version_from_metadata_else_source(monkeypatch, tmp_path):
    import importlib.metadata as md

    here = Path(ddm.__file__)
    monkeypatch.setattr(md, "distribution", lambda name: _FakeDist("9.9.9", here))
    assert ddm.package_version() == "9.9.9"  # installed, and this code is that install
    elsewhere = tmp_path / "ddm" / "__init__.py"
    elsewhere.parent.mkdir()
    elsewhere.write_text("")
    monkeypatch.setattr(md, "distribution", lambda name: _FakeDist("0.0.1", elsewhere))
    assert ddm.package_version() == ddm.SOURCE_VERSION  # another copy is installed

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", missing)
    assert ddm.package_version() == ddm.SOURCE_VERSION  # a source checkout


def test_version_recorded_in_run_and_metrics(digits, tmp_path):
    cfg = CondenseConfig(dataset="digits", ipc=1, iterations=1, batch_real=8, precision="fp32")
    syn = condense(cfg, tmp_path / "r", dataset=digits, progress=False)
    assert read_json(tmp_path / "r" / "meta.json")["version"] == ddm.__version__
    evaluate_folder(tmp_path / "r", syn, digits, EvalConfig(epochs=1, runs=1, precision="fp32"))
    entry = read_json(tmp_path / "r" / "metrics.json")["evaluations"][0]
    assert entry["version"] == ddm.__version__

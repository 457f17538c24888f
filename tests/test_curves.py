"""Pictures of a run: curves.png from log.csv, refreshed at checkpoints; `ddm show`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddm import curves
from ddm.cli import main
from ddm.condense import condense
from ddm.config import CondenseConfig
from ddm.curves import curve_columns, read_log, save_curves, y_scale
from ddm.io import SyntheticSet, save_synthetic


def ddm(*args: str) -> int:
    return main(["--quiet", *args])


def _log(path, rows: int = 30, header: str | None = None) -> None:
    header = header or "iteration,loss,mmd,mm,cm,icd,ce,cd,sd,queue_seconds,seconds"
    lines = [header]
    for i in range(1, rows + 1):
        loss = 10.0 ** (2 - 4 * i / rows)  # four decades
        lines.append(f"{i},{loss:.6g},{loss / 2:.6g},0,{1 + i % 3},{-0.1 * i},0,{i},0.5,0.1,1.2")
    path.write_text("\n".join(lines) + "\n" + "31,0.5,0.")  # a last line cut by a crash


def test_every_numeric_term_but_timings_and_zero_columns(tmp_path):
    _log(tmp_path / "log.csv")
    columns = read_log(tmp_path / "log.csv")
    assert len(columns["iteration"]) == 30  # the cut line is skipped
    # new columns (cd, sd) appear without being named anywhere; mm and ce are all zero
    assert list(curve_columns(columns)) == ["loss", "mmd", "cm", "icd", "cd", "sd"]


@pytest.mark.parametrize(
    ("values", "scale"),
    [
        ([1e-3, 1e-1, 10.0], "log"),
        ([1.0, 20.0, 50.0], "linear"),
        ([1.0, 99.0], "linear"),
        ([-1e-3, 5.0, 20.0], "symlog"),
        ([0.0, 0.0, 3.0], "linear"),
        ([0.0, 1e-4, 3.0], "symlog"),
    ],
)
def test_log_scale_where_values_span_more_than_two_decades(values, scale):
    assert y_scale(np.array(values)) == scale


def test_save_curves_draws_one_panel_per_term(tmp_path):
    _log(tmp_path / "log.csv")
    names = save_curves(tmp_path / "log.csv", tmp_path / "curves.png", title="t")
    assert names == ["loss", "mmd", "cm", "icd", "cd", "sd"]
    with Image.open(tmp_path / "curves.png") as img:
        assert img.format == "PNG" and img.size[0] > img.size[1] > 200  # 3 x 2 panels


def test_nothing_drawn_without_rows(tmp_path):
    (tmp_path / "log.csv").write_text("iteration,loss,seconds\n")
    assert save_curves(tmp_path / "log.csv", tmp_path / "c.png") == []
    assert save_curves(tmp_path / "missing.csv", tmp_path / "c.png") == []
    assert not (tmp_path / "c.png").exists()


def _digits(**kw) -> CondenseConfig:
    return CondenseConfig(dataset="digits", ipc=1, batch_real=16, **kw)


def test_condense_refreshes_curves_at_each_checkpoint_with_the_latest_rows(tmp_path, monkeypatch):
    seen = []
    real = curves.save_curves

    def spy(log_path, png_path, title=None):
        rows = read_log(log_path).get("iteration", []) if log_path.exists() else []
        seen.append(len(rows))
        return real(log_path, png_path, title=title)

    monkeypatch.setattr(curves, "save_curves", spy)
    condense(_digits(iterations=4, checkpoint_every=2), tmp_path / "run", progress=False)
    assert seen == [0, 2, 4]  # iteration 0 (no rows yet), then every checkpoint, all rows
    assert (tmp_path / "run" / "curves.png").exists() and (tmp_path / "run" / "grid.png").exists()


def test_a_failing_picture_never_stops_a_run(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(curves, "save_curves", broken)
    syn = condense(_digits(iterations=3, checkpoint_every=1), tmp_path / "run", progress=False)
    assert syn.meta["iterations"] == 3
    assert capsys.readouterr().err.count("could not draw curves.png (no fonts)") == 1


def test_show_draws_curves_and_the_expanded_idm_grid(tmp_path, capsys):
    run = tmp_path / "idm"
    run.mkdir()
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 0, 1, 1])
    meta = {"method": "idm", "dataset": "x", "mean": [0.5] * 3, "std": [0.2] * 3}
    save_synthetic(run, SyntheticSet(images, labels, {**meta, "expansion_factor": 2}))
    _log(run / "log.csv", header="iteration,loss,mmd,mm,cm,icd,ce,queue_seconds,seconds,x,y")
    assert ddm("show", str(run)) == 0
    for name in ("grid.png", "grid_expanded.png", "curves.png"):
        assert (run / name).exists(), name
    assert "curves.png" in capsys.readouterr().out
    # a selected set has no log: grid only, and it says why there are no curves
    (run / "log.csv").unlink()
    (run / "curves.png").unlink()
    save_synthetic(run, SyntheticSet(images, labels, {**meta, "expansion_factor": 1}))
    assert ddm("show", str(run)) == 0
    assert "no curves" in capsys.readouterr().out and not (run / "curves.png").exists()

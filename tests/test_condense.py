"""The condensation loop: statistics path, resume, determinism, bad input, DDM terms."""

from __future__ import annotations

import csv
import dataclasses
import shutil

import pytest
import torch

from ddm.augment import apply, sample_params
from ddm.baselines import random_subset
from ddm.bases import reinit_
from ddm.condense import NonFiniteLossError, _Run, condense
from ddm.config import CondenseConfig, parse_overrides
from ddm.data import load_dataset
from ddm.io import RunFolderError, load_synthetic
from ddm.losses import (
    correlation_loss,
    diversity_loss,
    mmd_loss,
    moments_loss,
    persample_moments_loss,
    spread_loss,
    style_spread_loss,
)
from ddm.models import build_model
from ddm.objective import Weights as _Weights
from ddm.objective import input_conv as _input_conv
from ddm.objective import objective, real_statistics

TINY = CondenseConfig(dataset="digits", ipc=3, iterations=6, batch_real=24, checkpoint_every=2)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _interrupt_run(cfg, out, dataset, monkeypatch, at_call):
    """Run ``condense`` and interrupt it (like Ctrl-C) inside its ``at_call``-th iteration."""
    real_step, calls = _Run.step, []

    def interrupted(self):
        calls.append(1)
        if len(calls) == at_call:
            raise KeyboardInterrupt
        return real_step(self)

    with monkeypatch.context() as m:
        m.setattr(_Run, "step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            condense(cfg, out, dataset=dataset, progress=False)


def _log_rows(folder):
    with (folder / "log.csv").open() as f:
        return list(csv.DictReader(f))


def test_objective_equals_public_losses(digits):
    """The chunked statistics path gives exactly the public losses on raw outputs."""
    torch.manual_seed(0)
    net = build_model("convnet", 1, 10, 8).requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    classes = 3
    batches = [digits.class_batch(c, 20, gen) for c in range(classes)]
    params = [
        sample_params("color_crop_cutout_scale_rotate", 4, (8, 8), gen, siamese=True)
        for _ in range(classes)
    ]
    syn = torch.randn(classes * 4, 1, 8, 8, requires_grad=True)
    w = _Weights(w_mm=3.0, w_cm=5.0, w_icd=0.5, icd_k=2, neighbour_grad=True)
    nograd = torch.autocast("cpu", enabled=False)
    stats = real_statistics(net, batches, params, w, 25, torch.device("cpu"), nograd, False)
    total, terms = objective(net, stats, syn, [4] * classes, params, w, nograd, False)

    expected = torch.zeros(())
    for c in range(classes):
        re, rm = net.embed_and_maps(apply(batches[c], params[c]))
        se, sm = net.embed_and_maps(apply(syn[4 * c : 4 * c + 4], params[c]))
        expected = expected + (
            mmd_loss(re, se)
            + 3.0 * moments_loss(rm, sm)
            + 5.0 * correlation_loss(rm, sm)
            + 0.5 * diversity_loss(se, 2)
        )
    assert total.item() == pytest.approx(expected.item(), rel=1e-4)
    assert terms["mmd"] > 0 and terms["mm"] > 0 and terms["cm"] > 0 and terms["icd"] < 0


def test_chunking_does_not_change_statistics(digits):
    net = build_model("convnet", 1, 10, 8).requires_grad_(False)
    gen = torch.Generator().manual_seed(2)
    batches = [digits.class_batch(c, 30, gen) for c in range(4)]
    params = [sample_params("none", 1, (8, 8), gen, siamese=True) for _ in range(4)]
    w = _Weights(1.0, 1.0, 0.0, 0, True)
    off = torch.autocast("cpu", enabled=False)
    whole = real_statistics(net, batches, params, w, 0, torch.device("cpu"), off, False)
    small = real_statistics(net, batches, params, w, 30, torch.device("cpu"), off, False)
    for a, b in zip(whole, small, strict=True):
        assert torch.allclose(a.emb, b.emb, atol=1e-5)
        assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a.grams, b.grams, strict=True))


def test_reinit_equals_fresh_construction():
    a = build_model("convnet", 3, 10, 32)
    reinit_(a, 123)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        b = build_model("convnet", 3, 10, 32)
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), na


def test_dm_run_writes_documented_outputs(tmp_path, digits):
    syn = condense(TINY, tmp_path / "r", dataset=digits, progress=False)
    out = tmp_path / "r"
    for name in (
        "synthetic.safetensors",
        "meta.json",
        "config.json",
        "log.csv",
        "grid.png",
        "checkpoint.safetensors",
    ):
        assert (out / name).exists(), name
    back = load_synthetic(out)
    assert torch.equal(back.images, syn.images)
    assert back.images.shape == (30, 1, 8, 8) and back.labels.tolist() == sorted(
        back.labels.tolist()
    )
    m = back.meta
    assert (m["dataset"], m["ipc"], m["method"], m["iterations"], m["seed"]) == (
        "digits",
        3,
        "dm",
        6,
        0,
    )
    assert m["image_size"] == 8 and m["channels"] == 1 and m["expansion_factor"] == 1
    assert m["mean"] == pytest.approx(list(digits.mean))
    rows = _log_rows(out)
    assert [int(r["iteration"]) for r in rows] == list(range(1, 7))
    assert all(float(r["mm"]) == 0 and float(r["mmd"]) > 0 for r in rows)
    # real init is the random-subset baseline's draw, and DM moved the pixels
    init = random_subset(digits, 3, seed=0)
    assert torch.equal(init.labels, syn.labels)
    assert not torch.allclose(init.images, syn.images)


def test_resume_matches_uninterrupted(tmp_path, digits, monkeypatch):
    full = condense(TINY, tmp_path / "a", dataset=digits, progress=False)
    # interrupt inside iteration 4: only the checkpoint of iteration 2 survives
    _interrupt_run(TINY, tmp_path / "b", digits, monkeypatch, at_call=4)
    assert load_synthetic(tmp_path / "b").meta["iterations"] == 2  # last checkpoint
    resumed = condense(TINY, tmp_path / "b", dataset=digits, progress=False, resume=True)
    assert torch.equal(full.images, resumed.images)
    assert [r["loss"] for r in _log_rows(tmp_path / "a")] == [
        r["loss"] for r in _log_rows(tmp_path / "b")
    ]


def test_resume_refuses_changed_settings(tmp_path, digits):
    condense(TINY, tmp_path / "r", dataset=digits, progress=False, stop_after=2)
    with pytest.raises(RunFolderError, match="lr_img"):
        condense(
            dataclasses.replace(TINY, lr_img=0.5),
            tmp_path / "r",
            dataset=digits,
            progress=False,
            resume=True,
        )
    # more iterations is allowed
    longer = dataclasses.replace(TINY, iterations=8)
    syn = condense(longer, tmp_path / "r", dataset=digits, progress=False, resume=True)
    assert load_synthetic(tmp_path / "r").meta["iterations"] == 8 and syn.images.isfinite().all()


def test_seed_determinism(digits):
    a = condense(TINY, dataset=digits, progress=False)
    b = condense(TINY, dataset=digits, progress=False)
    c = condense(dataclasses.replace(TINY, seed=1), dataset=digits, progress=False)
    assert torch.equal(a.images, b.images)
    assert not torch.allclose(a.images, c.images)


def test_existing_run_is_refused_unless_asked(tmp_path, digits):
    condense(TINY, tmp_path / "r", dataset=digits, progress=False, stop_after=2)
    before = (tmp_path / "r" / "synthetic.safetensors").read_bytes()
    with pytest.raises(RunFolderError, match="--resume .* --overwrite"):
        condense(TINY, tmp_path / "r", dataset=digits, progress=False)
    assert (tmp_path / "r" / "synthetic.safetensors").read_bytes() == before
    condense(TINY, tmp_path / "r", dataset=digits, progress=False, overwrite=True)
    assert load_synthetic(tmp_path / "r").meta["iterations"] == 6


def test_unwritable_output(tmp_path, digits):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunFolderError, match="cannot write"):
        condense(TINY, blocker / "run", dataset=digits, progress=False)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"ipc": 0}, "ipc"),
        ({"iterations": 0}, "iterations"),
        ({"ipc": 10_000}, "smallest class"),
        ({"method": "nope"}, "known: dm, ddm, idm"),
        ({"batch_real": -1}, "batch-real"),
        ({"model": "nope"}, "convnet"),
    ],
)
def test_bad_settings(digits, change, match):
    with pytest.raises(ValueError, match=match):
        condense(dataclasses.replace(TINY, **change), dataset=digits, progress=False)


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path, digits):
    cfg = dataclasses.replace(TINY, lr_img=1e38, iterations=20, checkpoint_every=1)
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        condense(cfg, tmp_path / "r", dataset=digits, progress=False)
    kept = load_synthetic(tmp_path / "r")
    assert kept.images.isfinite().all()
    assert kept.meta["iterations"] < 20


def test_ddm_terms_logged_and_zero_weight_removes_term(tmp_path, digits):
    cfg = dataclasses.replace(TINY, method="ddm", form="paper", iterations=2)
    condense(cfg, tmp_path / "ddm", dataset=digits, progress=False)
    rows = _log_rows(tmp_path / "ddm")
    assert all(float(r["mm"]) > 0 and float(r["cm"]) > 0 and float(r["icd"]) < 0 for r in rows)
    off = dataclasses.replace(cfg, w_cm=0.0, w_icd=0.0)
    condense(off, tmp_path / "mm", dataset=digits, progress=False)
    rows = _log_rows(tmp_path / "mm")
    assert all(float(r["cm"]) == 0 and float(r["icd"]) == 0 and float(r["mm"]) > 0 for r in rows)


def test_ddm_ipc_one_runs(digits, capsys):
    cfg = dataclasses.replace(TINY, method="ddm", form="paper", ipc=1, iterations=2)
    syn = condense(cfg, dataset=digits, progress=True)
    assert syn.images.shape[0] == 10 and syn.images.isfinite().all()
    assert "no neighbours" in capsys.readouterr().err


def test_batchnorm_model_runs(digits):
    syn = condense(
        dataclasses.replace(TINY, model="convnet_bn", iterations=2), dataset=digits, progress=False
    )
    assert syn.images.isfinite().all()


def test_noise_init(digits):
    run = _Run(dataclasses.replace(TINY, init="noise").resolved(), digits, None)
    assert run.images.mean().abs() < 0.5 and 0.7 < run.images.std() < 1.3


# --- IDM base -------------------------------------------------------------------------------------

IDM = dataclasses.replace(
    TINY,
    method="idm",
    ipc=1,
    iterations=5,
    net_generate_interval=2,
    model_batch=16,
    model_train_steps=2,
)


def test_idm_init_tiles_downscaled_real_images(digits):
    import torch.nn.functional as F

    from ddm.bases import init_partitioned
    from ddm.io import expand

    images, labels = init_partitioned(digits, 2, 2, torch.Generator().manual_seed(0))
    assert images.shape == (20, 1, 8, 8) and labels.tolist() == [c for c in range(10) for _ in "ab"]
    real = digits.class_batch(0, 8, torch.Generator().manual_seed(0))  # the same draw for class 0
    small = F.interpolate(real, size=(4, 4), mode="bilinear", antialias=True, align_corners=False)
    # stored image 0 of class 0: tiles 0..3 at (top-left, top-right, bottom-left, bottom-right)
    assert torch.allclose(images[0, :, :4, :4], small[0])
    assert torch.allclose(images[0, :, :4, 4:], small[1])
    assert torch.allclose(images[0, :, 4:, :4], small[2])
    assert torch.allclose(images[1, :, 4:, 4:], small[7])
    up, lab = expand(images, labels, 2)
    assert up.shape == (80, 1, 8, 8) and lab[:8].tolist() == [0] * 8
    assert torch.allclose(up[1], F.interpolate(small[1:2], size=(8, 8), mode="bilinear")[0])


def test_idm_queue_grows_trains_and_resumes_exactly(tmp_path, digits, monkeypatch):
    from ddm.bases import IDMBase

    full = condense(IDM, tmp_path / "a", dataset=digits, progress=False)
    run = _Run(IDM.resolved(), digits, None)
    assert isinstance(run.base, IDMBase) and len(run.base.nets) == 3 and run.per_class == 4
    for _ in range(5):
        run.step()
    assert len(run.base.nets) == 5  # +1 at iterations 2 and 4
    assert any(a > 0 for a in run.base.accs)
    assert torch.equal(run.images.detach(), full.images)  # same as the run with outputs
    rows = _log_rows(tmp_path / "a")
    assert any(float(r["ce"]) > 0 for r in rows) and all(
        float(r["queue_seconds"]) > 0 for r in rows
    )

    cfg = dataclasses.replace(IDM, checkpoint_every=3)
    _interrupt_run(cfg, tmp_path / "b", digits, monkeypatch, at_call=4)
    resumed = condense(cfg, tmp_path / "b", dataset=digits, progress=False, resume=True)
    assert torch.equal(full.images, resumed.images)


def test_idm_queue_capacity(digits):
    run = _Run(
        dataclasses.replace(IDM, net_num=4, net_generate_interval=1).resolved(), digits, None
    )
    for it in range(1, 4):
        run.base.network(it)
    assert len(run.base.nets) == 4 and run.base.ids == [2, 3, 4, 5]


def test_idm_queue_without_training_steps_keeps_its_models(digits):
    """--model-train-steps 0 leaves the queue untrained (and the CE weight at 0)."""
    run = _Run(dataclasses.replace(IDM, model_train_steps=0).resolved(), digits, None)
    before = [p.clone() for p in run.base.nets[0].parameters()]
    run.step()
    assert run.base.accs == [0.0] * len(run.base.nets)
    assert all(
        torch.equal(a, b) for a, b in zip(before, run.base.nets[0].parameters(), strict=True)
    )


@pytest.mark.parametrize("form, diversity", [("paper", "icd"), ("released", "cd")])
def test_ddm_on_idm_logs_all_terms(tmp_path, digits, form, diversity):
    cfg = dataclasses.replace(IDM, method="ddm", base="idm", form=form, iterations=2)
    syn = condense(cfg, tmp_path / "r", dataset=digits, progress=False)
    assert syn.meta["expansion_factor"] == 2 and syn.meta["base"] == "idm"
    assert syn.meta["form"] == form
    rows = _log_rows(tmp_path / "r")
    assert all(float(r["mm"]) > 0 and float(r["cm"]) > 0 for r in rows)
    assert all(float(r[diversity]) != 0 for r in rows)


def test_idm_only_options_are_refused_on_dm(digits):
    with pytest.raises(ValueError, match="factor"):
        dataclasses.replace(TINY, factor=2).resolved()
    with pytest.raises(ValueError, match="ce-weight"):
        dataclasses.replace(TINY, ce_weight=0.5).resolved()


def test_parse_overrides_types_and_errors():
    got = parse_overrides(["model-batch=64", "lr_img=0.5", "dsa=False", "init=noise", "w_mm=1e3"])
    assert got == {"model_batch": 64, "lr_img": 0.5, "dsa": False, "init": "noise", "w_mm": 1000.0}
    assert isinstance(got["model_batch"], int) and isinstance(got["w_mm"], float)
    assert CondenseConfig(**got, method="ddm").resolved().model_batch == 64
    for bad in ("model_batch", "=3"):
        with pytest.raises(ValueError, match="KEY=VALUE"):
            parse_overrides([bad])


# --- DDM's released form (docs/method.md, 'DDM, released form') ---------------------------------

# A smaller image step keeps these short digits runs of the released form near their start.
REL = dataclasses.replace(TINY, method="ddm", form="released", lr_img=0.05)


def test_objective_equals_public_losses_released_form(digits):
    """Released form: conv tap, per-sample relative moments, L_CD and L_SD, chunked real side."""
    torch.manual_seed(0)
    net = build_model("convnet", 1, 10, 8).requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    classes = 3
    batches = [digits.class_batch(c, 20, gen) for c in range(classes)]
    params = [
        sample_params("color_crop_cutout_scale_rotate", 5, (8, 8), gen, siamese=True)
        for _ in range(classes)
    ]
    syn = torch.randn(classes * 5, 1, 8, 8, requires_grad=True)
    w = _Weights(
        w_mm=180.0,
        w_cm=5.0,
        w_icd=0.0,
        icd_k=0,
        neighbour_grad=True,
        w_cd=30.0,
        cd_rank=4,
        w_sd=2.0,
        tap="conv",
        moments="persample",
        relative=True,
    )
    nograd = torch.autocast("cpu", enabled=False)
    stats = real_statistics(net, batches, params, w, 25, torch.device("cpu"), nograd, False)
    total, terms = objective(net, stats, syn, [5] * classes, params, w, nograd, False)
    expected = torch.zeros(())
    ref = syn.detach().clone().requires_grad_(True)
    for c in range(classes):
        re, rm = net.embed_and_maps(apply(batches[c], params[c]), tap="conv")
        se, sm = net.embed_and_maps(apply(ref[5 * c : 5 * c + 5], params[c]), tap="conv")
        expected = expected + (
            mmd_loss(re, se)
            + 180.0 * persample_moments_loss(rm, sm)
            + 5.0 * correlation_loss(rm, sm)
            + 30.0 * spread_loss(re, se, rank=4)
            + 2.0 * style_spread_loss(rm, sm)
        )
    assert total.item() == pytest.approx(expected.item(), rel=1e-4)
    assert all(terms[t] > 0 for t in ("mmd", "mm", "cm", "cd", "sd")) and terms["icd"] == 0
    # the same gradient, although the objective takes the first layer's synthetic Gram
    # matrices from the patches (conv_mean_gram) and the public loss from the maps
    assert _input_conv(net, w) is not None
    total.backward()
    expected.backward()
    assert syn.grad is not None and syn.grad.abs().sum() > 0
    torch.testing.assert_close(syn.grad, ref.grad, rtol=1e-3, atol=1e-3 * ref.grad.abs().max())


def test_form_defaults_resolve_and_explicit_settings_win():
    paper = CondenseConfig(method="ddm", form="paper").resolved()
    assert (paper.style_tap, paper.moments, paper.moments_relative) == ("act", "batch", False)
    assert (paper.w_mm, paper.w_cm, paper.w_icd, paper.w_cd, paper.w_sd) == (1e4, 1e4, 10, 0, 0)
    rel = CondenseConfig(method="ddm", form="released").resolved()
    assert (rel.style_tap, rel.moments, rel.moments_relative) == ("conv", "persample", True)
    assert (rel.w_mm, rel.w_cm, rel.w_icd, rel.w_cd, rel.w_sd) == (180, 1e3, 0, 30, 0)
    assert (paper.correlation, rel.correlation) == ("sum", "cosine")
    # the published released form: the sum distance brings back its weight, 1e4
    published = CondenseConfig(method="ddm", form="released", correlation="sum").resolved()
    assert published.w_cm == 1e4
    from ddm.config import DEFAULT_FORM

    assert CondenseConfig(method="ddm").resolved().form == DEFAULT_FORM
    mixed = CondenseConfig(method="ddm", form="released", w_cd=0.0, style_tap="act").resolved()
    assert (mixed.w_cd, mixed.style_tap, mixed.w_mm) == (0.0, "act", 180.0)
    dm = CondenseConfig(method="dm").resolved()
    assert dm.form is None and (dm.w_mm, dm.w_cm, dm.w_icd, dm.w_cd, dm.w_sd) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"method": "ddm", "form": "newest"}, "unknown form"),
        ({"method": "dm", "form": "paper"}, "--form applies to --method ddm"),
        ({"method": "ddm", "style_tap": "norm"}, "unknown style tap"),
        ({"method": "ddm", "moments": "spatial"}, "unknown moments estimator"),
        ({"method": "ddm", "w_cd": -1.0}, "--w-cd must be >= 0"),
        ({"method": "ddm", "cd_rank": -2}, "--cd-rank"),
        ({"method": "ddm", "correlation": "abs"}, "unknown correlation distance"),
    ],
)
def test_bad_form_settings(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TINY, **change).resolved()


def test_released_form_logs_its_terms(tmp_path, digits):
    cfg = dataclasses.replace(REL, iterations=2, w_sd=1.0)
    condense(cfg, tmp_path / "rel", dataset=digits, progress=False)
    rows = _log_rows(tmp_path / "rel")
    assert all(float(r[t]) > 0 for r in rows for t in ("mmd", "mm", "cm", "cd", "sd"))
    assert all(float(r["icd"]) == 0 for r in rows)
    off = dataclasses.replace(cfg, w_cd=0.0, w_sd=0.0)
    condense(off, tmp_path / "style", dataset=digits, progress=False)
    rows = _log_rows(tmp_path / "style")
    assert all(float(r["cd"]) == 0 and float(r["sd"]) == 0 for r in rows)


def test_released_form_ipc_one_notice(digits, capsys):
    cfg = dataclasses.replace(REL, ipc=1, iterations=2)
    syn = condense(cfg, dataset=digits, progress=True)
    assert syn.images.isfinite().all()
    assert "spread terms" in capsys.readouterr().err


@pytest.mark.parametrize("base", ["dm", "idm"])
def test_released_form_resumes_exactly(tmp_path, digits, monkeypatch, base):
    extra = {"model_train_steps": 1, "model_batch": 16} if base == "idm" else {}
    cfg = dataclasses.replace(REL, base=base, ipc=2, w_sd=1.0, **extra)
    whole = condense(cfg, tmp_path / "whole", dataset=digits, progress=False)
    _interrupt_run(cfg, tmp_path / "cut", digits, monkeypatch, at_call=4)
    resumed = condense(cfg, tmp_path / "cut", dataset=digits, resume=True, progress=False)
    assert torch.equal(whole.images, resumed.images)


@pytest.mark.parametrize("form", [None, "paper", "released"])
def test_finished_run_continued_equals_a_longer_run(tmp_path, digits, form):
    # Figure B past Table A's budget continues finished 500-iteration runs: a finished run
    # resumed with more iterations must end where one uninterrupted longer run ends
    cfg = TINY if form is None else dataclasses.replace(REL, form=form, ipc=2)
    longer = dataclasses.replace(cfg, iterations=cfg.iterations + 3)
    whole = condense(longer, tmp_path / "whole", dataset=digits, progress=False)
    condense(cfg, tmp_path / "cont", dataset=digits, progress=False)
    cont = condense(longer, tmp_path / "cont", dataset=digits, resume=True, progress=False)
    assert torch.equal(whole.images, cont.images)
    assert [r["loss"] for r in _log_rows(tmp_path / "whole")] == [
        r["loss"] for r in _log_rows(tmp_path / "cont")
    ]


def test_released_form_differs_from_paper_form(digits):
    paper = condense(dataclasses.replace(REL, form="paper"), dataset=digits, progress=False)
    rel = condense(REL, dataset=digits, progress=False)
    assert not torch.allclose(paper.images, rel.images)


def test_compile_compiles_the_embedding_matching_calls(digits, monkeypatch):
    """``--compile`` must compile what matching runs: ``embed``, not ``forward`` (which
    ``torch.compile(net)`` alone would compile, and matching never calls)."""
    compiled, calls = [], []

    def spy(fn, **kwargs):
        compiled.append(getattr(fn, "__name__", type(fn).__name__))

        def counted(*args, **kw):
            calls.append(1)
            return fn(*args, **kw)

        return counted

    monkeypatch.setattr(torch, "compile", spy)
    eager = condense(dataclasses.replace(TINY, iterations=2), dataset=digits, progress=False)
    assert compiled == [] and calls == []
    cfg = dataclasses.replace(TINY, iterations=2, compile=True)
    syn = condense(cfg, dataset=digits, progress=False)
    assert compiled == ["embed"]  # once: the network object is re-initialised in place
    assert len(calls) >= 2 * 2  # every iteration's real and synthetic forwards
    assert torch.equal(syn.images, eager.images)  # the spy runs the eager function


@pytest.mark.skipif(
    not (shutil.which("cc") or shutil.which("gcc") or shutil.which("c++")),
    reason="torch.compile's CPU backend needs a C++ compiler",
)
def test_compiled_run_matches_eager(digits):
    """The real compiler (Inductor): the same set as the eager run, to float32 rounding."""
    cfg = dataclasses.replace(TINY, iterations=2, precision="fp32")
    eager = condense(cfg, dataset=digits, progress=False)
    comp = condense(dataclasses.replace(cfg, compile=True), dataset=digits, progress=False)
    assert torch.allclose(comp.images, eager.images, atol=1e-4)

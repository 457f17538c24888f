"""NCFM: the characteristic-function loss, the pool, the base in the loop (docs/method.md, 'NCFM').

Losses are checked against hand computations on small tensors; the loop on the embedded
digits with a pool of two networks trained for one epoch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddm.cli import main
from ddm.condense import _Run, condense
from ddm.config import CondenseConfig
from ddm.data import load_dataset
from ddm.io import load_synthetic, load_tensors, save_tensors
from ddm.ncfm import (
    CF_SCALE,
    cf_loss,
    cf_loss_from_stats,
    cf_stats,
    interpolate_state,
    ncfm_augmentation,
)
from ddm.pool import POOL_FILE, PoolConfig, PoolError, load_pool, train_pool

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def pool(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("pool")
    torch.set_num_threads(int(os.environ.get("DDM_TEST_THREADS", "2")))
    train_pool(PoolConfig(dataset="digits", networks=2, epochs=1), out, dataset=digits,
               progress=False)  # fmt: skip
    return out


def _cfg(pool: Path, **kw) -> CondenseConfig:
    settings = dict(
        dataset="digits",
        method="ncfm",
        pool=str(pool),
        ipc=2,
        iterations=4,
        batch_real=32,
        num_freqs=64,
        checkpoint_every=2,
    )
    return CondenseConfig(**{**settings, **kw})


# --- the loss ------------------------------------------------------------------------------------


def test_cf_loss_matches_a_hand_computation():
    real = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    syn = torch.tensor([[0.6, 0.8]])
    freqs = torch.tensor([[1.0, 0.0], [0.5, 2.0]])
    expected = []
    for t in freqs.tolist():
        pr = [t[0] * f[0] + t[1] * f[1] for f in real.tolist()]
        ps = t[0] * 0.6 + t[1] * 0.8
        re_r, im_r = sum(map(math.cos, pr)) / 2, sum(map(math.sin, pr)) / 2
        re_s, im_s = math.cos(ps), math.sin(ps)
        mr, ms = math.hypot(re_r, im_r), math.hypot(re_s, im_s)
        amp = (mr - ms) ** 2
        pha = max(2 * (mr * ms - re_r * re_s - im_r * im_s), 1e-12)
        expected.append(math.sqrt(0.3 * amp + 0.7 * pha))
    got = cf_loss(real, syn, freqs, alpha=0.3, beta=0.7, scale=2.0)
    assert float(got) == pytest.approx(2.0 * sum(expected) / 2, rel=1e-6)


def test_shipped_loss_is_the_scaled_mean_modulus_of_the_difference():
    gen = torch.Generator().manual_seed(0)
    real = torch.nn.functional.normalize(torch.randn(50, 16, generator=gen, dtype=torch.float64))
    syn = torch.nn.functional.normalize(torch.randn(7, 16, generator=gen, dtype=torch.float64))
    freqs = torch.randn(300, 16, generator=gen, dtype=torch.float64)
    re_r, im_r = cf_stats(real, freqs)
    re_s, im_s = cf_stats(syn, freqs)
    diff = ((re_r - re_s).square() + (im_r - im_s).square()).sqrt()  # |Phi_r - Phi_s|
    assert float(cf_loss(real, syn, freqs)) == pytest.approx(
        CF_SCALE / math.sqrt(2) * float(diff.mean()), rel=1e-10
    )
    # amplitude + phase = |Phi_r - Phi_s|^2 at alpha = beta = 1
    both = cf_loss_from_stats(re_r, im_r, syn, freqs, alpha=1.0, beta=1.0, scale=1.0)
    assert float(both) == pytest.approx(float(diff.mean()), rel=1e-10)
    # same features: only the phase term's floor of 1e-12 is left
    same = float(cf_loss(real, real, freqs))
    assert same == pytest.approx(CF_SCALE * math.sqrt(0.5 * 1e-12), rel=1e-6)


def test_interpolation_of_weights():
    a = {"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([2.0, 0.0]), "n": torch.tensor(5)}
    out = interpolate_state(a, b, 0.25)  # 0.25 * init + 0.75 * final
    assert torch.allclose(out["w"], torch.tensor([1.5, 1.0])) and int(out["n"]) == 5


def test_augmentation_applies_every_group_in_order():
    params = ncfm_augmentation((8, 8), torch.Generator().manual_seed(0))
    assert [p.group for p in params] == ["color", "crop", "cutout"]
    assert all(p.shared for p in params)  # one draw for the real and synthetic images


# --- the base in the loop ------------------------------------------------------------------------


def test_network_is_the_pool_network_interpolated(pool, digits):
    run = _Run(_cfg(pool).resolved(), digits, None)
    base = run.base
    net = base.network(5)
    index, coefficient = base.draw(5)
    p = load_pool(pool, digits, "convnet")
    for name, t in net.state_dict().items():
        want = coefficient * p.initial[index][name] + (1 - coefficient) * p.final[index][name]
        assert torch.allclose(t, want, atol=1e-6), name
    final, weight = base.calibration()
    for name, t in final.state_dict().items():
        assert torch.equal(t, p.final[index][name])
    assert weight == 1.0
    draws = {base.draw(i)[0] for i in range(40)}
    assert draws == {0, 1}  # every pool network is used


def test_decoding_factor_two_normalises_the_stored_pixels(pool, digits):
    run = _Run(_cfg(pool).resolved(), digits, None)
    assert run.images.min() >= 0 and run.images.max() <= 1  # pixels in [0, 1]
    stored = torch.zeros(1, 1, 8, 8)
    stored[..., :4, :4], stored[..., :4, 4:], stored[..., 4:, :4] = 0.2, 0.4, 0.6
    stored[..., 4:, 4:] = 0.8
    out, labels = run.base.expand(stored, torch.tensor([3]))
    mean, std = digits.mean[0], digits.std[0]
    assert out.shape == (4, 1, 8, 8) and labels.tolist() == [3, 3, 3, 3]
    for k, v in enumerate((0.2, 0.4, 0.6, 0.8)):
        assert torch.allclose(out[k], torch.full((1, 8, 8), (v - mean) / std), atol=1e-6)
    # the saved set holds the normalised stored images (expanded when evaluated)
    syn = run.synthetic()
    assert syn.meta["expansion_factor"] == 2
    assert torch.allclose(syn.images, run.base.unstore(run.images.detach()))


def test_step_order_match_per_class_then_ce_per_class(pool, digits, monkeypatch):
    from ddm import condense as loop

    run = _Run(_cfg(pool).resolved(), digits, None)
    opt = run.optimizer
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["weight_decay"] == 5e-4
    events: list[str] = []
    objective, ce, step = loop.objective, loop.F.cross_entropy, opt.step

    def spy_objective(*args, **kw):
        events.append(f"match{kw['classes'][0]}")
        return objective(*args, **kw)

    def spy_ce(logits, target, *a, **kw):
        events.append(f"ce{int(target[0])}")
        return ce(logits, target, *a, **kw)

    def spy_step(*a, **kw):
        events.append("step")
        return step(*a, **kw)

    monkeypatch.setattr(loop, "objective", spy_objective)
    monkeypatch.setattr(loop.F, "cross_entropy", spy_ce)
    monkeypatch.setattr(opt, "step", spy_step)
    run.step()
    n = digits.num_classes
    want = [e for c in range(n) for e in (f"match{c}", "step")]
    want += [e for c in range(n) for e in (f"ce{c}", "step")]
    assert events == want


def test_real_batches_come_from_all_of_a_class(pool, digits, monkeypatch):
    """Not the class's first batch_real images on every iteration (the reference's defect)."""
    drawn: list[torch.Tensor] = []
    original = type(digits).class_subset_indices

    def spy(self, c, n, gen):
        idx = original(self, c, n, gen)
        if c == 0:
            drawn.append(idx)
        return idx

    monkeypatch.setattr(type(digits), "class_subset_indices", spy)
    run = _Run(_cfg(pool, batch_real=16).resolved(), digits, None)
    drawn.clear()  # the initialisation's draw
    for _ in range(3):
        run.step()
    first = set(digits.train.class_indices(0)[:16].tolist())
    seen = set(torch.cat(drawn).tolist())
    assert len(drawn) == 3 and len(seen) > 16 and seen != first


def test_same_seed_same_set_and_resume_matches_an_uninterrupted_run(pool, digits, tmp_path):
    cfg = _cfg(pool)
    full = condense(cfg, tmp_path / "full", dataset=digits, progress=False)
    again = condense(cfg, None, dataset=digits, progress=False)
    assert torch.equal(full.images, again.images)
    condense(cfg, tmp_path / "cut", dataset=digits, progress=False, stop_after=2)
    ckpt = load_tensors(tmp_path / "cut/checkpoint.safetensors")
    assert {"optimizer.exp_avg", "optimizer.exp_avg_sq", "optimizer.step"} <= set(ckpt)
    resumed = condense(cfg, tmp_path / "cut", dataset=digits, progress=False, resume=True)
    assert torch.equal(full.images, resumed.images)
    other = condense(_cfg(pool, seed=1), None, dataset=digits, progress=False)
    assert not torch.equal(full.images, other.images)


def test_the_set_records_its_pool_and_a_changed_pool_refuses_to_resume(pool, digits, tmp_path):
    small = tmp_path / "pool1"  # the same folder, cut to its first network
    shutil.copytree(pool, small)
    manifest = json.loads((small / POOL_FILE).read_text())
    manifest["networks"] = manifest["networks"][:1]
    (small / POOL_FILE).write_text(json.dumps(manifest))
    cfg = _cfg(small)
    condense(cfg, tmp_path / "run", dataset=digits, progress=False, stop_after=2)
    recorded = json.loads((tmp_path / "run/meta.json").read_text())["pool"]
    assert recorded["networks"] == 1 and recorded["indices"] == [0]
    assert recorded["test_accuracy"] == [manifest["networks"][0]["test_accuracy"]]
    assert recorded["fingerprint"] != load_pool(pool, digits, "convnet").fingerprint
    assert recorded["fingerprint"] == load_pool(small, digits, "convnet").fingerprint
    # the pool grows under the run: resuming would draw other networks, so it stops at once
    shutil.copy(pool / POOL_FILE, small / POOL_FILE)
    with pytest.raises(
        PoolError, match=r"changed since this run's checkpoint.*\[0\] then, \[0, 1\] now"
    ):
        condense(cfg, tmp_path / "run", dataset=digits, progress=False, resume=True)
    # a network retrained in place (same index, other weights) is caught too
    (small / POOL_FILE).write_text(json.dumps(manifest))
    shutil.copy(small / "net0_init.safetensors", small / "net0_final.safetensors")
    with pytest.raises(PoolError, match="weight files differ"):
        condense(cfg, tmp_path / "run", dataset=digits, progress=False, resume=True)
    # restored, it resumes and ends as an uninterrupted run does
    shutil.copy(pool / "net0_final.safetensors", small / "net0_final.safetensors")
    resumed = condense(cfg, tmp_path / "run", dataset=digits, progress=False, resume=True)
    assert torch.equal(resumed.images, condense(cfg, None, dataset=digits, progress=False).images)


def test_plateau_schedule_halves_the_rate_and_resumes(pool, digits):
    run = _Run(_cfg(pool).resolved(), digits, None)
    run.base.scheduler.patience = 1
    for loss in (5.0, 6.0, 7.0):
        run.base.end_iteration(loss)
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    meta = run.base.state_meta()
    fresh = _Run(_cfg(pool).resolved(), digits, None)
    fresh.base.load_state({}, meta)
    assert fresh.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_tiny_end_to_end_run_gives_a_finite_falling_loss(pool, digits, tmp_path):
    cfg = _cfg(pool, iterations=12, checkpoint_every=0, lr_img=0.01)
    condense(cfg, tmp_path / "run", dataset=digits, progress=False)
    rows = (tmp_path / "run/log.csv").read_text().splitlines()
    header = rows[0].split(",")
    cf = [float(r.split(",")[header.index("cf")]) for r in rows[1:]]
    ce = [float(r.split(",")[header.index("ce")]) for r in rows[1:]]
    assert len(cf) == 12 and all(math.isfinite(v) and v > 0 for v in cf + ce)
    assert sum(cf[-3:]) < sum(cf[:3])
    syn = load_synthetic(tmp_path / "run")
    assert syn.meta["base"] == "ncfm" and syn.images.shape == (20, 1, 8, 8)


@pytest.mark.parametrize("form", ["paper", "released"])
def test_ddm_terms_on_the_ncfm_base(pool, digits, form, tmp_path):
    cfg = _cfg(pool, method="ddm", base="ncfm", form=form, iterations=1, checkpoint_every=0)
    condense(cfg, tmp_path / form, dataset=digits, progress=False)
    rows = (tmp_path / form / "log.csv").read_text().splitlines()
    values = dict(zip(rows[0].split(","), rows[1].split(","), strict=True))
    assert float(values["cf"]) > 0 and float(values["mmd"]) == 0
    assert float(values["mm"]) > 0 and float(values["cm"]) > 0
    assert float(values["icd" if form == "paper" else "cd"]) != 0


def test_sampler_ascends_the_loss_and_resumes(pool, digits, tmp_path, monkeypatch):
    """psi (--ncfm-sampler) learns: its step raises the loss it was given (the reference's
    gradients cancel to zero), its gradient is cleared after every step, and its state is in
    the checkpoint."""
    run = _Run(_cfg(pool, ncfm_sampler=True).resolved(), digits, None)
    base = run.base
    gen = torch.Generator().manual_seed(0)
    dim = base.net.embed_dim
    real = torch.nn.functional.normalize(torch.randn(32, dim, generator=gen))
    syn = torch.nn.functional.normalize(torch.randn(8, dim, generator=gen))
    noise = base.frequencies(dim, gen).noise
    loss = cf_loss(real, syn, base.sampler(noise))
    loss.backward()
    before = float(loss.detach())
    assert max(float(p.grad.abs().max()) for p in base.sampler.parameters()) > 0
    base.after_match_step()
    assert all(p.grad is None for p in base.sampler.parameters())
    with torch.no_grad():
        after = float(cf_loss(real, syn, base.sampler(noise)))
    assert after > before
    # in the loop: psi moves every iteration, and a resumed run ends where a whole one ends
    cfg = _cfg(pool, ncfm_sampler=True)
    full = condense(cfg, tmp_path / "full", dataset=digits, progress=False)
    condense(cfg, tmp_path / "cut", dataset=digits, progress=False, stop_after=2)
    resumed = condense(cfg, tmp_path / "cut", dataset=digits, progress=False, resume=True)
    assert torch.equal(full.images, resumed.images)
    ckpt = load_tensors(tmp_path / "full/checkpoint.safetensors")
    first = _Run(cfg.resolved(), digits, None).base.sampler.state_dict()
    moved = [k for k, v in first.items() if not torch.equal(ckpt[f"sampler.{k}"], v)]
    assert any(k.endswith("weight") for k in moved)
    from ddm import distributed as dist

    monkeypatch.setattr(dist, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="--ncfm-sampler runs in one process"):
        _Run(cfg.resolved(), digits, None)


# --- the pool ----------------------------------------------------------------------------------


def test_pool_manifest_and_files(pool):
    import json

    m = json.loads((pool / POOL_FILE).read_text())
    assert m["dataset"] == "digits" and m["image_size"] == 8 and m["channels"] == 1
    assert m["model"] == "convnet" and m["depth"] == 3 and m["width"] == 128
    assert m["norm"] == "instancenorm" and len(m["mean"]) == 1
    assert [n["index"] for n in m["networks"]] == [0, 1]
    for n in m["networks"]:
        assert 0 <= n["test_accuracy"] <= 100
        assert (pool / n["init"]).is_file() and (pool / n["final"]).is_file()
    a = load_tensors(pool / "net0_init.safetensors")
    b = load_tensors(pool / "net0_final.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # trained


def test_a_pool_serves_as_the_soft_label_teacher(pool, digits, tmp_path):
    """`--teacher POOL`: the pool's first network, its recorded accuracy, checked like a
    teacher; it labels images exactly as that network does."""
    from ddm.pool import _build
    from ddm.teacher import TeacherError, load_teacher

    teacher = load_teacher(pool, digits, "cpu")
    m = json.loads((pool / POOL_FILE).read_text())
    assert teacher.accuracy == m["networks"][0]["test_accuracy"]
    assert teacher.meta["pool_network"] == 0
    net = _build("convnet", (1, 10, 8), m["depth"])
    net.load_state_dict(load_tensors(pool / "net0_final.safetensors"))
    x = digits.normalize(digits.test.gather(torch.arange(16)))
    assert torch.allclose(teacher.logits(x), net.eval()(x))
    other = _copy(pool, tmp_path / "other")
    _edit_manifest(other, num_classes=7)
    with pytest.raises(TeacherError, match="not digits"):
        load_teacher(other, digits, "cpu")
    _edit_manifest(other, num_classes=10, networks=[])
    with pytest.raises(TeacherError, match="no finished network"):
        load_teacher(other, digits, "cpu")


def test_pool_training_resumes_per_epoch(digits, tmp_path):
    cfg = PoolConfig(dataset="digits", networks=1, epochs=2)
    whole = train_pool(cfg, tmp_path / "whole", dataset=digits, progress=False)
    # an interrupted run: epoch 1 of network 0 done, its partial checkpoint on disk
    from ddm import pool as pool_module

    calls = {"n": 0}
    real = pool_module._train_epoch

    def stop_after_one(*a, **kw):
        if calls["n"] == 1:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*a, **kw)

    pool_module._train_epoch = stop_after_one
    try:
        with pytest.raises(KeyboardInterrupt):
            train_pool(cfg, tmp_path / "cut", dataset=digits, progress=False)
    finally:
        pool_module._train_epoch = real
    assert (tmp_path / "cut/net0_partial.safetensors").is_file()
    resumed = train_pool(cfg, tmp_path / "cut", dataset=digits, progress=False)
    assert resumed["networks"] == whole["networks"]
    a = load_tensors(tmp_path / "whole/net0_final.safetensors")
    b = load_tensors(tmp_path / "cut/net0_final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "cut/net0_partial.safetensors").exists()
    by_epoch = whole["networks"][0]["accuracy_by_epoch"]  # kept across the interruption
    assert len(by_epoch) == 2 and by_epoch[-1] == whole["networks"][0]["test_accuracy"]
    assert "precision" not in whole["recipe"]  # float32 pools read as they always did


def test_a_bf16_pool_records_its_precision_and_trains_otherwise(digits, tmp_path):
    cfg = PoolConfig(dataset="digits", networks=1, epochs=1)
    fp32 = train_pool(cfg, tmp_path / "fp32", dataset=digits, progress=False)
    bf16 = train_pool(
        PoolConfig(dataset="digits", networks=1, epochs=1, precision="bf16"),
        tmp_path / "bf16",
        dataset=digits,
        progress=False,
    )
    assert bf16["recipe"]["precision"] == "bf16" and "precision" not in fp32["recipe"]
    a = load_tensors(tmp_path / "fp32/net0_final.safetensors")
    b = load_tensors(tmp_path / "bf16/net0_final.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(PoolError, match="other settings"):  # continuing it in float32
        train_pool(cfg, tmp_path / "bf16", dataset=digits, progress=False)
    with pytest.raises(ValueError, match="unknown --precision"):
        PoolConfig(precision="fp16")


def _copy(pool: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(pool, dest)
    return dest


def _edit_manifest(folder: Path, **changes) -> None:
    import json

    m = json.loads((folder / POOL_FILE).read_text())
    m.update(changes)
    (folder / POOL_FILE).write_text(json.dumps(m))


def test_pool_bad_inputs_are_one_clear_error(pool, digits, tmp_path):
    with pytest.raises(PoolError, match="does not exist; make one with `ddm pool"):
        load_pool(tmp_path / "nope", digits, "convnet")
    empty = _copy(pool, tmp_path / "empty")
    _edit_manifest(empty, networks=[])
    with pytest.raises(PoolError, match="has no finished network"):
        load_pool(empty, digits, "convnet")
    other = _copy(pool, tmp_path / "other")
    _edit_manifest(other, dataset="cifar10", image_size=32)
    with pytest.raises(PoolError, match="dataset 'cifar10' .wanted 'digits'.*image_size 32"):
        load_pool(other, digits, "convnet")
    with pytest.raises(PoolError, match="depth 3 .wanted 2."):
        load_pool(pool, digits, "convnet", depth=2)
    missing = _copy(pool, tmp_path / "missing")
    (missing / "net1_final.safetensors").unlink()
    with pytest.raises(PoolError, match="pool network 1 .*missing file"):
        load_pool(missing, digits, "convnet")
    corrupt = _copy(pool, tmp_path / "corrupt")
    (corrupt / "net0_init.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(PoolError, match="pool network 0 .*not a readable safetensors"):
        load_pool(corrupt, digits, "convnet")
    with pytest.raises(PoolError, match="finished pool network 0: .*not a readable"):
        train_pool(PoolConfig(dataset="digits", networks=3, epochs=1), corrupt, dataset=digits)
    assert not (corrupt / "net2_init.safetensors").exists()  # refused before any work
    wrong = _copy(pool, tmp_path / "wrong")
    save_tensors(wrong / "net0_final.safetensors", {"w": torch.zeros(1)})
    with pytest.raises(PoolError, match="does not fit the pool's architecture"):
        load_pool(wrong, digits, "convnet")


def test_cli_pool_errors_are_one_line_before_work(pool, tmp_path, capsys):
    out = tmp_path / "run"
    nope = str(tmp_path / "nope")
    code = main(["--quiet", "condense", "--dataset", "digits", "--method", "ncfm",
                 "--pool", nope, "--iterations", "1", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "does not exist" in err
    assert not (out / "checkpoint.safetensors").exists()
    code = main(["--quiet", "condense", "--dataset", "digits", "--method", "ncfm",
                 "--iterations", "1", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "needs --pool DIR" in err
    # a pool folder of another dataset is not continued
    code = main(["--quiet", "pool", "--dataset", "digits", "--networks", "1", "--epochs", "3",
                 "--out", str(pool)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "other settings" in err


def test_settings_of_the_ncfm_base_are_checked():
    with pytest.raises(ValueError, match="apply to the ncfm base only"):
        CondenseConfig(method="dm", num_freqs=10).resolved()
    with pytest.raises(ValueError, match="--ncfm-sampler applies to the ncfm base only"):
        CondenseConfig(method="ddm", ncfm_sampler=True).resolved()
    with pytest.raises(ValueError, match="unknown image optimiser"):
        CondenseConfig(method="ncfm", pool="p", optimizer_img="adam").resolved()
    cfg = CondenseConfig(method="ncfm", pool="p").resolved()
    assert (cfg.base, cfg.lr_img, cfg.factor, cfg.ce_weight) == ("ncfm", 1e-3, 2, 1.0)
    assert (cfg.num_freqs, cfg.optimizer_img) == (4096, "adamw")
    assert CondenseConfig(method="ddm", base="ncfm", pool="p").resolved().w_mm == 1e4


def test_presets_of_ncfm_resolve():
    from ddm.config import available_presets, load_preset

    names = [n for n in available_presets() if n.startswith("ncfm-")]
    assert len(names) >= 10
    for name in names:
        cfg = CondenseConfig(**load_preset(name)["settings"]).resolved()
        assert cfg.base == "ncfm"
    # DDM's terms on a preset's NCFM: --method ddm over the preset
    ddm = CondenseConfig(**{**load_preset("ncfm-cifar10-ipc10")["settings"], "method": "ddm"})
    assert ddm.resolved().base == "ncfm" and ddm.resolved().w_mm == 1e4
    c100 = CondenseConfig(**load_preset("ncfm-cifar100-ipc10")["settings"]).resolved()
    assert (c100.optimizer_img, c100.lr_img, c100.momentum) == ("sgd", 0.01, 0.5)


# --- several processes ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_condense_the_set_of_one_process(pool, digits, tmp_path):
    from ddm import distributed as dist

    if not (dist.tdist.is_available() and dist.tdist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    torch.set_num_threads(1)
    cfg = _cfg(pool, iterations=2, checkpoint_every=0)
    one = condense(cfg, None, dataset=digits, progress=False)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    args = ["--dataset", "digits", "--method", "ncfm", "--pool", str(pool), "--ipc", "2",
            "--iterations", "2", "--batch-real", "32", "--num-freqs", "64",
            "--checkpoint-every", "0", "--out", str(tmp_path / "two")]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "ddm", "--quiet", "condense", *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = load_synthetic(tmp_path / "two")
    assert (one.images - two.images).abs().max() <= 1e-5

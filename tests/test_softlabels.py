"""Teachers, soft labels, evaluation recipes, DD-Ranking's scores and its file formats."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddm.augment import augment
from ddm.baselines import random_subset
from ddm.cli import main
from ddm.config import EvalConfig
from ddm.data import load_dataset
from ddm.evaluate import evaluate_set, train_and_test
from ddm.io import RunFolderError, load_synthetic, read_json, save_synthetic
from ddm.models import build_model
from ddm.recipes import RECIPES, cutmix, lr_factor
from ddm.runtime import Stream, seed_for
from ddm.scores import ScoreInputs, augmentation_robust_score, compute_scores, label_robust_score
from ddm.teacher import (
    TeacherConfig,
    TeacherError,
    load_teacher,
    soft_label_loss,
    teacher_folder,
    train_teacher,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, digits):
    out = teacher_folder(tmp_path_factory.mktemp("teachers"), "digits", "convnet")
    train_teacher(digits, TeacherConfig(epochs=2), out, progress=False)
    return out


def _save(folder, syn):
    folder.mkdir(parents=True, exist_ok=True)
    save_synthetic(folder, syn)


TINY = EvalConfig(epochs=3, runs=2, precision="fp32", device="cpu")


# --- formulas on hand-computed values -----------------------------------------------------------


def test_lrs_and_ars_match_hand_computed_values():
    # full 50 %, set hard 40 %, set soft 45 %, random soft 44 %: HLR 10, IOR 1,
    # alpha = 0.5 * 1 - 0.5 * 10 = -4.5 (DD-Ranking's code: percentages in the exponent)
    e = math.e
    r = label_robust_score(50.0, 40.0, 45.0, 44.0)
    assert (r["hlr"], r["ior"], r["alpha"]) == (10.0, 1.0, -4.5)
    assert r["lrs"] == pytest.approx((math.exp(-4.5) - 1 / e) / (e - 1 / e))
    assert r["lrs"] == pytest.approx(-0.151791, abs=1e-6)
    frac = label_robust_score(50.0, 40.0, 45.0, 44.0, scale=0.01)  # alpha = -0.045
    assert frac["alpha"] == pytest.approx(-0.045)
    assert frac["lrs"] == pytest.approx((math.exp(-0.045) - 1 / e) / (e - 1 / e))
    assert frac["lrs"] == pytest.approx(0.250220, abs=1e-6)
    # the normalisation maps alpha = -1 to 0 and alpha = 1 to 1
    assert label_robust_score(2.0, 0.0, 0.0, 0.0)["lrs"] == pytest.approx(0.0)
    assert label_robust_score(0.0, 0.0, 2.0, 0.0)["lrs"] == pytest.approx(1.0)
    # ARS: syn/rdm 45/44 with augmentation, 30/27 without: beta = 0.5 * 1 + 0.5 * 3 = 2
    a = augmentation_robust_score(45.0, 44.0, 30.0, 27.0)
    assert (a["with_aug"], a["without_aug"], a["beta"]) == (1.0, 3.0, 2.0)
    assert a["ars"] == pytest.approx((math.exp(2) - 1 / e) / (e - 1 / e))
    a = augmentation_robust_score(45.0, 44.0, 30.0, 27.0, g=0.25)  # 0.25 * 1 + 0.75 * 3
    assert a["beta"] == pytest.approx(2.5)


def test_scores_are_averaged_over_runs_with_population_std():
    x = ScoreInputs(50.0, [40.0, 42.0], [45.0, 47.0], [44.0, 44.0], [30.0, 30.0], [27.0, 29.0])
    s = compute_scores(x)
    assert s["hlr"]["per_run"] == [10.0, 8.0] and s["hlr"]["std"] == pytest.approx(1.0)
    want = np.mean(
        [label_robust_score(50, 40, 45, 44)["lrs"], label_robust_score(50, 42, 47, 44)["lrs"]]
    )
    assert s["lrs"]["mean"] == pytest.approx(want)
    assert s["ars"]["per_run"][1] == pytest.approx(
        augmentation_robust_score(47, 44, 30, 29)["ars"], abs=1e-6
    )


def test_soft_label_loss_is_ddrankings_kl_on_a_hand_computed_pair():
    student = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0], [2.4, 0.0]])
    t = 1.2
    p = F.softmax(teacher / t, dim=1)
    # row 0: target (0.5, 0.5), student softmax((1/1.2, 0)); row 1: target softmax((2, 0)), 0.5
    q0 = torch.tensor([math.exp(1 / t), 1.0]) / (math.exp(1 / t) + 1)
    p1 = torch.tensor([math.exp(2.0), 1.0]) / (math.exp(2.0) + 1)
    kl0 = float((torch.tensor([0.5, 0.5]) * (torch.log(torch.tensor([0.5, 0.5])) - q0.log())).sum())
    kl1 = float((p1 * (p1.log() - math.log(0.5))).sum())
    got = float(soft_label_loss(student, p, t))
    assert got == pytest.approx((kl0 + kl1) / 2, rel=1e-6)  # batchmean, no T^2 factor


def test_schedules_on_hand_computed_epochs():
    assert [lr_factor("half", e, 10) for e in (0, 4, 5, 9)] == [1.0, 1.0, 0.1, 0.1]
    assert [lr_factor("fifths", e, 10) for e in (0, 1, 2, 5, 8, 9)] == [
        1,
        1,
        0.5,
        0.25,
        0.0625,
        0.0625,
    ]
    # DD-Ranking's "cosine": LambdaLR 0.5 (1 + cos(pi e / E / 2)): 1 at the start, 0.5 at E
    assert lr_factor("ddranking-cosine", 0, 300) == 1.0
    assert lr_factor("ddranking-cosine", 150, 300) == pytest.approx(
        0.5 * (1 + math.cos(math.pi / 4))
    )
    assert lr_factor("ddranking-cosine", 300, 300) == pytest.approx(0.5)


def test_cutmix_replaces_a_box_and_reports_its_own_share():
    recipe = dataclasses.replace(RECIPES["ncfm"], cutmix_prob=1.0)
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8).contiguous()
    mixed, perm, lam = cutmix(x, recipe, np.random.default_rng(3))
    assert perm is not None
    for i in range(4):
        own = float((mixed[i] == x[i, 0, 0, 0]).float().mean())
        if int(perm[i]) != i:
            assert own == pytest.approx(lam)
    never = dataclasses.replace(recipe, cutmix_prob=0.0)
    assert cutmix(x, never, np.random.default_rng(3))[1] is None
    assert RECIPES["ncfm"].strategy("color_crop_cutout_flip_scale_rotate") == (
        "color_crop_flip_scale_rotate"
    )


# --- the dm recipe is the protocol as it always was ------------------------------------------


def _protocol_as_before(train_x, train_y, test_x, test_y, strategy, epochs, run):
    """The evaluation loop before recipes existed (SGD, lr x0.1 at half, DSA), for comparison."""
    torch.manual_seed(seed_for(0, Stream.EVAL_MODEL, run))
    net = build_model("convnet", train_x.shape[1], 10, train_x.shape[-1])
    gen = torch.Generator().manual_seed(seed_for(0, Stream.EVAL_TRAIN, run))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    net.train()
    for epoch in range(epochs):
        if epoch == epochs // 2:
            for group in opt.param_groups:
                group["lr"] = 0.01 * 0.1
        order = torch.randperm(len(train_x), generator=gen)
        for i in range(0, len(train_x), 256):
            idx = order[i : i + 256]
            loss = F.cross_entropy(net(augment(train_x[idx], strategy, gen)), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return 100.0 * int((net(test_x).argmax(1) == test_y).sum()) / len(test_y)


def test_dm_recipe_trains_exactly_as_the_protocol_did(digits):
    syn = random_subset(digits, 30, seed=1)  # 300 images: two batches per epoch
    tx, ty = digits.test_tensors()
    cfg = dataclasses.replace(TINY, epochs=4)
    got, _ = train_and_test(
        syn.images, syn.labels, tx, ty, num_classes=10, strategy=digits.dsa_strategy, cfg=cfg
    )
    want = _protocol_as_before(syn.images, syn.labels, tx, ty, digits.dsa_strategy, 4, 0)
    assert got == want
    d = EvalConfig().to_dict()
    assert (d["lr"], d["momentum"], d["weight_decay"], d["batch_size"]) == (0.01, 0.9, 5e-4, 256)
    assert (d["recipe"], d["labels"], d["temperature"], d["teacher"]) == ("dm", "hard", None, None)


def test_other_recipes_train_differently(digits):
    syn = random_subset(digits, 5, seed=1)
    accs = {
        name: evaluate_set(syn, digits, dataclasses.replace(TINY, recipe=name), False).accuracies
        for name in RECIPES
    }
    assert accs["dm"] != accs["ncfm"] and accs["dm"] != accs["ddranking"]


# --- teachers ------------------------------------------------------------------------------------


def test_teacher_is_stored_as_safetensors_and_json(teacher_dir, digits):
    meta = read_json(teacher_dir / "teacher.json")
    assert meta["dataset"] == "digits" and meta["image_size"] == 8 and meta["channels"] == 1
    assert 0.0 <= meta["test_accuracy"] <= 100.0 and meta["recipe"]["epochs"] == 2
    assert meta["mean"] == list(digits.mean)
    assert sorted(p.name for p in teacher_dir.iterdir()) == ["teacher.json", "teacher.safetensors"]
    teacher = load_teacher(teacher_dir, digits)
    x, y = digits.test_tensors()
    acc = 100.0 * int((teacher.logits(x).argmax(1) == y).sum()) / len(y)
    assert acc == pytest.approx(meta["test_accuracy"], abs=1e-3)  # the stored weights are its


def test_teacher_training_resumes_from_its_checkpoint(tmp_path, digits, monkeypatch):
    cfg = TeacherConfig(epochs=2, batch_size=256)
    whole = train_teacher(digits, cfg, tmp_path / "whole", progress=False)
    import ddm.teacher as teacher_module

    saves = []
    real = teacher_module._save_checkpoint

    def stop_after_first(*args, **kwargs):
        real(*args, **kwargs)
        saves.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(teacher_module, "_save_checkpoint", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(digits, cfg, tmp_path / "cut", progress=False)
    assert (tmp_path / "cut" / "checkpoint.safetensors").exists()
    monkeypatch.setattr(teacher_module, "_save_checkpoint", real)
    resumed = train_teacher(digits, cfg, tmp_path / "cut", progress=False)
    assert resumed.accuracy == whole.accuracy
    for a, b in zip(
        whole.net.state_dict().values(), resumed.net.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert not (tmp_path / "cut" / "checkpoint.safetensors").exists()


def test_a_teacher_for_other_data_is_refused_in_one_line(teacher_dir, tmp_path, digits):
    other = tmp_path / "other"
    other.mkdir()
    (other / "teacher.safetensors").write_bytes((teacher_dir / "teacher.safetensors").read_bytes())
    meta = read_json(teacher_dir / "teacher.json")
    (other / "teacher.json").write_text(json.dumps({**meta, "image_size": 28, "dataset": "mnist"}))
    with pytest.raises(TeacherError, match="was trained on mnist .*not digits"):
        load_teacher(other, digits)
    with pytest.raises(TeacherError, match="no teacher at .*ddm teacher"):
        load_teacher(tmp_path / "nowhere", digits)


def test_cli_bad_teacher_inputs_end_in_one_line(tmp_path, capsys, teacher_dir):
    _save(tmp_path / "set", random_subset(load_dataset("digits"), 2, seed=0))
    base = ["--quiet", "evaluate", str(tmp_path / "set"), "--epochs", "1", "--runs", "1"]
    for extra, text in (
        (["--labels", "soft"], "--labels soft needs a teacher"),
        (["--labels", "soft", "--teacher", str(tmp_path / "none")], "no teacher at"),
        (["--labels", "soft", "--soft-label-mode", "S"], "has none"),
        (["--scores"], "--scores needs the full-real-data accuracy"),
    ):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and text in err, err


# --- soft-label evaluation -----------------------------------------------------------------------


def test_soft_labels_from_a_teacher_are_recorded_beside_hard_ones(tmp_path, teacher_dir):
    _save(tmp_path / "set", random_subset(load_dataset("digits"), 3, seed=0))
    base = ["--quiet", "evaluate", str(tmp_path / "set"), "--epochs", "2", "--runs", "2"]
    assert main([*base, "--precision", "fp32"]) == 0
    soft = ["--labels", "soft", "--teachers-dir", str(teacher_dir.parent), "--temperature", "2"]
    assert main([*base, "--precision", "fp32", *soft]) == 0
    entries = read_json(tmp_path / "set" / "metrics.json")["evaluations"]
    assert [e["protocol"]["labels"] for e in entries] == ["hard", "soft"]
    hard, soft_entry = entries
    assert hard["protocol"]["temperature"] is None and hard["recipe"]["optimizer"] == "sgd"
    assert soft_entry["protocol"]["temperature"] == 2.0
    assert soft_entry["protocol"]["soft_label_mode"] == "M"
    assert (
        soft_entry["teacher"]["test_accuracy"]
        == read_json(teacher_dir / "teacher.json")["test_accuracy"]
    )
    assert soft_entry["accuracies"] != hard["accuracies"]


def test_stored_soft_labels_train_mode_s_and_a_wrong_shape_is_refused(tmp_path, digits):
    syn = random_subset(digits, 3, seed=0)
    shifted = 20.0 * F.one_hot((syn.labels + 1) % 10, 10).float()  # soft labels: the next class
    _save(tmp_path / "s", dataclasses.replace(syn, soft_labels=shifted))
    loaded = load_synthetic(tmp_path / "s")
    assert torch.equal(loaded.soft_labels, shifted)
    hard_cfg = dataclasses.replace(TINY, epochs=40, runs=1)
    soft = evaluate_set(
        loaded, digits, dataclasses.replace(hard_cfg, labels="soft", soft_label_mode="S"), False
    )
    hard = evaluate_set(loaded, digits, hard_cfg, progress=False)
    # trained on the stored labels, not the hard ones (train accuracy is against the hard ones)
    assert hard.train_accuracies[0] > 60.0 and soft.train_accuracies[0] < 20.0
    _save(tmp_path / "bad", dataclasses.replace(syn, soft_labels=shifted[:, :7]))
    with pytest.raises(
        RunFolderError, match=r"soft labels are .*\(30, 7\); expected float \(30, 10\)"
    ):
        load_synthetic(tmp_path / "bad")


def test_scores_are_stored_and_agree_with_the_recorded_accuracies(tmp_path, capsys):
    _save(tmp_path / "set", random_subset(load_dataset("digits"), 2, seed=5))
    args = ["--quiet", "evaluate", str(tmp_path / "set"), "--epochs", "2", "--runs", "2"]
    assert main([*args, "--precision", "fp32", "--scores", "--full-accuracy", "90"]) == 0
    out = capsys.readouterr().out
    assert "LRS" in out and "ARS" in out and "random subset" in out
    entry = read_json(tmp_path / "set" / "metrics.json")["scores"][0]
    acc = {k: v["per_run"] for k, v in entry["accuracies"].items()}
    want = label_robust_score(90.0, acc["syn_hard"][1], acc["syn_labels"][1], acc["rdm_labels"][1])
    assert entry["scores"]["lrs"]["per_run"][1] == pytest.approx(want["lrs"], abs=1e-6)
    assert entry["scores"]["hlr"]["per_run"][0] == pytest.approx(90.0 - acc["syn_hard"][0])
    assert (tmp_path / "set" / "random-ipc2-seed0" / "metrics.json").exists()
    # the noaug runs trained without augmentation: recorded under dsa false
    protocols = [
        e["protocol"]["dsa"] for e in read_json(tmp_path / "set" / "metrics.json")["evaluations"]
    ]
    assert sorted(protocols) == [False, True]


# --- DD-Ranking's formats ------------------------------------------------------------------------


def test_tensor_export_is_read_back_by_evaluate(tmp_path, digits):
    from ddm.interop import export_set, import_set

    syn = random_subset(digits, 3, seed=2)
    export_set(syn, tmp_path / "t", "tensors")
    info = read_json(tmp_path / "t" / "export.json")
    assert info["mean"] == list(digits.mean) and info["std"] == list(digits.std)
    back = import_set(tmp_path / "t", digits)
    order = torch.argsort(syn.labels, stable=True)
    assert torch.equal(back.labels, syn.labels[order])
    assert torch.allclose(back.images, syn.images[order], atol=1e-6)
    assert back.meta["source"]["normalisation"] == "the folder's mean.pt/std.pt"
    out = tmp_path / "t-eval"
    args = [str(tmp_path / "t"), "--dataset", "digits", "--epochs", "1", "--runs", "1"]
    assert main(["--quiet", "evaluate", *args, "--out", str(out)]) == 0
    assert read_json(out / "metrics.json")["evaluations"][0]["runs"] == 1


def test_ddranking_export_uses_its_constants_and_reads_back(tmp_path, cifar_root):
    import yaml

    from ddm.ddranking import DDRANKING_NORMALIZATION
    from ddm.interop import export_set, import_set

    cifar = load_dataset("cifar10", str(cifar_root))
    syn = random_subset(cifar, 2, seed=0)
    soft = torch.randn(len(syn.labels), 10)
    syn = dataclasses.replace(syn, soft_labels=soft)
    export_set(syn, tmp_path / "dd", "ddranking")
    images = torch.load(tmp_path / "dd" / "images.pt", weights_only=True)
    pixels = syn.images * torch.tensor(cifar.std).view(1, 3, 1, 1) + torch.tensor(cifar.mean).view(
        1, 3, 1, 1
    )
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in DDRANKING_NORMALIZATION["cifar10"])
    assert torch.allclose(images, (pixels - mean) / std, atol=1e-5)  # std 0.2023, not 0.2470
    assert std.flatten()[0].item() == pytest.approx(0.2023)
    assert torch.equal(torch.load(tmp_path / "dd" / "labels.pt", weights_only=True), soft)
    config = yaml.safe_load((tmp_path / "dd" / "ddranking.yaml").read_text())
    assert (config["dataset"], config["ipc"], config["model_name"]) == ("CIFAR10", 2, "ConvNet-3")
    assert config["soft_label_mode"] == "S" and config["loss_fn_kwargs"]["temperature"] == 1.2
    back = import_set(tmp_path / "dd", cifar)
    assert torch.allclose(back.images, syn.images, atol=1e-5)
    assert torch.equal(back.labels, syn.labels) and torch.equal(back.soft_labels, soft)
    # a bare pair is taken to be in DD-Ranking's normalisation
    (tmp_path / "dd" / "export.json").unlink()
    assert torch.allclose(import_set(tmp_path / "dd", cifar).images, syn.images, atol=1e-5)


def test_ddranking_config_gives_its_random_image_folders_a_tensor_transform():
    """DD-Ranking reads its random subsets (``random_data_format: image``) with
    ``ImageFolder(transform=custom_train_trans)``: None yields PIL images that its DataLoader
    cannot batch, so the config carries its own test-set transform."""
    from types import SimpleNamespace

    from ddm.ddranking import ddranking_config

    def transform(dataset: str, size: int) -> list:
        syn = SimpleNamespace(meta={"dataset": dataset}, images=torch.zeros(1, 3, size, size))
        config = ddranking_config(syn, 1, soft=False)
        assert config["random_data_format"] == "image"
        return config["custom_train_trans"]

    cifar = [
        {"name": "ToTensor"},
        {
            "name": "Normalize",
            "args": {"mean": [0.4914, 0.4822, 0.4465], "std": [0.2023, 0.1994, 0.2010]},
        },
    ]
    assert transform("cifar10", 32) == cifar
    nette = transform("imagenette", 128)
    assert nette[1]["args"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert nette[2:] == [
        {"name": "Resize", "args": [[128, 128]]},
        {"name": "CenterCrop", "args": [[128, 128]]},
    ]


def test_a_bare_pair_with_badly_shaped_soft_labels_is_refused(tmp_path, digits):
    from ddm.interop import ExternalSetError, import_set

    (tmp_path / "p").mkdir()
    torch.save(torch.zeros(20, 1, 8, 8), tmp_path / "p" / "images.pt")
    torch.save(torch.zeros(20, 9), tmp_path / "p" / "labels.pt")
    with pytest.raises(
        ExternalSetError, match=r"soft labels are .*\(20, 9\); expected float \(20, 10\)"
    ):
        import_set(tmp_path / "p", digits, mean=[0.5], std=[0.5])

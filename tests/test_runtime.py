"""The runtime (device, precision, threads, rank): resolved once at the entry point, passed down."""

from __future__ import annotations

import pytest
import torch

from ddm import distributed as dist
from ddm import runtime
from ddm import teacher as teacher_module
from ddm.config import CondenseConfig, EvalConfig
from ddm.data import load_dataset
from ddm.runtime import Runtime, resolve_device, resolve_precision

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.mark.parametrize("units", [False, True])
@pytest.mark.parametrize("faster", [False, True])
def test_resolve_makes_the_choice_resolve_precision_makes(monkeypatch, units, faster):
    monkeypatch.setattr(runtime, "_cpu_has_bf16_units", lambda: units)
    monkeypatch.setattr(runtime, "_cpu_bf16_faster", lambda: faster)
    for precision in ("auto", "fp32", "bf16"):
        for size in (None, 4, 7, 8, 32):
            want = resolve_precision(precision, CPU, size)
            got = Runtime.resolve("cpu", precision, image_size=size)
            assert got.precision == want, (precision, size)
            # resolved without the size first (the CLI), the floor applied later (the library)
            late = Runtime.resolve("cpu", precision)
            assert (late if size is None else late.for_images(size)).precision == want
            assert got.automatic == (precision == "auto")
    rt = Runtime.resolve()
    assert rt.device == resolve_device("auto")
    assert (rt.threads, rt.rank, rt.world_size) == (torch.get_num_threads(), 0, 1)


def test_the_image_size_floor_is_read_when_applied(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_has_bf16_units", lambda: True)
    monkeypatch.setattr(runtime, "_cpu_bf16_faster", lambda: True)
    rt = Runtime.resolve("cpu", "auto")
    monkeypatch.setattr(runtime, "BF16_MIN_IMAGE_SIZE", 16)
    assert rt.for_images(8).precision == "fp32" and rt.for_images(16).precision == "bf16"
    assert Runtime.resolve("cpu", "bf16").for_images(4).precision == "bf16"  # asked for: kept


def test_every_process_takes_the_first_ones_auto_choice(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_has_bf16_units", lambda: False)  # this process: fp32
    gathered = []

    def gather(obj):  # a first process that measured bf16 faster
        gathered.append(obj)
        return ["bf16", obj]

    monkeypatch.setattr(dist, "all_gather_object", gather)
    assert Runtime.resolve("cpu", "auto").precision == "bf16"
    assert Runtime.resolve("cpu", "fp32").precision == "fp32"  # asked for: nothing to agree on
    assert gathered == ["fp32"]


def test_autocast_follows_the_resolved_precision():
    x = torch.randn(2, 3)
    with Runtime(CPU, "bf16").autocast():
        assert torch.nn.functional.linear(x, torch.randn(4, 3)).dtype == torch.bfloat16
    with Runtime(CPU, "fp32").autocast():
        assert torch.nn.functional.linear(x, torch.randn(4, 3)).dtype == torch.float32


@pytest.fixture
def no_resolution_below(monkeypatch):
    """Fail any attempt to resolve auto (or any precision) below the entry point."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"resolved below the entry point: {args} {kwargs}")

    def device(name, *args):
        if name == "auto":
            refuse(name)
        return resolve_device(name)

    monkeypatch.setattr(runtime, "resolve_precision", refuse)
    monkeypatch.setattr(Runtime, "resolve", classmethod(refuse))
    monkeypatch.setattr(Runtime, "with_precision", refuse)
    for module in (runtime, dist, teacher_module):
        monkeypatch.setattr(module, "resolve_device", device)


def test_library_functions_given_a_runtime_never_resolve_auto(
    digits, tmp_path, no_resolution_below
):
    from ddm.baselines import herding, make_baseline
    from ddm.condense import condense
    from ddm.diagnose import diagnose
    from ddm.evaluate import evaluate_folder, evaluate_run, evaluate_set, train_and_test
    from ddm.io import read_json
    from ddm.pool import PoolConfig, train_pool
    from ddm.scores import score_set
    from ddm.teacher import TeacherConfig, train_teacher

    rt = Runtime(CPU, "fp32")
    cfg = CondenseConfig(dataset="digits", ipc=1, iterations=1, batch_real=8)  # auto, auto
    syn = condense(cfg, tmp_path / "run", progress=False, runtime=rt)
    syn = condense(
        CondenseConfig(dataset="digits", ipc=1, iterations=2, batch_real=8),
        tmp_path / "run",
        resume=True,
        progress=False,
        runtime=rt,
    )
    assert read_json(tmp_path / "run" / "config.json")["precision"] == "fp32"
    ecfg = EvalConfig(epochs=1, runs=1)  # device and precision auto
    assert evaluate_set(syn, digits, ecfg, progress=False, runtime=rt).precision == "fp32"
    evaluate_folder(tmp_path / "run", syn, digits, ecfg, progress=False, runtime=rt)
    evaluate_run(tmp_path / "run", ecfg, dataset=digits, progress=False, runtime=rt)
    x, y = syn.images, syn.labels
    train_and_test(x, y, x, y, num_classes=10, strategy="none", cfg=ecfg, runtime=rt)
    score_set(tmp_path / "run", syn, digits, ecfg, full_accuracy=90.0, progress=False, runtime=rt)
    herding(digits, 1, epochs=1, progress=False, runtime=rt)
    make_baseline("herding", digits, 1, herding_epochs=1, progress=False, runtime=rt)
    diagnose(syn, digits, nets=1, batch=8, runtime=rt)
    teacher_cfg = TeacherConfig(dataset="digits", epochs=1)
    train_teacher(digits, teacher_cfg, tmp_path / "teacher", progress=False, runtime=rt)
    train_teacher(digits, teacher_cfg, tmp_path / "teacher", progress=False, runtime=rt)  # done
    soft = EvalConfig(epochs=1, runs=1, labels="soft", teacher=str(tmp_path / "teacher"))
    evaluate_set(syn, digits, soft, progress=False, runtime=rt)
    pool_cfg = PoolConfig(dataset="digits", networks=1, epochs=1)
    train_pool(pool_cfg, tmp_path / "pool", dataset=digits, progress=False, runtime=rt)


def test_continual_resolves_only_its_condensation_precision_at_the_top(
    digits, tmp_path, monkeypatch
):
    from ddm.continual import ContinualConfig, run_continual

    calls = []
    real = runtime.resolve_precision

    def spy(precision, *args, **kwargs):
        calls.append(precision)
        return real(precision, *args, **kwargs)

    monkeypatch.setattr(runtime, "resolve_precision", spy)
    settings = ContinualConfig(
        dataset="digits", method="dm", steps=2, ipc=1, orders=1, runs=1, epochs=1,
        iterations=1, batch_real=8, device="cpu", eval_precision="auto",
    )  # fmt: skip
    run_continual(settings, tmp_path / "c", progress=False, dataset=digits, runtime=Runtime(CPU))
    assert calls == ["auto"]  # the condensation's default, once; condense and training: none

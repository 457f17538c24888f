"""--precision auto | fp32 | bf16: the automatic choice, and bf16 runs end to end."""

from __future__ import annotations

import math

import pytest
import torch

from ddm import runtime
from ddm.config import CondenseConfig, EvalConfig
from ddm.runtime import autocast, bf16_fast, resolve_precision

CPU = torch.device("cpu")


def test_auto_follows_the_capability_query(monkeypatch):
    monkeypatch.setattr(runtime, "_cpu_has_bf16_units", lambda: True)
    monkeypatch.setattr(runtime, "_cpu_bf16_faster", lambda: True)  # and the probe agrees
    assert bf16_fast(CPU) and resolve_precision("auto", CPU) == "bf16"
    monkeypatch.setattr(runtime, "_cpu_has_bf16_units", lambda: False)
    assert not bf16_fast(CPU) and resolve_precision("auto", CPU) == "fp32"
    # explicit choices are kept whatever the hardware
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("fp32", CPU) == "fp32"


def test_auto_keeps_images_below_the_measured_sizes_in_float32(monkeypatch):
    # measured: bf16 is faster from 8 x 8 (the smallest size measured) up
    monkeypatch.setattr(runtime, "_cpu_has_bf16_units", lambda: True)
    monkeypatch.setattr(runtime, "_cpu_bf16_faster", lambda: True)  # and the probe agrees
    assert runtime.BF16_MIN_IMAGE_SIZE == 8
    assert resolve_precision("auto", CPU, image_size=4) == "fp32"
    assert resolve_precision("auto", CPU, image_size=7) == "fp32"
    assert resolve_precision("auto", CPU, image_size=8) == "bf16"
    assert resolve_precision("auto", CPU, image_size=32) == "bf16"
    assert resolve_precision("bf16", CPU, image_size=4) == "bf16"  # asked for explicitly
    monkeypatch.setattr(runtime, "_cpu_has_bf16_units", lambda: False)
    assert resolve_precision("auto", CPU, image_size=64) == "fp32"


def test_auto_takes_bf16_only_where_the_probe_measured_it_faster(monkeypatch):
    # a KVM guest showing avx512_bf16 without AMX measured bf16 1.4-1.75x slower than float32:
    # the units' flags say yes, the probe says no, and auto keeps float32
    monkeypatch.setattr(runtime, "_cpu_has_bf16_units", lambda: True)
    for speedup, expected in ((0.57, "fp32"), (1.2, "fp32"), (1.25, "bf16"), (1.9, "bf16")):
        monkeypatch.setattr(runtime, "_cpu_bf16_speedup", lambda threads, s=speedup: s)
        assert resolve_precision("auto", CPU, image_size=32) == expected, speedup
    assert resolve_precision("bf16", CPU, image_size=32) == "bf16"  # asked for: kept

    def no_probe(threads):
        raise AssertionError("the probe runs only where the units exist")

    monkeypatch.setattr(runtime, "_cpu_bf16_speedup", no_probe)
    monkeypatch.setattr(runtime, "_cpu_has_bf16_units", lambda: False)
    assert resolve_precision("auto", CPU, image_size=32) == "fp32"


def test_the_probe_measures_once_per_thread_count():
    runtime._cpu_bf16_speedup.cache_clear()
    threads = torch.get_num_threads()
    first = runtime._cpu_bf16_speedup(threads)
    assert math.isfinite(first) and first > 0
    assert runtime._cpu_bf16_speedup(threads) == first  # cached, not measured again
    info = runtime._cpu_bf16_speedup.cache_info()
    assert (info.hits, info.misses) == (1, 1)
    assert runtime._cpu_bf16_faster() == (first >= runtime.BF16_MIN_SPEEDUP)


def test_resume_under_auto_keeps_the_precision_the_run_chose(tmp_path, monkeypatch):
    # the probe may answer otherwise later (another machine, a busy one): auto then resumes
    # in the run's own precision instead of refusing the resume as a change of settings
    from ddm.condense import condense
    from ddm.io import read_json

    cfg = CondenseConfig(
        dataset="digits", ipc=1, iterations=2, batch_real=8, precision="auto", checkpoint_every=1
    )
    monkeypatch.setattr(runtime, "_cpu_has_bf16_units", lambda: True)
    monkeypatch.setattr(runtime, "_cpu_bf16_faster", lambda: True)
    condense(cfg, tmp_path / "run", progress=False, stop_after=1)
    assert read_json(tmp_path / "run" / "config.json")["precision"] == "bf16"
    monkeypatch.setattr(runtime, "_cpu_bf16_faster", lambda: False)
    assert resolve_precision("auto", CPU, 8) == "fp32"
    syn = condense(cfg, tmp_path / "run", resume=True, progress=False)
    assert syn.meta["iterations"] == 2 and syn.meta["precision"] == "bf16"
    assert read_json(tmp_path / "run" / "config.json")["precision"] == "bf16"


def test_defaults_auto_for_condensation_and_the_protocol():
    assert CondenseConfig().precision == "auto"
    assert EvalConfig().precision == "auto"


def test_default_condensation_resolves_by_hardware_and_image_size(tmp_path, monkeypatch):
    from ddm.condense import condense
    from ddm.data.core import Dataset, Split
    from ddm.io import read_json

    monkeypatch.setattr(runtime, "_cpu_has_bf16_units", lambda: True)
    monkeypatch.setattr(runtime, "_cpu_bf16_faster", lambda: True)  # and the probe agrees
    cfg = CondenseConfig(dataset="digits", ipc=1, iterations=1, batch_real=8)  # 8 x 8 images
    condense(cfg, tmp_path / "digits", progress=False)
    assert read_json(tmp_path / "digits" / "config.json")["precision"] == "bf16"
    # the floor is read at run time: raised above 8, digits stay float32, 16 x 16 images not
    monkeypatch.setattr(runtime, "BF16_MIN_IMAGE_SIZE", 16)
    condense(cfg, tmp_path / "digits16", progress=False)
    assert read_json(tmp_path / "digits16" / "config.json")["precision"] == "fp32"
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 16, 16), generator=g, dtype=torch.uint8)
    labels = torch.arange(4).repeat_interleave(10)
    train, test = Split(images, labels, 4), Split(images[::5], labels[::5], 4)
    big = Dataset.from_splits("tiny16", ("a", "b", "c", "d"), train, test)
    condense(
        CondenseConfig(dataset="tiny16", ipc=1, iterations=1, batch_real=4),
        tmp_path / "tiny16",
        dataset=big,
        progress=False,
    )
    assert read_json(tmp_path / "tiny16" / "config.json")["precision"] == "bf16"


def test_cpu_query_falls_back_to_cpuinfo(monkeypatch):
    class NoQuery:  # an older torch without the oneDNN query
        pass

    monkeypatch.setattr(torch.ops, "mkldnn", NoQuery(), raising=False)
    assert isinstance(runtime._cpu_has_bf16_units(), bool)


def _cpu(monkeypatch, *, onednn, avx512_bf16=False, amx=False, machine="x86_64", cap=None):
    """Pretend to be a CPU: oneDNN's answer, the x86 units, the architecture, the ISA cap."""
    monkeypatch.setattr(runtime, "_onednn_bf16_query", lambda: onednn)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(runtime.platform, "machine", lambda: machine)
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    if cap is not None:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    monkeypatch.setattr(runtime, "_cpu_bf16_faster", lambda: True)  # the units are the question
    return resolve_precision("auto", CPU, image_size=32)


def test_auto_needs_bf16_units_not_only_avx512(monkeypatch):
    # Cascade Lake / Ice Lake: oneDNN says bf16 is supported (emulated), but there are no units
    assert _cpu(monkeypatch, onednn=True) == "fp32"
    assert _cpu(monkeypatch, onednn=True, avx512_bf16=True) == "bf16"  # Cooper Lake, Zen 4
    assert _cpu(monkeypatch, onednn=True, amx=True) == "bf16"  # Sapphire Rapids
    assert _cpu(monkeypatch, onednn=None, avx512_bf16=True) == "bf16"  # torch without the query
    assert _cpu(monkeypatch, onednn=False, avx512_bf16=True) == "fp32"  # oneDNN will not run it
    # oneDNN capped below the bf16 instructions: emulated even where the units exist
    assert _cpu(monkeypatch, onednn=True, avx512_bf16=True, cap="avx512_core_vnni") == "fp32"
    assert _cpu(monkeypatch, onednn=True, avx512_bf16=True, cap="AVX2") == "fp32"
    assert _cpu(monkeypatch, onednn=True, avx512_bf16=True, cap="AVX512_CORE_BF16") == "bf16"
    assert _cpu(monkeypatch, onednn=True, avx512_bf16=True, cap="AVX512_CORE_AMX") == "bf16"
    # other architectures: oneDNN's query (on ARM it checks the bf16 extension)
    assert _cpu(monkeypatch, onednn=True, machine="aarch64") == "bf16"
    assert _cpu(monkeypatch, onednn=False, machine="aarch64") == "fp32"
    assert _cpu(monkeypatch, onednn=None, machine="aarch64") == "fp32"


def test_cuda_bf16_needs_tensor_cores_not_emulation(monkeypatch):
    class Props:
        def __init__(self, major):
            self.major = major

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation too
    for major, fast in ((7, False), (8, True), (9, True)):  # V100 / T4, A100, H100
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i, m=major: Props(m))
        assert bf16_fast(torch.device("cuda", 0)) is fast
        assert resolve_precision("auto", torch.device("cuda", 0)) == ("bf16" if fast else "fp32")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not bf16_fast(torch.device("cuda", 0))


def test_x86_units_fall_back_to_cpuinfo_flags(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert runtime._x86_bf16_units()
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: {"avx512f", "avx512_vnni"})
    assert not runtime._x86_bf16_units()


def test_auto_under_a_real_onednn_isa_cap_is_float32():
    # not mocked: a fresh process whose oneDNN is capped at AVX-512 without bf16 (as on a
    # Cascade Lake machine) must keep float32, whatever this machine's CPU has
    import os
    import subprocess
    import sys

    code = "import torch; from ddm.runtime import resolve_precision as r; "
    code += "print(r('auto', torch.device('cpu'), 32))"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "fp32"


def test_unknown_precision_is_one_clear_error():
    with pytest.raises(ValueError, match="known: auto, fp32, bf16"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match="unknown precision"):
        CondenseConfig(precision="half").resolved()
    with pytest.raises(ValueError, match="unknown precision"):
        EvalConfig(precision="half")


def test_autocast_only_under_bf16():
    lin = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    with autocast("bf16", CPU):
        assert lin(x).dtype == torch.bfloat16
    with autocast("fp32", CPU):
        assert lin(x).dtype == torch.float32


@pytest.mark.parametrize("method", ["dm", "ddm"])
def test_bf16_condensation_runs_and_records_precision(tmp_path, method):
    from ddm.condense import condense
    from ddm.io import read_json

    cfg = CondenseConfig(
        dataset="digits", ipc=2, method=method, iterations=2, batch_real=16, precision="bf16"
    )
    syn = condense(cfg, tmp_path / "run", progress=False)
    assert torch.isfinite(syn.images).all() and syn.images.dtype == torch.float32
    assert syn.meta["precision"] == "bf16"
    assert read_json(tmp_path / "run" / "meta.json")["precision"] == "bf16"
    assert read_json(tmp_path / "run" / "config.json")["precision"] == "bf16"


def test_auto_is_recorded_resolved(tmp_path, monkeypatch):
    from ddm.condense import condense
    from ddm.io import read_json

    monkeypatch.setattr(runtime, "_cpu_has_bf16_units", lambda: False)
    cfg = CondenseConfig(dataset="digits", ipc=1, iterations=1, batch_real=8, precision="auto")
    condense(cfg, tmp_path / "run", progress=False)
    assert read_json(tmp_path / "run" / "config.json")["precision"] == "fp32"
    assert read_json(tmp_path / "run" / "meta.json")["precision"] == "fp32"


def test_resume_refuses_a_precision_change(tmp_path):
    from ddm.condense import condense
    from ddm.io import RunFolderError

    cfg = CondenseConfig(
        dataset="digits", ipc=1, iterations=2, batch_real=8, precision="fp32", checkpoint_every=1
    )
    condense(cfg, tmp_path / "run", progress=False, stop_after=1)
    other = CondenseConfig(**{**cfg.to_dict(), "precision": "bf16"})
    with pytest.raises(RunFolderError, match="precision"):
        condense(other, tmp_path / "run", resume=True, progress=False)
    condense(cfg, tmp_path / "run", resume=True, progress=False)  # the same precision resumes


def test_old_runs_without_precision_resume_as_fp32():
    from ddm.condense import _check_resumable
    from ddm.io import RunFolderError

    cfg = CondenseConfig(dataset="digits", precision="fp32").resolved()
    saved = {k: v for k, v in cfg.to_dict().items() if k != "precision"}
    _check_resumable({**saved, "bf16": False}, cfg)
    with pytest.raises(RunFolderError, match="precision"):
        _check_resumable({**saved, "bf16": True}, cfg)


def test_bf16_evaluation_trains_and_records_precision(tmp_path, monkeypatch):
    from ddm.data import load_dataset
    from ddm.evaluate import evaluate_set

    dataset = load_dataset("digits")
    g = torch.Generator().manual_seed(0)
    images = torch.cat([dataset.class_batch(c, 2, g) for c in range(dataset.num_classes)])
    labels = torch.arange(dataset.num_classes).repeat_interleave(2)
    cfg = EvalConfig(epochs=2, runs=1, precision="bf16")
    result = evaluate_set((images, labels), dataset, cfg, progress=False)
    assert 0.0 <= result.mean <= 100.0
    assert result.to_dict(cfg)["protocol"]["precision"] == "bf16"
    auto = EvalConfig(epochs=1, runs=1, precision="auto")
    monkeypatch.setattr(runtime, "_cpu_bf16_faster", lambda: True)
    for units, expected in ((True, "bf16"), (False, "fp32")):  # auto follows the hardware
        monkeypatch.setattr(runtime, "_cpu_has_bf16_units", lambda units=units: units)
        result = evaluate_set((images, labels), dataset, auto, progress=False)
        assert result.to_dict(auto)["protocol"]["precision"] == expected


@pytest.mark.parametrize("tap", ["conv", "act"])
def test_real_statistics_fast_paths_match_the_maps(tap):
    """The first conv-tap Gram from patches, bf16 products and the group-norm moments give
    the statistics the maps give in float32."""
    from ddm.augment import sample_params
    from ddm.losses import mean_gram, persample_moments
    from ddm.models import build_model
    from ddm.objective import Weights as _Weights
    from ddm.objective import input_conv as _input_conv
    from ddm.objective import real_statistics

    torch.manual_seed(0)
    net = build_model("convnet", 3, 4, 16).requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(12, 3, 16, 16, generator=gen) for _ in range(2)]
    params = [sample_params("none", 3, (16, 16), gen, siamese=True) for _ in range(2)]
    moments = "persample" if tap == "conv" else "batch"
    w = _Weights(1.0, 1.0, 0.0, 0, True, tap=tap, moments=moments)
    assert (_input_conv(net, w) is not None) == (tap == "conv")
    cpu = torch.device("cpu")
    fp32 = real_statistics(net, batches, params, w, 0, cpu, autocast("fp32", CPU), False)
    bf16 = real_statistics(
        net, batches, params, w, 0, cpu, autocast("bf16", CPU), False, torch.bfloat16
    )
    for c, batch in enumerate(batches):
        _, maps = net.embed_and_maps(batch, tap=tap)
        for layer, m in enumerate(maps):
            exact = mean_gram(m.double())
            torch.testing.assert_close(fp32[c].grams[layer].double(), exact, rtol=1e-4, atol=1e-6)
            scale = exact.abs().max()
            assert (bf16[c].grams[layer].double() - exact).abs().max() < 2e-2 * scale
            if moments == "persample":
                mu = persample_moments(m.double())[0].mean(0)
                torch.testing.assert_close(fp32[c].mu[layer].double(), mu, rtol=1e-4, atol=1e-5)
                assert bf16[c].mu[layer].dtype == torch.float32
            else:
                mean = m.double().mean(0)
                got = fp32[c].map_means[layer].double()
                torch.testing.assert_close(got, mean, rtol=1e-4, atol=1e-5)
                assert bf16[c].map_means[layer].dtype == torch.float32


def test_every_process_takes_the_first_ones_precision(tmp_path, monkeypatch):
    # auto's probe is timed in each process: under torchrun the first process's answer is
    # everyone's, for condensation and for the evaluation's training (here the "first
    # process" says bf16 while this one measured float32)
    from ddm import distributed as dist
    from ddm.condense import condense
    from ddm.data import load_dataset
    from ddm.evaluate import evaluate_set
    from ddm.io import read_json

    monkeypatch.setattr(runtime, "_cpu_has_bf16_units", lambda: False)

    def gather(obj):  # a second process with another answer; other objects as one process
        return ["bf16", obj] if isinstance(obj, str) else [obj]

    monkeypatch.setattr(dist, "all_gather_object", gather)
    cfg = CondenseConfig(dataset="digits", ipc=1, iterations=1, batch_real=8, precision="auto")
    syn = condense(cfg, tmp_path / "run", progress=False)
    assert read_json(tmp_path / "run" / "config.json")["precision"] == "bf16"
    result = evaluate_set(
        syn, load_dataset("digits"), EvalConfig(epochs=1, runs=1, precision="auto"), progress=False
    )
    assert result.precision == "bf16"

"""Several processes (torchrun, gloo on CPU) give what one process gives.

Each launch is a real ``torchrun --nproc-per-node 2 -m ddm ...`` of two one-thread processes
on the embedded digits dataset at a tiny budget; the reference is the same job in one
process (this one, one thread).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ddm import distributed as dist
from ddm.cli import main
from ddm.condense import condense
from ddm.config import CondenseConfig, EvalConfig
from ddm.data import load_dataset
from ddm.evaluate import evaluate_set
from ddm.io import RunFolderError, load_synthetic, load_tensors, read_json

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = ["--dataset", "digits", "--ipc", "2", "--batch-real", "16", "--precision", "fp32"]
IDM = ["--method", "idm"]

pytestmark = pytest.mark.skipif(
    not (dist.tdist.is_available() and dist.tdist.is_gloo_available()),
    reason="torch.distributed with gloo is not available",
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def one_thread():
    torch.set_num_threads(1)  # the launched ranks run one thread each
    yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun(nproc: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "ddm",
        "--quiet",
        *args,
    ]


def _launch(*args: str, nproc: int = 2, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _torchrun(nproc, *args), env=_env(), capture_output=True, text=True, timeout=300
    )
    if ok:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _config(args: list[str]) -> CondenseConfig:
    from ddm.cli import _condense_config, build_parser

    parsed = build_parser().parse_args(["condense", *args, "--out", "unused"])
    return _condense_config(parsed)


# --- the module in one process ------------------------------------------------------------------


def test_shards_are_contiguous_blocks_covering_everything():
    for n in (1, 7, 10, 100):
        for world in range(1, min(n, 9) + 1):
            blocks = [dist.shard(n, world, r) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
            assert dist.shard_counts(n, world) == [len(b) for b in blocks]


def test_helpers_are_identity_in_one_process():
    assert not dist.active() and dist.rank() == 0 and dist.world_size() == 1 and dist.is_main()
    assert dist.shard(10) == range(10) and dist.round_robin(5) == range(5)
    t = torch.arange(6.0).view(3, 2)
    assert dist.all_reduce_sum(t) is t and dist.gather_rows(t, [3]) is t
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}]
    assert dist.on_main(lambda x: x + 1, 1) == 2
    before = t.clone()
    dist.broadcast_([t], src=0)
    assert torch.equal(t, before)


def test_a_rank_closes_its_group_then_leaves_without_teardown(monkeypatch, capsys):
    """With a process group open, main closes it and ends the process with os._exit (the
    interpreter's teardown could abort a rank: see ddm.cli.main); without one it returns."""
    calls: list = []
    state = {"open": True}

    def shutdown():
        calls.append("shutdown")
        state["open"] = False

    monkeypatch.setattr(dist, "active", lambda: state["open"])
    monkeypatch.setattr(dist, "shutdown", shutdown)
    monkeypatch.setattr(dist, "barrier", lambda: None)
    monkeypatch.setattr("ddm.cli.os._exit", lambda code: calls.append(("exit", code)))
    assert main(["--quiet", "presets"]) == 0
    assert calls == ["shutdown", ("exit", 0)]
    assert "released" in capsys.readouterr().out  # printed (and flushed) before leaving
    calls.clear()
    assert main(["--quiet", "presets"]) == 0  # no group now: a plain return
    assert calls == ["shutdown"]


def test_other_commands_refuse_torchrun(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert main(["--quiet", "show", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ddm[rank 1]: error" in err and "only condense and evaluate" in err


# --- two processes against one ------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        ["--method", "dm"],
        ["--method", "ddm", "--form", "paper"],
        ["--method", "ddm", "--form", "released", "--lr-img", "0.05"],
        # IDM: its queue models are trained whole, each on one rank, and copied to the others
        [*IDM, "--ipc", "4", "--model-batch", "32", "--model-train-steps", "2"],
        [*IDM, "--ipc", "1", "--model-train-steps", "3"],  # the default batch: 256 images
        # another seed; 3 models trained per iteration (2 on rank 0, 1 on rank 1), and the
        # queue grows and drops its oldest model
        [*IDM, "--seed", "7", "--model-batch", "24", "--model-train-steps", "2"]
        + ["--fetch-net-num", "3", "--net-generate-interval", "2", "--net-num", "4"],
        [*IDM, "--ipc", "4", "--model-batch", "32", "--model-train-steps", "2"]
        + ["--precision", "bf16"],
        ["--method", "ddm", "--base", "idm", "--model-batch", "32", "--model-train-steps", "2"],
    ],
    ids=[
        "dm",
        "ddm-paper",
        "ddm-released",
        "idm-batch32-steps2-ipc4",
        "idm-default-batch-ipc1",
        "idm-seed7-fetch3",
        "idm-bf16",
        "ddm-on-idm",
    ],
)
def test_two_ranks_condense_the_set_of_one_process(tmp_path, digits, one_thread, method):
    """The set, the checkpoint and the log of two ranks are those of one process.

    On the IDM base the queue (models, momentum, running accuracies) must be equal bit for bit:
    matching against it amplifies any rounding in it (1e-7 in the queue became 1e-2 in the set
    within three iterations when the ranks shared each queue-training batch).
    """
    args = [*TINY, "--iterations", "3", *method]
    one = condense(_config(args), tmp_path / "one", dataset=digits, progress=False)
    _launch("condense", *args, "--out", str(tmp_path / "two"))
    two = load_synthetic(tmp_path / "two")
    assert two.meta["iterations"] == 3 and torch.equal(one.labels, two.labels)
    assert (one.images - two.images).abs().max() <= 1e-5
    a = load_tensors(tmp_path / "one/checkpoint.safetensors")
    b = load_tensors(tmp_path / "two/checkpoint.safetensors")
    assert a.keys() == b.keys()  # the checkpoint of N ranks is that of one process
    assert (a["momentum"] - b["momentum"]).abs().max() <= 1e-5
    for key in a:  # IDM's queue models and their momentum: bit for bit
        if key.startswith("queue"):
            assert torch.equal(a[key], b[key]), key
    assert two.meta["precision"] == one.meta["precision"]
    queue = []  # IDM's queue ids and running accuracies (the CE term's weights)
    for run in ("one", "two"):
        with safe_open(str(tmp_path / run / "checkpoint.safetensors"), "pt") as f:
            queue.append(f.metadata().get("queue"))
    assert queue[0] == queue[1]
    # the log holds every class's terms, summed over the ranks
    log_one = (tmp_path / "one/log.csv").read_text().splitlines()
    log_two = (tmp_path / "two/log.csv").read_text().splitlines()
    assert len(log_one) == len(log_two) == 4
    for r1, r2 in zip(log_one[1:], log_two[1:], strict=True):
        v1, v2 = [float(v) for v in r1.split(",")[1:9]], [float(v) for v in r2.split(",")[1:9]]
        assert v1 == pytest.approx(v2, rel=1e-4, abs=1e-6)


def test_killed_two_rank_run_resumes_on_one_or_two_ranks(tmp_path, digits, one_thread):
    """SIGKILL a 2-rank run mid-way; resuming on 2 ranks and on 1 ends where a clean run ends."""
    args = [*TINY, "--iterations", "40", "--checkpoint-every", "5"]
    clean = condense(_config(args), tmp_path / "clean", dataset=digits, progress=False)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _torchrun(2, "condense", *args, "--out", str(killed)),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the launcher and both ranks
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            if read_json(killed / "meta.json").get("iterations", 0) >= 10:
                break
        except (RunFolderError, ValueError):  # not written yet, or being replaced
            pass
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = load_synthetic(killed).meta["iterations"]
    assert 10 <= done < 40, "the run was not interrupted mid-way"
    shutil.copytree(killed, tmp_path / "killed-1")
    _launch("condense", *args, "--out", str(killed), "--resume")
    on_one = condense(
        _config(args), tmp_path / "killed-1", dataset=digits, progress=False, resume=True
    )
    on_two = load_synthetic(killed)
    assert on_two.meta["iterations"] == on_one.meta["iterations"] == 40
    assert (clean.images - on_two.images).abs().max() <= 1e-5
    assert (clean.images - on_one.images).abs().max() <= 1e-5
    rows = (killed / "log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, 41))


@pytest.mark.slow
def test_idm_run_of_two_ranks_resumes_on_one(tmp_path, digits, one_thread):
    """IDM's queue (trained with DDP) is in the checkpoint of every rank count."""
    args = [*TINY, "--method", "idm", "--model-train-steps", "1", "--model-batch", "16"]
    args += ["--net-generate-interval", "2"]
    full = condense(_config([*args, "--iterations", "5"]), None, dataset=digits, progress=False)
    _launch("condense", *args, "--iterations", "3", "--out", str(tmp_path / "r"))
    resumed = condense(
        _config([*args, "--iterations", "5"]),
        tmp_path / "r",
        dataset=digits,
        progress=False,
        resume=True,
    )
    assert (full.images - resumed.images).abs().max() <= 1e-5


def test_two_ranks_evaluate_like_one_process(tmp_path, digits, one_thread):
    condense(
        _config([*TINY, "--iterations", "2"]), tmp_path / "set", dataset=digits, progress=False
    )
    cfg = EvalConfig(epochs=15, runs=3)
    one = evaluate_set(load_synthetic(tmp_path / "set"), digits, cfg, progress=False)
    proc = _launch("evaluate", str(tmp_path / "set"), "--epochs", "15", "--runs", "3")
    entry = read_json(tmp_path / "set/metrics.json")["evaluations"][0]
    assert entry["accuracies"] == pytest.approx(one.accuracies, abs=1e-3)
    assert entry["runs"] == 3
    assert proc.stdout.count("3 runs, ") == 1  # rank 0 prints


def test_batchnorm_matching_network_is_refused_on_two_ranks(digits, monkeypatch):
    """Batch norm mixes all classes in one forward: sharding would change it, so it is refused."""
    monkeypatch.setattr(dist, "world_size", lambda: 2)  # as if torchrun had started two
    cfg = CondenseConfig(dataset="digits", ipc=2, model="convnet_bn", iterations=1)
    with pytest.raises(ValueError, match="batch norm.*one process"):
        condense(cfg, None, dataset=digits, progress=False)
    cfg = CondenseConfig(dataset="digits", ipc=2, iterations=1)
    monkeypatch.setattr(dist, "world_size", lambda: 11)
    with pytest.raises(ValueError, match="11 processes for 10 classes"):
        condense(cfg, None, dataset=digits, progress=False)

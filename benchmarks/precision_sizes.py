"""Where bf16 autocast pays, by image size: bf16 / float32 time of a ConvNet condensation step
and of an evaluation training step, interleaved in one process (ratios, not absolute times).

The condensation step is DM's: a no-grad forward of the real batch and a forward + backward of
the synthetic images; the training step is one SGD step of the network on a batch of 256. This
is what ``ddm.runtime.BF16_MIN_IMAGE_SIZE`` (``--precision auto`` keeps smaller images in
float32) was chosen from. Meaningful only on hardware with bf16 units (elsewhere bf16 is
emulated and the ratios are above 1). A CPU without them can be imitated on one that has them by
capping oneDNN (as on Cascade Lake; ``--precision auto`` then resolves to fp32):

    python benchmarks/precision_sizes.py --threads 1
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI python benchmarks/precision_sizes.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from ddm.models import ConvNet
from ddm.runtime import auto_precision_verdict, tune_allocator

# (channels, side, ConvNet depth): digits, a 16 x 16 set, MNIST, CIFAR, Tiny-ImageNet
SHAPES = ((1, 8, 2), (3, 16, 3), (1, 28, 3), (3, 32, 3), (3, 64, 4))


def ratios(channels: int, side: int, depth: int, n_real: int, reps: int) -> tuple[float, float]:
    """(condensation step, training step): bf16 time / float32 time."""
    torch.manual_seed(0)
    net = ConvNet(channels, 10, image_size=side, depth=depth)
    real = torch.randn(n_real, channels, side, side)
    syn = torch.randn(100, channels, side, side, requires_grad=True)

    def condense_step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            with torch.no_grad():
                target = net.embed(real).float().mean(0)
            out = net.embed(syn).float().mean(0)
        (target - out).pow(2).sum().backward()

    def train_step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = net(real[:256])
        logits.float().logsumexp(1).mean().backward()

    result = []
    for step in (condense_step, train_step):
        for bf16 in (False, True):  # warm-up
            step(bf16)
        spent = {False: 0.0, True: 0.0}
        for _ in range(reps):
            for bf16 in (False, True):
                t0 = time.perf_counter()
                step(bf16)
                spent[bf16] += time.perf_counter() - t0
        result.append(spent[True] / spent[False])
    return result[0], result[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--real", type=int, default=1280, help="real images per step")
    parser.add_argument("--reps", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tune_allocator()
    print(f"{auto_precision_verdict()}; {args.threads} thread(s); bf16 time / float32 time\n")
    print("| images | ConvNet depth | condensation step | training step |")
    print("|---|---|---|---|")
    for channels, side, depth in SHAPES:
        cond, train = ratios(channels, side, depth, args.real, args.reps)
        print(f"| {channels}x{side}x{side} | {depth} | {cond:.2f} | {train:.2f} |", flush=True)


if __name__ == "__main__":
    main()

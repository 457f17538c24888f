"""``ddm baseline``: a random-subset or herding set in the run format."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import _summary, _write_set


def cmd_baseline(args: argparse.Namespace) -> int:
    from ..baselines import BASELINE_SETTINGS, baseline, make_baseline
    from ..condense import check_run_folder, open_run_folder
    from ..data import load_dataset
    from ..runtime import Runtime

    baseline(args.method)  # an unknown name fails before anything is loaded
    if args.ipc <= 0:
        raise ValueError(f"--ipc must be positive, got {args.ipc}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    out = Path(args.out)
    check_run_folder(out, resume=False, overwrite=args.overwrite)  # created once the set is made
    dataset = load_dataset(args.dataset, args.data_root, args.image_size).holdout(args.holdout)
    syn = make_baseline(  # meta records the holdout
        args.method,
        dataset,
        args.ipc,
        seed=args.seed,
        herding_epochs=args.herding_epochs,
        progress=not args.quiet,
        # a device only for the baselines that compute (herding trains a network, in float32)
        runtime=(
            Runtime.resolve(args.device, "fp32")
            if "device" in BASELINE_SETTINGS[args.method]
            else None
        ),
    )
    # by flag name, so the saved config.json is a valid --config
    settings = {
        "method": args.method,
        "dataset": args.dataset,
        "data_root": args.data_root,
        "image_size": args.image_size,
        "holdout": args.holdout,
        "ipc": args.ipc,
        "seed": args.seed,
    }
    settings.update({name: getattr(args, name) for name in BASELINE_SETTINGS[args.method]})
    folder = open_run_folder(out, resume=False, overwrite=args.overwrite)
    try:
        _write_set(out, syn, settings)
    except BaseException:
        folder.close(failed=True)
        raise
    folder.close()
    print(_summary(out))
    return 0

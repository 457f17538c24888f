"""``ddm show`` and ``ddm export``: a run's grid and curves, its set in other formats."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import _summary


def cmd_show(args: argparse.Namespace) -> int:
    from ..curves import CURVES_FILE, save_curves
    from ..io import load_synthetic, save_grid

    folder = Path(args.run)
    syn = load_synthetic(folder)
    save_grid(folder / "grid.png", syn.denormalized(), syn.labels)
    written = ["grid.png"]
    if args.expanded or syn.expansion_factor > 1:
        images, labels = syn.expanded()
        save_grid(folder / "grid_expanded.png", syn.denormalized(images), labels)
        written.append("grid_expanded.png")
    m = syn.meta
    title = f"{folder.name}: {m.get('method')} on {m.get('dataset')}"
    if save_curves(folder / "log.csv", folder / CURVES_FILE, title=title):
        written.append(CURVES_FILE)
    print(_summary(folder))
    print(f"wrote {', '.join(str(folder / name) for name in written)}")
    if CURVES_FILE not in written:
        print("no curves: no log.csv with logged iterations (not a condensation run, or none yet)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..interop import export_set
    from ..io import load_synthetic

    if Path(args.out).resolve() == Path(args.run).resolve():
        raise ValueError("--out is the run folder itself; name another folder for the export")
    syn = load_synthetic(args.run)
    n = export_set(syn, args.out, args.format, expand=not args.no_expand, overwrite=args.overwrite)
    from ..io import unfinished_note

    note = unfinished_note(args.run, syn.meta)
    if note:
        print(note)
    how = (
        f", {len(syn.labels)} stored images expanded x{syn.expansion_factor**2}"
        if syn.expansion_factor > 1 and not args.no_expand
        else ""
    )
    print(f"wrote {n} images{how} as {args.format} to {args.out}")
    return 0

"""The ``ddm`` command line: condense, evaluate, baseline, show, export, demo.

Each sub-command only parses flags into the settings dataclasses and calls the library; every
error a user can cause ends in one clear line on stderr and exit status 2 (1 for a diverged
run), never a traceback. ``--config FILE`` (condense, evaluate, baseline, continual) fills in
settings from a YAML or JSON file before the flags given on the command line
(``ddm.cli.configfile``).

One module per command or group of commands: ``condense`` (and ``presets``), ``evaluate``,
``baseline``, ``show`` (and ``export``), ``prepare``, ``pool``, ``demo``, ``teacher`` (and the
label flags of ``evaluate``); ``parser`` assembles them into ``build_parser``; ``common``
holds the shared flags and summaries.

Under torchrun (``torchrun --nproc-per-node N -m ddm condense|evaluate ...``) the same
commands run on every rank; ``ddm.distributed`` decides who does what, rank 0 prints.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

# the commands live in one module each (or per group); these names are the package's surface
from .common import _condense_config, _summary
from .demo import paired_gain
from .parser import build_parser, parse_command_line

__all__ = ["main", "build_parser", "parse_command_line", "paired_gain"]
__all__ += ["_condense_config", "_summary"]  # for the tests

# Commands that run under torchrun with several processes (the others would race on files).
DISTRIBUTED_COMMANDS = ("condense", "evaluate")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``ddm`` command: its exit status (0 done, 1 diverged, 2 bad input, 130 interrupted).

    A torchrun rank ends with ``os._exit`` after closing its process group, skipping the
    interpreter's teardown: there, after a finished run, gloo's threads could abort a rank
    under load (SIGABRT, "terminate called without an active exception"), and torchrun then
    failed a run whose results were all written (seen in the test suite beside other jobs).
    """
    from .. import distributed as dist

    try:
        code = _main(argv)
    finally:
        opened = dist.active()
        dist.shutdown()
    if opened:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: Sequence[str] | None) -> int:
    from .. import distributed as dist
    from ..condense import NonFiniteLossError
    from ..data import DatasetError
    from ..io import RunFolderError

    # under torchrun every rank reports its own errors; the same error shows once per rank
    who = f"ddm[rank {os.environ.get('RANK', '0')}]" if dist.requested_world_size() > 1 else "ddm"
    try:
        args = parse_command_line(argv)
        if dist.requested_world_size() > 1 and args.command not in DISTRIBUTED_COMMANDS:
            raise ValueError(
                f"`ddm {args.command}` runs in one process; under torchrun only "
                f"{' and '.join(DISTRIBUTED_COMMANDS)} are spread over processes"
            )
        code = args.func(args)
        # every rank reaches the end before any closes the group: a rank that tears gloo down
        # while another still talks to it can abort at exit (seen under load)
        dist.barrier()
        return code
    except NonFiniteLossError as exc:
        print(f"{who}: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, DatasetError, RunFolderError) as exc:
        print(f"{who}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`
        return 0
    except KeyboardInterrupt:
        print(
            "ddm: interrupted; `condense` continues with --resume, `continual` by rerunning it",
            file=sys.stderr,
        )
        return 130

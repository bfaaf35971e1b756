"""The command line: parses options and calls the library. Exit codes are DESIGN.md's:
0 ran and every SLO held, 1 an SLO or regression gate failed, 2 invalid input, 3 could not run.

`main` is the click group of app.py (`entry`, the `loadforge` command, runs it in a process
of its own); each module below adds its commands to it: load.py `run`, `capacity` and `shard`;
results.py `compare`, `report`, `export`, `ls` and `trend`; model.py `sandbox` and `simulate`.
The command loads only the module of the command it runs (app.py's COMMANDS).

This module imports none of them until `entry` runs or a name of theirs is asked for, so that
the command can hold the garbage collector before click loads (`entry`).
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loadforge.cli import load, model, results
    from loadforge.cli.app import EXIT_FAILED, EXIT_INPUT, EXIT_OK, EXIT_RUN, main

__all__ = ["EXIT_FAILED", "EXIT_INPUT", "EXIT_OK", "EXIT_RUN", "entry", "load", "main", "model",
           "results", "start_up_over"]

# Whether `entry` holds the collector (start_up_over lets it go).
_held = False


def entry() -> None:
    """The `loadforge` command and `python -m loadforge.cli` (app.py `entry`), with the
    garbage collector held through the command's start-up (until `start_up_over`)."""
    global _held
    # The start-up's imports and set-up make some 100,000 objects that live as long as the
    # command, which the collector would otherwise walk again and again as they come (about
    # 40 collections, 8-12 ms of a 1 s run's CPU, two thirds of it before time zero).
    _held = True
    gc.disable()
    from loadforge.cli import app

    app.entry()


def start_up_over() -> None:
    """The command's start-up is over (a run's: its plan made and its modules loaded, before
    its fork server forks; any other command's: its arguments are parsed): what it made is
    frozen out of the collector's way (gc.freeze: never walked nor freed again; the command
    keeps it to its end anyway) and collection resumes. Idempotent; nothing in a process that
    only called `main`."""
    global _held
    if _held:
        _held = False
        gc.freeze()
        gc.enable()


def __getattr__(name: str) -> Any:
    # `main` and the exit codes, with every command added to the group (PEP 562).
    if name in ("main", "EXIT_OK", "EXIT_FAILED", "EXIT_INPUT", "EXIT_RUN"):
        from loadforge.cli import app, load, model, results  # noqa: F401

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

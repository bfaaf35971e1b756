"""The command line: parses options and calls the library. Exit codes are DESIGN.md's:
0 ran and every SLO held, 1 an SLO or regression gate failed, 2 invalid input, 3 could not run.

`main` is the click group of app.py (`entry`, the `loadforge` command, runs it in a process
of its own); each module below adds its commands to it: load.py `run`, `capacity` and `shard`; results.py `compare`, `report`,
`export`, `ls` and `trend`; model.py `sandbox` and `simulate`.
"""

from __future__ import annotations

from loadforge.cli import load, model, results
from loadforge.cli.app import EXIT_FAILED, EXIT_INPUT, EXIT_OK, EXIT_RUN, entry, main

__all__ = ["EXIT_FAILED", "EXIT_INPUT", "EXIT_OK", "EXIT_RUN", "entry", "load", "main", "model",
           "results"]

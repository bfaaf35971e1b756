"""`python -m loadforge.cli`, as the `loadforge` command."""

from loadforge.cli import entry

entry()

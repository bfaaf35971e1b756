"""Text for people: error lines and tables that hold user strings.

Labels, stage, request and profile names, run titles and backend names are the user's text:
they are put on screen as `rich.text.Text` (never read as rich markup, where "[/]" in a label
crashed `ls`). An error is one line however long, whatever the terminal's width, so that a CI
log or `2>err.txt` holds it whole and `grep` finds it. A table never elides a number: where it
cannot fit the console, it is printed wider than the console rather than cut.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from loadforge.config.redact import redact_message

if TYPE_CHECKING:      # the CLI imports this module for errors: tables load when drawn
    from rich.measure import Measurement
    from rich.table import Table


def print_error(message: str, label: str = "error", console: Console | None = None) -> None:
    """`label: message` on stderr, as one line (soft wrap: the terminal may fold it, rich
    does not break it)."""
    console = console or Console(stderr=True)
    # A message with line breaks of its own (a worker's last words) is joined up as well.
    line = " / ".join(part.strip() for part in redact_message(message).splitlines()
                      if part.strip())
    console.print(Text.assemble((f"{label}:", "bold red"), " ", line), soft_wrap=True,
                  highlight=False)


def user(text: object, style: str = "") -> Text:
    """A user's string as it is, never markup."""
    return Text(str(text), style=style)


def _measure(console: Console, table: Table) -> Measurement:
    from rich.measure import Measurement

    # Unbounded: Measurement.get clamps to the width it is given.
    return Measurement.get(console, console.options.update_width(1 << 20), table)


def fits(console: Console, table: Table) -> bool:
    """Whether `table` shows every cell whole, unwrapped, at the console's width."""
    return _measure(console, table).maximum <= console.width


def print_table(console: Console, table: Table) -> None:
    """Print `table` at the console's width, or wider where its numbers need more: rich would
    otherwise shorten columns that cannot wrap to "…", numbers included."""
    needed = _measure(console, table).minimum
    if needed > console.width:
        console.print(table, width=needed, crop=False)
    else:
        console.print(table)

"""Live progress during a run: one line that the coordinator refreshes once per interval.

On a terminal a rich Live line redraws in place; anywhere else (CI logs, pipes) one plain line
per interval goes to the console, at most one a second. Progress is decoration: nothing here
may stop a run, so every failure to draw is swallowed and drawing is switched off.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loadforge.engine import histogram
from loadforge.units import format_us

# rich loads where a live line is drawn: not in a quiet run, nor in a CI log.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from loadforge.run.merge import MergedInterval

# Non-terminal output: minimum wall-clock gap between lines. A little under a second so that
# intervals delivered on a 1 s tick with jitter each get their line; a burst of late
# intervals collapses to one.
PLAIN_MIN_GAP_S = 0.9


def _clock_text(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class LiveProgress:
    """`with LiveProgress(total_s, console, quiet) as progress: progress.update(...)`."""

    def __init__(
        self,
        total_s: float,
        console: Console,
        quiet: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_s = float(total_s)
        self.console = console
        self.quiet = quiet
        self._clock = clock
        self._live: Live | None = None
        self._last_plain: float | None = None
        self._broken = False

    def __enter__(self) -> LiveProgress:
        if self.quiet:
            return self
        try:
            if self.console.is_terminal:
                from rich.live import Live
                from rich.text import Text

                self._live = Live(
                    Text("starting…"),
                    console=self.console,
                    refresh_per_second=4,
                    transient=True,
                )
                self._live.start()
        except Exception:
            self._live = None
            self._broken = True
        return self

    def __exit__(self, *exc_info: Any) -> None:
        live, self._live = self._live, None
        if live is not None:
            try:
                live.stop()
            except Exception:
                pass

    def show(self, merged: MergedInterval) -> None:
        """The frame of one merged interval (run/merge.MergedInterval): its stage, rates and
        latency, the run's errors and responses so far."""
        if self.quiet or self._broken:
            return
        # An interval after the schedule's end that saw no response (the wait for the last
        # ones) is no frame of its own: "rps 0/0 p50 0µs" would be the last one people see.
        if merged.start_s >= self.total_s - 1e-9 and not merged.responses:
            return
        st = histogram.stats(merged.ok_latency)
        self.update(merged.stage, min(merged.end_s, self.total_s), merged.target_rps,
                    merged.achieved_rps, st["p50"], st["p99"], merged.errors, merged.requests)

    def update(
        self,
        stage: str,
        elapsed_s: float,
        target_rps: float | None,
        achieved_rps: float,
        p50_us: int,
        p99_us: int,
        errors: int,
        requests: int,
    ) -> None:
        if self.quiet or self._broken:
            return
        try:
            left = _clock_text(self.total_s - elapsed_s)
            if self._live is not None:
                self._live.update(
                    self._panel(stage, elapsed_s, left, target_rps, achieved_rps,
                                p50_us, p99_us, errors, requests)
                )
                return
            now = self._clock()
            if self._last_plain is not None and now - self._last_plain < PLAIN_MIN_GAP_S:
                return
            self._last_plain = now
            line = (
                f"{stage} {_clock_text(elapsed_s)}/{_clock_text(self.total_s)} ({left} left) "
                f"rps {achieved_rps:.0f}/{_target(target_rps, '.0f')} "
                f"p50 {format_us(p50_us)} p99 {format_us(p99_us)} "
                f"errors {errors}/{requests}"
            )
            # Straight to the stream, not console.print: on a broken pipe rich dup2()s devnull
            # over stdout and raises SystemExit, which would end the run.
            stream = self.console.file
            stream.write(line + "\n")
            stream.flush()
        except Exception:
            # A broken pipe or a closed stream must not end the run; stop drawing instead.
            self._broken = True

    def _panel(
        self,
        stage: str,
        elapsed_s: float,
        left: str,
        target_rps: float | None,
        achieved_rps: float,
        p50_us: int,
        p99_us: int,
        errors: int,
        requests: int,
    ) -> Table:
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 2))
        for _ in range(6):
            grid.add_column()
        behind = bool(target_rps) and achieved_rps < 0.95 * (target_rps or 0.0)
        done = min(1.0, elapsed_s / self.total_s) if self.total_s > 0 else 1.0
        grid.add_row(
            Text(stage, style="bold cyan"),
            Text(f"{done * 100:3.0f}%  {left} left"),
            Text.assemble(
                "rps ",
                (f"{achieved_rps:,.0f}", "bold yellow" if behind else "bold"),
                f" / {_target(target_rps, ',.0f')}",
            ),
            Text(f"p50 {format_us(p50_us)}"),
            Text(f"p99 {format_us(p99_us)}"),
            Text(f"errors {errors:,}/{requests:,}", style="red" if errors else ""),
        )
        return grid


def _target(rps: float | None, spec: str) -> str:
    """A closed-model stage has no target rate: "-"."""
    return "-" if rps is None else format(rps, spec)

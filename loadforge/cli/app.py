"""The command group: turns the library's errors into a message and DESIGN.md's exit codes
(0 ran and every SLO held, 1 an SLO or regression gate failed, 2 invalid input, 3 could not
run), and the few helpers every command shares. Each command's module imports what it runs
inside the command, so `loadforge --help` and `loadforge run --help` load click alone.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

# Result tables are small (thousands of rows); pyarrow's default mimalloc pool kept 13-22 MB
# resident after reading one back, more the longer the run. The system allocator gives it back.
# Set before pyarrow is first imported, and only where the user has not chosen a pool.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

import click

from loadforge import __version__, limits
from loadforge.cli import start_up_over
from loadforge.errors import InputError, Interrupted, LoadforgeError
from loadforge.units import parse_duration

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_RUN = 0, 1, 2, 3

# Each command and the module that adds it to `main`: a command's module loads when the command
# is asked for, so `loadforge run` does without the other commands' modules and options (their
# click objects and help texts, 2 ms of every run's start). tests/test_startup.py keeps this
# list and the modules' commands the same.
COMMANDS = {
    "run": "load", "capacity": "load", "shard": "load",
    "sandbox": "model", "simulate": "model",
    "compare": "results", "report": "results", "export": "results", "ls": "results",
    "trend": "results",
}


class Group(click.Group):
    """Turns the library's errors into a message and the documented exit code, and click's
    usage errors into exit 2 (click's own code for them as well); loads each command's module
    where the command is asked for (COMMANDS)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"loadforge.cli.{module}")
        return super().get_command(ctx, cmd_name)

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if name != "run":
            start_up_over()     # a run's ends later: once its plan is made (load.py)
        return name, command, rest

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LoadforgeError as exc:
            print_error(str(exc))
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            # One line, as every other error: click's own form spreads it over four.
            where = exc.ctx.command_path if exc.ctx else "loadforge"
            print_error(f"{where}: {exc.format_message()} (see {where} --help)")
            sys.exit(EXIT_INPUT)
        except RecursionError:
            # Each parser that can meet deep nesting says so naming its file; this is the net
            # under them, so that no input ends in a traceback.
            print_error("the input is nested too deeply to read (arrays or tables within "
                        "each other thousands deep)")
            sys.exit(EXIT_INPUT)
        except MemoryError:
            print_error("out of memory: lower --connections, the number of requests or "
                        "feeder rows, or give the machine more memory")
            sys.exit(EXIT_RUN)
        except (KeyboardInterrupt, Interrupted) as exc:
            # Before a run began (or while its results were being written): nothing to keep.
            from rich.console import Console

            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            Console(stderr=True).print(f"[bold red]interrupted[/] by "
                                       f"{signal.Signals(signum).name}", highlight=False)
            sys.exit(128 + signum)


# Set by `entry`, the `loadforge` command itself (not a caller of `main` in its own process).
_AS_COMMAND = False


def entry() -> None:
    """The `loadforge` command and `python -m loadforge.cli` (through cli/__init__.py's
    `entry`): `main`, in a process of its own, which `end` may leave without the
    interpreter's teardown."""
    global _AS_COMMAND
    _AS_COMMAND = True
    main()


def end(code: int) -> None:
    """A command's end once everything it writes is closed: as the `loadforge` command, the
    exit handlers run (the fork server's close) and the process ends without tearing the
    interpreter down (freeing pyarrow's and every module's objects one by one: 15-20 ms of
    CPU and wall, a tenth of a short run's cost). Called from a process that imported `main`
    (tests, scripts), it raises SystemExit as sys.exit does."""
    if not _AS_COMMAND:
        sys.exit(code)
    import atexit

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass        # a terminal gone (SIGHUP) or a closed stream: the files are written
    atexit._run_exitfuncs()
    os._exit(code)


def print_error(message: str) -> None:
    """present.text's one error line. rich loads here, not for `--help`; `run` and `compare`,
    which read the large inputs, load it first, so a MemoryError finds it in memory."""
    from loadforge.present.text import print_error as say

    say(message)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="loadforge")
def main() -> None:
    """Load tester and benchmark harness for HTTP services behind load balancers."""


class LazyConsole:
    """A rich Console made where it is first used: a `--quiet` run with nothing to say never
    imports rich (0.017 s of CPU before its first request)."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._kwargs)
        return getattr(self._console, name)


def wide_console() -> Console:
    """stdout for tables: a CI log or a pipe is no 80-column terminal, so don't wrap there."""
    from rich.console import Console

    console = Console()
    # COLUMNS set by hand is a width asked for: rich honours it (text.py keeps numbers whole).
    return console if console.is_terminal or "COLUMNS" in os.environ else Console(width=200)


def parse_labels(values: tuple[str, ...], option: str = "--label") -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"{option} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def one_stdout_output(*outputs: tuple[str, str | None]) -> bool:
    """Whether an output path is "-" (stdout); at most one may be."""
    on_stdout = [option for option, path in outputs if path == "-"]
    if len(on_stdout) > 1:
        raise InputError(f"{' and '.join(on_stdout)}: only one output can be '-' (stdout)")
    return bool(on_stdout)



def check_at_most(value: float, maximum: float, flag: str) -> None:
    if value > maximum:
        raise InputError(f"{flag} must be at most {maximum:,.0f}, got {value:,.0f}")


def parse_timeout(value: str) -> float:
    return parse_duration(value, "--timeout", maximum=limits.MAX_TIMEOUT_S)



def raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


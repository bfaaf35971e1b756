"""Exception types shared by the CLI, the library and the core.

Each carries the process exit code the command line contract gives it (see DESIGN.md):
2 for invalid input, 3 for a run that could not happen. Messages name the input at fault.
"""


class LoadforgeError(Exception):
    exit_code = 3


class InputError(LoadforgeError):
    """Invalid input: a profile, a flag, a results file. Exit code 2."""

    exit_code = 2


class ProfileError(InputError):
    """A profile that does not validate; the message names the field and what was expected."""


class ResultsError(InputError):
    """A results file (Parquet) that is missing, unreadable or not a loadforge result."""


class RunError(LoadforgeError):
    """The run could not start or could not go on: unreachable target, crashed worker. Exit 3."""


class TargetUnreachable(RunError):
    pass


class WorkerCrashed(RunError):
    pass


class ResultsWriteFailed(RunError):
    """The results file could not be written on (a full disk): what was written is kept."""


class Interrupted(BaseException):
    """A signal (Ctrl-C, SIGTERM) ended the command before a run had begun, or ended the
    writing of its results. Exit code 128 + the signal, as a shell reports it. A
    BaseException, like KeyboardInterrupt, so that no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum

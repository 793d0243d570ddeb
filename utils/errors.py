"""The two ways a run ends early on purpose.

- `UserError`: something the user gave (a flag, a data file, a checkpoint, a folder) cannot be used. Its
  message says what and where (file, line, flag); `main()` prints it on one line and exits with status 2.
  Library code raises one of its kinds and never calls `sys.exit`. The kinds also derive from the builtin
  exception a caller would expect (ValueError, FileNotFoundError), so code written against those still works.
- `TrainingStopped`: training stopped by a signal or by non-finite losses after a checkpoint was made safe;
  it carries the exit status (128 + signal number, or 3).
"""
import functools
import sys


class UserError(Exception):
    """Input that cannot be used; the message names it and the problem."""


class FlagError(UserError, ValueError):
    """A command-line option's value cannot be used (the message starts with the flag)."""


class DataError(UserError, ValueError):
    """Bad input data; the message names the file (and line) and the problem."""

    def __init__(self, path, problem, line=None):
        where = f'{path}, line {line}' if line is not None else f'{path}'
        super().__init__(f'{where}: {problem}')
        self.path, self.line, self.problem = path, line, problem


class CheckpointError(UserError, ValueError):
    """A checkpoint that does not fit what it is used for (another model or configuration)."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint file that cannot be read or whose checksum does not match."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the run needs is not there (a checkpoint, the training data, photos)."""


class TrainingStopped(RuntimeError):
    """Training ended early on purpose; `exit_code` is what the process returns."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


class TrainingInterrupted(TrainingStopped):
    """SIGINT or SIGTERM: a checkpoint was saved first."""


class NonFiniteTraining(TrainingStopped):
    """Too many non-finite steps in a row."""


def command(body):
    """A command-line tool's main(argv): a UserError is printed on one line and gives exit status 2, as in
    main.py; otherwise body's return value (None: 0)."""
    @functools.wraps(body)
    def run(argv=None):
        try:
            status = body(argv)
        except UserError as e:
            print(f'error: {e}', file=sys.stderr)
            return 2
        return 0 if status is None else status
    return run

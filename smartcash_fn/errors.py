"""Errors that speak to the person running the code.

Every failure caused by input (a recipe, a command line, a dataset, a
checkpoint, an argument handed to the API) is a :class:`UserError`: its
message names the file, the key or line, what was expected and what to do.
The command line prints the message and exits with status 2, never a
traceback::

    raise CheckpointError("runs/a/last.pt: integrity hash mismatch")
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message alone tells the user what to fix (exit code 2).

    ``param`` names the argument of the function that raised it, when one
    argument is to blame: a recipe then names that argument's key (the
    ``data.params.data_yaml`` the user wrote) rather than the component::

        raise DataError("datasets/a/data.yaml: no such data.yaml", param="data_yaml")
    """

    exit_code = 2

    def __init__(self, *args: object, param: str | None = None) -> None:
        super().__init__(*args)
        self.param = param


class ArgumentError(UserError, ValueError):
    """A bad argument to a factory (an optimizer, a schedule): also a ``ValueError``."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, corrupt, unsafe or of another format."""


class RecipeError(UserError):
    """A recipe (TOML) that cannot be read, merged, structured or validated."""


class DataError(UserError):
    """A dataset, batch or data file that does not fit what was declared."""


class StateError(UserError):
    """A TrainState or its parts that do not fit each other (names, shapes, types)."""


class OutputError(UserError):
    """A file the run writes could not be written (no space left, a read-only folder): the checkpoint came first."""

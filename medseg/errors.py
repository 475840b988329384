"""Errors that the command line turns into one line and an exit status.

Library code raises these; ``medseg.cli`` catches them at the top, prints the message
(the traceback only with ``--debug``) and exits with ``exit_code``.
"""


class MedsegError(Exception):
    """An error a user can act on; ``exit_code`` is the status the CLI exits with."""

    exit_code = 2


class ConfigError(MedsegError):
    """A config file, a ``--set`` override, an argument or a model directory is unusable."""

    exit_code = 2


class CaseError(MedsegError):
    """One case (a file or a set of files) cannot be used; the rest of a batch goes on."""

    exit_code = 1


class TrainingError(MedsegError):
    """Training cannot go on (its loss became NaN or infinite): the settings need changing."""

    exit_code = 2

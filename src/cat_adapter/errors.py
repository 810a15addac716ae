"""The one exception type the CLI turns into a one-line message (no traceback)."""


class CatAdapterError(Exception):
    """A user-facing error: bad input, a missing file, an invalid option.

    The message names the file or option and says what to do; the CLI prints it on one line
    and exits with status 2.
    """

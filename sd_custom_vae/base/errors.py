"""The one exception type for bad input: what the command line reports as one line with exit code 2."""


class UserError(ValueError):
    """Input the user can fix (a file, key, option or shape, named in the message, with what to do).

    A ``ValueError``, so code that catches those keeps working. Any exception that is not a ``UserError`` (or a file
    system ``OSError``) is a bug, and the command line says so.
    """

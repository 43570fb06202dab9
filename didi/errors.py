"""The one exception type for user mistakes: the CLI prints it as a single line."""


class DidiError(Exception):
    """A problem the user can fix (bad path, bad option, bad data). Never a bug in didi."""

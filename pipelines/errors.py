"""The one exception type for bad data input (a path, a file, a manifest) that a user can fix."""


class DataError(Exception):
    """A problem with the user's data, stated in one line that names the file or value."""

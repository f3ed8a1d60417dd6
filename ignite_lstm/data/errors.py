"""The data layer's error: a data file that is missing, unreadable, malformed or not as expected."""

__all__ = ["DataFileError"]


class DataFileError(ValueError):
    """A data file is missing, unreadable, malformed, or does not match the expected parameters."""

"""The one error type for problems a user can cause and fix."""


class FeatxError(Exception):
    """A user-facing problem; the CLI prints its message on one line and exits non-zero."""

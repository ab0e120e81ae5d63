"""The one error type for problems a user can cause and fix."""


class MedsrError(Exception):
    """A user-fixable problem. The message names the file (if any) and the fix, on one line."""

"""The one error type for problems a user can cause and fix."""


class MedsrError(Exception):
    """A user-fixable problem. The message names the file (if any) and the fix, on one line."""


class TooLargeError(MedsrError):
    """An image or volume above the pixel limit a reader was given, found from its header before decoding."""

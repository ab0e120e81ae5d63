"""The one error type for problems a user can cause and fix."""


class MedsrError(Exception):
    """A user-fixable problem. The message names the file (if any) and the fix, on one line."""


class TooLargeError(MedsrError):
    """An image or volume above the pixel limit a reader was given, found from its header before decoding."""


class NothingToThinError(MedsrError):
    """Through-plane SR asked of slices already as thin as the target: `slices` slices `spacing` mm apart."""

    def __init__(self, message: str, slices: int, spacing: float):
        super().__init__(message)
        self.slices, self.spacing = slices, spacing

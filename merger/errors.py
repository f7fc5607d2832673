"""User-facing errors: one clear sentence, no traceback."""


class AlloyError(Exception):
    """An error whose message is a sentence for the user (it names the file and key where known)."""

    exit_code = 2


class Interrupted(AlloyError):
    """The user stopped the operation; nothing was changed (or the original was restored)."""

"""The user tool's input errors (shared by `media` and `download`, so neither imports the other's internals)."""
from __future__ import annotations


class MediaError(ValueError):
    """An input could not be used; `str()` is a one-line message for the user (the CLI exits 3)."""


class DownloadError(MediaError):
    """A URL could not be downloaded, or the download was refused; nothing of it is left in the cache."""


__all__ = ["MediaError", "DownloadError"]

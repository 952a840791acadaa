"""Domain errors. The servicer maps each to one gRPC status code; nothing else does."""


class GalleryError(Exception):
    """Base class of the errors a caller can act on."""


class InvalidArgument(GalleryError, ValueError):
    """The request is malformed: wrong dimension, NaN, k out of range, bad image."""


class NotFound(GalleryError, KeyError):
    """An unknown collection (or face, where the API says so)."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0]) if self.args else ""


class AlreadyExists(GalleryError):
    """A collection or face id that is taken."""


class FailedPrecondition(GalleryError):
    """The collection cannot do this, e.g. an image request on raw embeddings."""


class ResourceExhausted(GalleryError):
    """A request over a size limit."""


class Unavailable(GalleryError):
    """A shard is down or restarting; the caller may retry."""


class DeadlineExceeded(GalleryError, TimeoutError):
    """The caller's deadline passed before the answer was ready."""

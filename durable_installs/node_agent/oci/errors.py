"""The one failure type of an OCI pull, split by whether trying again can help."""

from __future__ import annotations


class PullError(Exception):
    """A pull failed. ``permanent``: a retry of the same pull cannot succeed (bad digest,
    hostile layer, unknown media type, no such image, refused credentials). Otherwise the
    cause may pass (network, rate limit, registry error) and a retry resumes the blobs."""

    def __init__(self, cause: str, *, permanent: bool) -> None:
        super().__init__(cause)
        self.cause = cause
        self.permanent = permanent

"""Errors whose message is written for the person using the app.

Everything the core raises on purpose derives from :class:`OmniError`; the UI and the
command line show ``str(error)`` as it is, so messages say what went wrong and what to do.
"""


class OmniError(Exception):
    """Base class of errors meant to be shown to the user verbatim."""


class MediaError(OmniError):
    """An input file or recording can't be used (corrupt, empty, silent, too long...)."""


class RequestError(OmniError):
    """A request is malformed (unknown voice, empty conversation, bad limits...)."""


class ModelLoadError(OmniError):
    """The model could not be loaded; the message names the remedies."""


class Unsupported(OmniError):
    """The backend can't do this (e.g. look inside a model that runs elsewhere)."""


class BackendUnavailable(OmniError):
    """The model server can't be reached or stopped answering; the message says where."""


class GpuUnavailable(OmniError):
    """No GPU could be had for this request (a ZeroGPU quota ran out, no GPU was free, the GPU worker died)."""

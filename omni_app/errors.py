"""Errors whose message is written for the person using the app.

Everything the core raises on purpose derives from :class:`OmniError`; the UI and the
command line show ``str(error)`` as it is, so messages say what went wrong and what to do.
They never carry a server path, an errno or a library's text: :func:`hidden` keeps those
in the log, and :func:`unexpected` words every other failure, both with a reference that
the log line carries too.
"""

import logging
import secrets

log = logging.getLogger("omni_app")


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


def reference() -> str:
    """A short id that ties a message a person reads to the log line with the detail."""
    return secrets.token_hex(4)


def hidden(kind: type[OmniError], message: str, detail: BaseException,
           logger: logging.Logger | None = None) -> OmniError:
    """``kind(message)`` for a failure whose detail is for the log only.

    A library's text, a server path or an errno means nothing to the person who sent the
    file and may tell a stranger about the server: the log gets it, under a reference the
    message names, so the two can be matched.
    """
    ref = reference()
    # Information, not a warning: usually the input was bad, not the server.
    (logger or log).info("[ref %s] %s (%s: %s)", ref, message, type(detail).__name__, detail)
    return kind(f"{message} (reference {ref})")


def unexpected(exc: BaseException, where: str, logger: logging.Logger | None = None) -> str:
    """The one line a person gets for a failure that is not theirs (a bug, the machine's
    trouble); the traceback goes to the log under the reference it names."""
    ref = reference()
    (logger or log).error("[ref %s] %s failed", ref, where, exc_info=exc)
    return (f"Something went wrong on our side (reference {ref}). Try again; if it keeps happening, "
            "report it with that reference.")

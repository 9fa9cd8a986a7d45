"""Where errors reach the browser: one wrapper around every event handler of the app.

Handlers raise :class:`~omni_app.errors.OmniError` for what the user can fix; the wrapper
shows its message as it is (``gr.Error``). Anything else is a bug or a failure of the
machine: it is logged with its traceback and the user gets one line with a reference
that the log line carries too.
"""

from __future__ import annotations

import functools
import inspect
import logging

import gradio as gr

from ..errors import OmniError, unexpected

log = logging.getLogger(__name__)


def shown(fn):
    """Wrap a gradio handler (plain or generator) so its errors become ``gr.Error``."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                raise as_gr_error(exc, fn.__name__) from exc
        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise as_gr_error(exc, fn.__name__) from exc
    return call


def as_gr_error(exc: Exception, where: str = "") -> gr.Error:
    """The ``gr.Error`` a person sees for ``exc``."""
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, OmniError):
        return gr.Error(str(exc))
    return gr.Error(unexpected(exc, where or "a handler", log))

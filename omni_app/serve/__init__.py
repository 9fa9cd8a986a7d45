"""The model over HTTP: an OpenAI-compatible server over any backend, and a backend that is a server.

- :mod:`.wire`, :mod:`.parts` and :mod:`.replies` translate between OpenAI's JSON and our
  :class:`~omni_app.api.Request` and events (no web framework in them);
- :mod:`.server` is the FastAPI app (:func:`~.server.make_app`) and :mod:`.command` the
  ``python -m omni_app serve`` command;
- :mod:`.remote` is :class:`~.remote.RemoteBackend`, which speaks to such a server (or to
  vLLM-Omni) and looks to the app like the model in this process.
"""

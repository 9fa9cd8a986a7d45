"""omni_app: a streaming web app and model service for Qwen2.5-Omni.

Importing this package is cheap: torch, transformers and the model are only loaded
when a service is built (see :func:`omni_app.engine.loader.load_model`).
"""

from . import threads

__version__ = "0.1.0"

# Before anything imports torch: how BLAS threads are set up for the model's loop (see threads).
threads.prepare()

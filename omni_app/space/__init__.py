"""Hosting on Hugging Face Spaces: the Spacefile, ``python -m omni_app space build|push``, the Space's app."""

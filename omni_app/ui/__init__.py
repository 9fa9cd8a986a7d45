"""The Gradio web app: one module per tab, composed in :mod:`omni_app.ui.app`.

This package is the only place that imports gradio; it never touches torch directly.
"""

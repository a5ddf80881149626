"""MyVLM Desktop engine: the Qt-free core (catalog, scanning, watching, pipeline, models).

Nothing in this package imports Qt; the desktop app and the `myvlm` CLI are two front doors to it.
"""

__version__ = "0.1.0"

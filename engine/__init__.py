"""MyVLM Desktop engine: the Qt-free core.

`engine.library.Library` is the front door: the desktop app (myvlm_desktop) and the command line (myvlm_cli) call
its verbs and the read models in `engine.read_models`, and share three contracts: `engine.errors` (UserError),
`engine.progress` (Progress) and `engine.settings` (each setting declared once). Below the door the layers are, top
to bottom: admin, pipeline, domain, models, ingest, storage (pyproject.toml's import-linter contract keeps them so).
Nothing in this package imports Qt.
"""

__version__ = "0.1.0"

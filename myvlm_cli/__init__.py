"""The `myvlm` command line: a front door to the engine, like the desktop app (myvlm_desktop/).

It calls only the engine's front door (engine.library's Library, engine.read_models, engine.errors, engine.progress,
engine.settings); `myvlm_cli.main:main` is the console script.
"""

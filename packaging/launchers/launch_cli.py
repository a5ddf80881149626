"""PyInstaller entry point of the `myvlm` command line (the same as the `myvlm` console script).

Not named after the packages it starts: a script's folder comes first on sys.path, and a `myvlm_desktop.py` or
`engine.py` there would hide the package.
"""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from myvlm_cli.main import main

    sys.exit(main())

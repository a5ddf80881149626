"""PyInstaller entry point of the desktop app (the same as the `myvlm-desktop` gui script).

The app starts its indexing worker as `<python> -m myvlm_desktop.index_worker ...` (myvlm_desktop/indexing.py).
In a frozen build `sys.executable` is this program, so it answers `-m MODULE` for the app's own worker modules
by running that module, as Python would.
"""

import multiprocessing
import runpy
import sys

WORKER_MODULES = {"myvlm_desktop.index_worker"}

if __name__ == "__main__":
    multiprocessing.freeze_support()
    if len(sys.argv) >= 3 and sys.argv[1] == "-m" and sys.argv[2] in WORKER_MODULES:
        module = sys.argv[2]
        sys.argv = [sys.argv[0], *sys.argv[3:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        sys.exit(0)
    from myvlm_desktop.app import main

    sys.exit(main())

"""`python -m myvlm_desktop`: the same as the `myvlm-desktop` command."""

import sys

from .app import main

sys.exit(main())

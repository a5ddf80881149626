"""`python -m myvlm_cli ARGS` is `myvlm ARGS`."""

import sys

from .main import main

sys.exit(main())

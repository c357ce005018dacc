"""`python -m mmedge ...`: the `mmedge` command (for environments where its script is not on PATH)."""

import sys

from mmedge.cli import main

sys.exit(main())

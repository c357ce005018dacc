"""`python -m mmedge.cli ...` runs the `mmedge` command."""

import sys

from mmedge.cli import main

sys.exit(main())

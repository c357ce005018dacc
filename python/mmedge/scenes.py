"""`mmedge.scenes`, kept for `python -m mmedge.scenes` and existing imports: the generated scenes
live in `mmedge.evaluation.scenes`."""

import sys

from mmedge.evaluation import scenes as _scenes

if __name__ == "__main__":
    sys.exit(_scenes.main())
sys.modules[__name__] = _scenes

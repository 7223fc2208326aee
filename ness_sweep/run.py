"""``python -m ness_sweep.run space=NAME [key=value ...]``: the sweep command (``ness_sweep.sweep.__main__``)."""

import sys

from .sweep.__main__ import main

if __name__ == "__main__":
    sys.exit(main())

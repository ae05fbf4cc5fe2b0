"""``python -m napari_samed2.cohort``: see :mod:`napari_samed2.cohort.cli`."""

import sys

from napari_samed2.cohort.cli import main

if __name__ == "__main__":
    sys.exit(main())

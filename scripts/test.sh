#!/usr/bin/env bash
# Install everything (system libraries included) and run the whole test suite headless, with
# napari's canvas on a virtual X display (Xvfb + Mesa). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# pytest exits 5 when it collects no test: that fails this script, as it should.
exec xvfb-run --auto-servernum --server-args="-screen 0 1600x1200x24" \
  .venv/bin/python -m pytest "$@"

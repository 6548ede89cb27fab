"""Where the repository's bundles, manifests and run folders are.

The package is installed from a checkout (``pip install -e .``), so the bundles and
manifests sit beside it; every command resolves them from here, whatever the
working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
BUNDLES = REPO / "bundle"
MANIFESTS = REPO / "data_manifests"
# Training runs, evaluations and benchmarks write here unless told otherwise.
RUNS = REPO / "runs"
# The real data beside the checkout; XRAY_DATA_DIR points elsewhere.
DATA = Path(os.environ.get("XRAY_DATA_DIR", REPO.parent / "shared" / "data"))

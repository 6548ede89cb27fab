"""``python -m xray_seg.cli`` is the ``xray-seg`` command."""

import sys

from xray_seg.cli.main import main

sys.exit(main())

"""``python -m pulsebms.edge_runtime`` (same as ``pulsebms-edge``)."""

from __future__ import annotations

import sys

from pulsebms.edge_runtime.cli import main

if __name__ == "__main__":
    sys.exit(main())

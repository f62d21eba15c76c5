"""``python -m pulsebms.edge_runtime`` (as ``pulsebms-edge``; a missing extra is named, exit 2)."""

from __future__ import annotations

import sys

from pulsebms.core.console_scripts import edge

if __name__ == "__main__":
    sys.exit(edge())

"""``python -m pulsebms.export`` (same as ``pulsebms-export``)."""

from __future__ import annotations

import sys

from pulsebms.export.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m pulsebms.export`` (same as ``pulsebms-export``; a missing extra is named, exit 2)."""

from __future__ import annotations

import sys

from pulsebms.core.console_scripts import export

if __name__ == "__main__":
    sys.exit(export())

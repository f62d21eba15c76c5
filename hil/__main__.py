"""``python -m pulsebms.hil`` (same as ``pulsebms-hil``; a missing extra is named, exit 2)."""

from __future__ import annotations

import sys

from pulsebms.core.console_scripts import hil

if __name__ == "__main__":
    sys.exit(hil())

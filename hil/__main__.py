"""``python -m pulsebms.hil`` (same as ``pulsebms-hil``)."""

from __future__ import annotations

import sys

from pulsebms.hil.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""PulseBMS: safe reinforcement learning on PyBaMM-backed battery fleets.

The distribution installs one top-level name, ``pulsebms``; each repository folder is a
subpackage (``pulsebms.envs``, ``pulsebms.safety``, ``pulsebms.agents``, ...). Importing
``pulsebms`` itself is cheap: it imports no subpackage.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pulsebms")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

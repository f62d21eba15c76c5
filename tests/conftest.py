"""Session-wide test settings: quiet, offline, deterministic, headless.

Hypothesis profiles (chosen by ``HYPOTHESIS_PROFILE``; default ``ci`` when the ``CI``
variable is set, as CI services do, else ``dev``):

* ``ci``: derandomised (the same examples on every run, so a red build is reproducible
  from its log), no example database, at most 100 examples per test, no deadline.
* ``dev``: random examples with the local example database (a failure found once is
  replayed first next time), at most 100 examples, no deadline.

No profile has a deadline: a wall-clock limit fails on a busy machine, not on a bug.
A test's own ``@settings(max_examples=...)`` overrides the profile's bound.
"""

from __future__ import annotations

import os

import pytest

# Set before any test module imports the libraries that read them.
os.environ["WANDB_MODE"] = "disabled"  # tests never log to wandb, not even offline
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")
# Subprocesses started by tests hash strings the same way on every run.
os.environ.setdefault("PYTHONHASHSEED", "0")

# Real MQTT broker fixtures (Mosquitto, amqtt) for every test folder.
pytest_plugins = ("broker_fixtures",)

HYPOTHESIS_PROFILES = ("ci", "dev")
"""Names accepted in ``HYPOTHESIS_PROFILE``."""


def _register_hypothesis_profiles() -> None:
    """Register the ``ci`` and ``dev`` profiles and load the selected one."""
    try:
        from hypothesis import settings
    except ImportError:  # an edge-only environment: no property tests to configure
        return
    settings.register_profile(
        "ci", derandomize=True, database=None, max_examples=100, deadline=None, print_blob=True
    )
    settings.register_profile("dev", max_examples=100, deadline=None, print_blob=True)
    default = "ci" if os.environ.get("CI", "").strip().lower() not in ("", "0", "false") else "dev"
    name = os.environ.get("HYPOTHESIS_PROFILE", default)
    if name not in HYPOTHESIS_PROFILES:
        raise ValueError(f"HYPOTHESIS_PROFILE must be one of {HYPOTHESIS_PROFILES}, got {name!r}")
    settings.load_profile(name)


_register_hypothesis_profiles()


def pytest_report_header() -> list[str]:
    """Name the hypothesis profile in the session header (what a red CI log must show)."""
    try:
        from hypothesis import settings
    except ImportError:
        return []
    return [f"hypothesis profile: {settings.get_current_profile_name()}"]


_FOLDER_MARKERS = {"integration": "integration", "benchmarks": "benchmark"}
"""Test folder → marker given to every test in it (markers assigned from the folder)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of ``tests/integration`` and ``tests/benchmarks`` by their folder."""
    for item in items:
        for folder, marker in _FOLDER_MARKERS.items():
            if folder in item.path.parts:
                item.add_marker(getattr(pytest.mark, marker))

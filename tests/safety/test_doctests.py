"""The runnable ``Example:`` sections of the safety modules stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "pulsebms.safety",
    "pulsebms.safety.limits",
    "pulsebms.safety.cell_model",
    "pulsebms.safety.settings",
    "pulsebms.safety.shield",
    "pulsebms.safety.projection",
    "pulsebms.safety.results",
    "pulsebms.safety.checks",
    "pulsebms.safety.reference",
]


@pytest.mark.parametrize("name", MODULES)
def test_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0

"""Fixtures of the experiment tests: a Hydra context on the packaged configs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra


@pytest.fixture
def hydra_ctx() -> Iterator[None]:
    """Hydra initialised on ``pulsebms.configs`` for the test, cleared before and after."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pulsebms.configs", version_base="1.3"):
        yield
    GlobalHydra.instance().clear()

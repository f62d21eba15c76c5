"""Console-script entry points: run the command, or say in one line which extra it needs.

``pyproject.toml`` points every ``[project.scripts]`` entry here rather than at the
command's module, so that an install without the extra a command needs (an edge device has
``pip install 'pulsebms[edge]'`` only) answers with one line on stderr and exit status
:data:`EXIT_MISSING_EXTRA` instead of a traceback::

    $ pulsebms-train
    pulsebms-train needs the 'train' extra: pip install 'pulsebms[train]' (missing module 'hydra')

The extra named is the first of the command's extras (:attr:`ConsoleScript.extras`) that
installs the missing module, so ``pulsebms-train agent=rllib_ppo`` without Ray names
``rllib``, and ``pulsebms-export`` without torch names ``export``. A module of the standard
library or of ``pulsebms`` itself that fails to import is a bug, not a missing extra: its
error propagates unchanged. This module imports the standard library only.

Example:
    >>> SCRIPTS["pulsebms-train"].extra_for("ray")
    'rllib'
    >>> SCRIPTS["pulsebms-export"].extra_for("torch")
    'export'
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "EXIT_MISSING_EXTRA",
    "EXTRAS",
    "IMPORT_NAMES",
    "SCRIPTS",
    "ConsoleScript",
    "bench",
    "coordinator",
    "demo",
    "edge",
    "evaluate",
    "export",
    "fleet",
    "health",
    "hil",
    "missing_extra_message",
    "run_script",
    "train",
]

EXIT_MISSING_EXTRA = 2
"""Exit status of a command whose extra is not installed (as for bad arguments)."""

_SIM = frozenset(
    {"pybamm", "casadi", "scipy", "pandas", "gymnasium", "demandlib", "pvlib", "cvxpy"}
)
_TRAIN = _SIM | {"torch", "stable-baselines3", "hydra-core", "matplotlib", "tqdm", "rich"}

EXTRAS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "edge": frozenset({"onnxruntime", "python-can", "cantools", "paho-mqtt"}),
        "sim": _SIM,
        "train": _TRAIN,
        "rllib": _TRAIN | {"ray"},
        "export": frozenset({"torch", "onnx", "onnxruntime", "onnxscript"}),
        "tracking": frozenset({"wandb", "tensorboard"}),
        "services": _TRAIN
        | {"onnxruntime", "python-can", "cantools", "paho-mqtt", "amqtt", "psycopg"}
        | {"scikit-learn"},
    }
)
"""Extra → the distributions it installs, nested extras expanded (as in ``pyproject.toml``;
``tests/test_packaging.py`` checks that they agree)."""

IMPORT_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "torch": "torch",
        "hydra": "hydra-core",
        "omegaconf": "hydra-core",  # installed by hydra-core
        "stable_baselines3": "stable-baselines3",
        "pybamm": "pybamm",
        "casadi": "casadi",
        "scipy": "scipy",
        "pandas": "pandas",
        "gymnasium": "gymnasium",
        "demandlib": "demandlib",
        "pvlib": "pvlib",
        "cvxpy": "cvxpy",
        "matplotlib": "matplotlib",
        "tqdm": "tqdm",
        "rich": "rich",
        "ray": "ray",
        "onnx": "onnx",
        "onnxruntime": "onnxruntime",
        "onnxscript": "onnxscript",
        "can": "python-can",
        "cantools": "cantools",
        "paho": "paho-mqtt",
        "amqtt": "amqtt",
        "psycopg": "psycopg",
        "sklearn": "scikit-learn",
        "wandb": "wandb",
        "tensorboard": "tensorboard",
    }
)
"""Top-level import name → the distribution that provides it (an optional dependency)."""


@dataclass(frozen=True)
class ConsoleScript:
    """One console script.

    Attributes:
        name: The command (``"pulsebms-train"``).
        target: The function it runs, ``"module:function"``; called without arguments
            (it reads ``sys.argv``) and returning an exit status or ``None`` (0).
        extras: The extras it may need, the one that makes it work first.
    """

    name: str
    target: str
    extras: tuple[str, ...]

    def extra_for(self, module: str) -> str:
        """The extra to install when ``module`` (a top-level import name) is missing.

        Args:
            module: The missing module's top-level name (``"torch"``).

        Returns:
            The first of :attr:`extras` that installs it; the first extra when none does
            (a dependency of a dependency, such as ``yaml`` for Hydra).
        """
        dist = IMPORT_NAMES.get(module)
        for extra in self.extras:
            if dist is not None and dist in EXTRAS[extra]:
                return extra
        return self.extras[0]


SCRIPTS: Mapping[str, ConsoleScript] = MappingProxyType(
    {
        s.name: s
        for s in (
            ConsoleScript(
                "pulsebms-demo", "pulsebms.experiments.demo:main", ("train", "export", "edge")
            ),
            ConsoleScript(
                "pulsebms-train", "pulsebms.experiments.train:main", ("train", "rllib", "tracking")
            ),
            ConsoleScript(
                "pulsebms-eval", "pulsebms.experiments.evaluate:main", ("train", "rllib", "edge")
            ),
            ConsoleScript(
                "pulsebms-export", "pulsebms.export.cli:main", ("export", "sim", "train", "rllib")
            ),
            ConsoleScript("pulsebms-edge", "pulsebms.edge_runtime.cli:main", ("edge",)),
            ConsoleScript("pulsebms-hil", "pulsebms.hil.cli:main", ("sim", "edge")),
            ConsoleScript(
                "pulsebms-fleet", "pulsebms.services.fleet.cli:main", ("services", "export")
            ),
            ConsoleScript(
                "pulsebms-bench", "pulsebms.benchmarks.cli:main", ("sim", "edge", "train", "rllib")
            ),
            ConsoleScript(
                "pulsebms-health", "pulsebms.services.health.cli:main", ("services", "export")
            ),
            ConsoleScript(
                "pulsebms-coordinator", "pulsebms.services.coordinator.cli:main", ("services",)
            ),
        )
    }
)
"""Every console script of the distribution, by command name."""


def missing_extra_message(script: str, exc: ModuleNotFoundError) -> str | None:
    """The one-line "install this extra" message for ``exc``, or ``None`` if it is a bug.

    Args:
        script: The command's name, a key of :data:`SCRIPTS`.
        exc: The import error raised while loading or running it.

    Returns:
        ``"<script> needs the '<extra>' extra: pip install 'pulsebms[<extra>]' (missing
        module '<name>')"``; ``None`` when the missing module is unnamed, part of the
        standard library or of ``pulsebms`` (those are not fixed by an extra).

    Example:
        >>> missing_extra_message("pulsebms-hil", ModuleNotFoundError(name="pybamm.models"))
        "pulsebms-hil needs the 'sim' extra: pip install 'pulsebms[sim]' (missing module 'pybamm')"
    """
    if not exc.name:
        return None
    top = exc.name.partition(".")[0]
    if top == "pulsebms" or top in sys.stdlib_module_names:
        return None
    extra = SCRIPTS[script].extra_for(top)
    return (
        f"{script} needs the '{extra}' extra: pip install 'pulsebms[{extra}]' "
        f"(missing module '{top}')"
    )


def run_script(script: str) -> int:
    """Import and run a console script's target; a missing extra becomes one line, exit 2.

    Args:
        script: The command's name, a key of :data:`SCRIPTS`.

    Returns:
        The target's exit status (``None`` counts as 0), or :data:`EXIT_MISSING_EXTRA`
        after printing :func:`missing_extra_message` to stderr.

    Raises:
        ModuleNotFoundError: If a standard-library or ``pulsebms`` module is missing.
    """
    module_name, _, function = SCRIPTS[script].target.partition(":")
    try:
        main: Callable[[], int | None] = getattr(importlib.import_module(module_name), function)
        status = main()
    except ModuleNotFoundError as exc:
        message = missing_extra_message(script, exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return EXIT_MISSING_EXTRA
    return 0 if status is None else int(status)


def demo() -> int:
    """``pulsebms-demo`` (needs ``train``, ``export`` and ``edge``)."""
    return run_script("pulsebms-demo")


def train() -> int:
    """``pulsebms-train`` (needs ``train``; ``rllib`` for the RLlib agents)."""
    return run_script("pulsebms-train")


def evaluate() -> int:
    """``pulsebms-eval`` (needs ``train``; ``rllib`` for RLlib checkpoints)."""
    return run_script("pulsebms-eval")


def export() -> int:
    """``pulsebms-export`` (needs ``export``, plus what loads the checkpoint and the env)."""
    return run_script("pulsebms-export")


def edge() -> int:
    """``pulsebms-edge`` (needs ``edge`` only)."""
    return run_script("pulsebms-edge")


def hil() -> int:
    """``pulsebms-hil`` (needs ``sim`` and ``edge``)."""
    return run_script("pulsebms-hil")


def fleet() -> int:
    """``pulsebms-fleet`` (needs ``services``; ``export`` to build its tiny policy)."""
    return run_script("pulsebms-fleet")


def bench() -> int:
    """``pulsebms-bench`` (each benchmark needs its own extras)."""
    return run_script("pulsebms-bench")


def health() -> int:
    """``pulsebms-health`` (needs ``services`` and ``export``: scikit-learn, torch, onnx)."""
    return run_script("pulsebms-health")


def coordinator() -> int:
    """``pulsebms-coordinator`` (needs ``services``)."""
    return run_script("pulsebms-coordinator")

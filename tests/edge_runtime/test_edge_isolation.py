"""The runtime path imports no heavy package (fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "pybamm", "ray", "gymnasium", "hydra", "stable_baselines3", "casadi", "cvxpy")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    return {m.split(".")[0] for m in json.loads(out.strip().splitlines()[-1])}


def test_runtime_path_imports_only_light_packages() -> None:
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import pulsebms.edge_runtime as er\n"
        "# Every module of the package, present and future: the HIL lives in pulsebms.hil.\n"
        "for m in pkgutil.iter_modules(er.__path__):\n"
        "    importlib.import_module('pulsebms.edge_runtime.' + m.name)\n"
        "from pulsebms.edge_runtime.codec import CanCodec\n"
        "from pulsebms.edge_runtime.policy import session_options\n"
        "CanCodec(3)\n"
        "session_options()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = _modules_after(code)
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert {"onnxruntime", "can", "cantools", "numpy"} <= loaded


def test_the_hil_is_not_part_of_the_edge_runtime() -> None:
    import importlib.util

    import pulsebms.edge_runtime as er

    assert not hasattr(er, "hil")
    assert importlib.util.find_spec("pulsebms.edge_runtime.hil") is None
    assert importlib.util.find_spec("pulsebms.hil") is not None


def test_the_shared_policy_imports_no_can_stack() -> None:
    """Evaluation names ``OnnxPolicy`` (via pulsebms.agents): that must not pull CAN."""
    code = (
        "import json, sys\n"
        "from pulsebms.agents.policy import OnnxPolicy\n"
        "from pulsebms.edge_runtime.policy import OnnxPolicy as EdgePolicy\n"
        "assert OnnxPolicy is EdgePolicy\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    loaded = _modules_after(code)
    assert not loaded & {"can", "cantools", "onnxruntime", *HEAVY}, sorted(loaded)

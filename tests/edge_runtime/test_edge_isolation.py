"""The runtime path imports no heavy package (fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "pybamm", "ray", "gymnasium", "hydra", "stable_baselines3", "casadi", "cvxpy")


def test_runtime_path_imports_only_light_packages() -> None:
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import pulsebms.edge_runtime as er\n"
        "# Every module of the package, present and future, except the HIL simulator.\n"
        "for m in pkgutil.iter_modules(er.__path__):\n"
        "    if m.name != 'hil':\n"
        "        importlib.import_module('pulsebms.edge_runtime.' + m.name)\n"
        "from pulsebms.edge_runtime.codec import CanCodec\n"
        "CanCodec(3)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    loaded = {m.split(".")[0] for m in json.loads(out.strip().splitlines()[-1])}
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert {"onnxruntime", "can", "cantools", "numpy"} <= loaded

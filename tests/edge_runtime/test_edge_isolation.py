"""The runtime path imports no heavy package (fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "pybamm", "ray", "gymnasium", "hydra", "stable_baselines3", "casadi", "cvxpy")


def test_runtime_path_imports_only_light_packages() -> None:
    code = (
        "import json, sys\n"
        "import pulsebms.edge_runtime\n"
        "import pulsebms.edge_runtime.cli, pulsebms.edge_runtime.codec\n"
        "import pulsebms.edge_runtime.manifest, pulsebms.edge_runtime.observation\n"
        "import pulsebms.edge_runtime.policy, pulsebms.edge_runtime.runtime\n"
        "import pulsebms.edge_runtime.telemetry, pulsebms.edge_runtime.__main__\n"
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

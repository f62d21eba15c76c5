"""The health score as ONNX: export, an onnxruntime session, and the parity gate.

:func:`export_health_score` writes a fitted :class:`~pulsebms.services.health.score.
HealthScoreModel` as one ONNX graph, so that a service scores packs with onnxruntime alone
(no scikit-learn, and no pickle to load):

* the **linear base** — median imputation (``Where(IsNaN)``), standardisation and the least
  squares coefficients, in float64;
* the **boosted trees** — every tree of the ``HistGradientBoostingRegressor`` as one
  ``ai.onnx.ml`` ``TreeEnsembleRegressor`` (opset 3: float64 thresholds, ``BRANCH_LEQ`` as
  scikit-learn's ``x <= threshold`` goes left, NaN following each node's
  ``missing_go_to_left``; leaf values and the baseline prediction summed);
* their sum, clipped to the message schema's SoH range [0, 1.5].

The graph has one input ``features`` (float64 ``[batch, n_features]``, the columns of
:data:`~pulsebms.services.health.features.FEATURE_NAMES`; dynamic batch) and one output
``soh`` (float64 ``[batch]``). The feature names travel as ONNX metadata and are checked on
load. onnxruntime's tree ensemble returns float32, so the output carries float32 rounding
(~1e-7 on a SoH); :func:`check_score_parity` refuses an export that differs from
scikit-learn by more than ``atol`` (1e-5) on the given rows.

Example:
    >>> import numpy as np
    >>> from pulsebms.services.health.features import FEATURE_NAMES
    >>> rng = np.random.default_rng(0)
    >>> x = rng.uniform(size=(300, len(FEATURE_NAMES)))
    >>> x[::5, 3] = np.nan
    >>> y = 1.0 - 0.2 * x[:, 0] ** 2
    >>> model = HealthScoreModel(max_iter=20, min_samples_leaf=20).fit(x, y)
    >>> onnx_model = OnnxHealthScore(export_health_score(model))
    >>> check_score_parity(model, onnx_model, x) < 1e-5
    True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from pulsebms.core.types import FloatArray
from pulsebms.services.health.features import FEATURE_NAMES
from pulsebms.services.health.forecast_onnx import max_abs_difference
from pulsebms.services.health.score import HealthScoreModel

__all__ = [
    "SCORE_INPUT",
    "SCORE_OUTPUT",
    "OnnxHealthScore",
    "check_score_parity",
    "export_health_score",
]

SCORE_INPUT = "features"
"""Name of the graph input."""
SCORE_OUTPUT = "soh"
"""Name of the graph output."""
_META_KEY = "pulsebms.health.score"
_OPSET = 18
_ML_OPSET = 3
_SOH_RANGE = (0.0, 1.5)


def _tree_attributes(model: HealthScoreModel) -> dict[str, Any]:
    """The TreeEnsembleRegressor attributes of the model's boosted trees."""
    regressor = model.regressor
    predictors = regressor._predictors  # fitted trees: one list per iteration
    attrs: dict[str, list[Any]] = {
        k: []
        for k in (
            "nodes_treeids",
            "nodes_nodeids",
            "nodes_featureids",
            "nodes_values",
            "nodes_modes",
            "nodes_truenodeids",
            "nodes_falsenodeids",
            "nodes_missing_value_tracks_true",
            "target_treeids",
            "target_nodeids",
            "target_ids",
            "target_weights",
        )
    }
    for tree_id, per_iteration in enumerate(predictors):
        (tree,) = per_iteration  # one tree per iteration for a regressor
        nodes = tree.nodes
        if np.any(nodes["is_categorical"]):
            raise ValueError("categorical splits are not exported")
        for node_id, node in enumerate(nodes):
            leaf = bool(node["is_leaf"])
            attrs["nodes_treeids"].append(tree_id)
            attrs["nodes_nodeids"].append(node_id)
            attrs["nodes_featureids"].append(0 if leaf else int(node["feature_idx"]))
            attrs["nodes_values"].append(0.0 if leaf else float(node["num_threshold"]))
            attrs["nodes_modes"].append("LEAF" if leaf else "BRANCH_LEQ")
            attrs["nodes_truenodeids"].append(0 if leaf else int(node["left"]))
            attrs["nodes_falsenodeids"].append(0 if leaf else int(node["right"]))
            attrs["nodes_missing_value_tracks_true"].append(
                0 if leaf else int(node["missing_go_to_left"])
            )
            if leaf:
                attrs["target_treeids"].append(tree_id)
                attrs["target_nodeids"].append(node_id)
                attrs["target_ids"].append(0)
                attrs["target_weights"].append(float(node["value"]))
    baseline = float(np.asarray(regressor._baseline_prediction).reshape(-1)[0])
    return {**attrs, "baseline": baseline, "n_trees": len(predictors)}


def export_health_score(model: HealthScoreModel) -> bytes:
    """Export a fitted health-score model to ONNX bytes (see the module docstring).

    Raises:
        ValueError: If the model is not fitted or was fitted on another feature count.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    regressor = model.regressor
    n_features = int(getattr(regressor, "n_features_in_", 0))
    if n_features != len(FEATURE_NAMES):
        raise ValueError(f"the model has {n_features} features, expected {len(FEATURE_NAMES)}")
    trees = _tree_attributes(model)
    baseline = trees.pop("baseline")
    n_trees = trees.pop("n_trees")
    values = np.asarray(trees.pop("nodes_values"), dtype=np.float64)
    weights = np.asarray(trees.pop("target_weights"), dtype=np.float64)
    nodes: list[Any] = [
        helper.make_node(
            "TreeEnsembleRegressor",
            [SCORE_INPUT],
            ["trees_f32"],
            domain="ai.onnx.ml",
            n_targets=1,
            aggregate_function="SUM",
            post_transform="NONE",
            nodes_values_as_tensor=numpy_helper.from_array(values, "nodes_values"),
            target_weights_as_tensor=numpy_helper.from_array(weights, "target_weights"),
            base_values_as_tensor=numpy_helper.from_array(
                np.array([baseline], dtype=np.float64), "base_values"
            ),
            **trees,
        ),
        helper.make_node("Cast", ["trees_f32"], ["trees"], to=TensorProto.DOUBLE),
    ]
    init: list[Any] = [
        numpy_helper.from_array(np.array(_SOH_RANGE[0]), "soh_min"),
        numpy_helper.from_array(np.array(_SOH_RANGE[1]), "soh_max"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat"),
    ]
    total = "trees"
    if model.base is not None:
        imputer, scaler, linear = (step for _, step in model.base.pipeline.steps)
        init += [
            numpy_helper.from_array(np.asarray(imputer.statistics_, np.float64)[None], "median"),
            numpy_helper.from_array(np.asarray(scaler.mean_, np.float64)[None], "mean"),
            numpy_helper.from_array(np.asarray(scaler.scale_, np.float64)[None], "scale"),
            numpy_helper.from_array(np.asarray(linear.coef_, np.float64)[:, None], "coef"),
            numpy_helper.from_array(np.asarray([linear.intercept_], np.float64), "intercept"),
        ]
        nodes += [
            helper.make_node("IsNaN", [SCORE_INPUT], ["missing"]),
            helper.make_node("Where", ["missing", "median", SCORE_INPUT], ["imputed"]),
            helper.make_node("Sub", ["imputed", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "scale"], ["standard"]),
            helper.make_node("MatMul", ["standard", "coef"], ["linear_raw"]),
            helper.make_node("Add", ["linear_raw", "intercept"], ["linear"]),
            helper.make_node("Add", ["linear", "trees"], ["sum"]),
        ]
        total = "sum"
    nodes += [
        helper.make_node("Clip", [total, "soh_min", "soh_max"], ["clipped"]),
        helper.make_node("Reshape", ["clipped", "flat"], [SCORE_OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        "pulsebms_health_score",
        [helper.make_tensor_value_info(SCORE_INPUT, TensorProto.DOUBLE, ["batch", n_features])],
        [helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.DOUBLE, ["batch"])],
        init,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", _OPSET),
            helper.make_opsetid("ai.onnx.ml", _ML_OPSET),
        ],
        producer_name="pulsebms",
    )
    proto.ir_version = 10
    entry = proto.metadata_props.add()
    entry.key = _META_KEY
    entry.value = json.dumps(
        {
            "feature_names": list(FEATURE_NAMES),
            "n_trees": n_trees,
            "linear_base": model.base is not None,
        },
        sort_keys=True,
    )
    onnx.checker.check_model(proto, full_check=True)
    return bytes(proto.SerializeToString(deterministic=True))


class OnnxHealthScore:
    """The exported health score on onnxruntime (one CPU thread, deterministic).

    Args:
        model: ONNX bytes from :func:`export_health_score`, or a path to them.

    Raises:
        ValueError: If the model lacks the score's metadata or was made for other features.
    """

    def __init__(self, model: bytes | str | Path) -> None:
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            data, sess_options=options, providers=["CPUExecutionProvider"]
        )
        meta = self._session.get_modelmeta().custom_metadata_map
        if _META_KEY not in meta:
            raise ValueError(f"not a PulseBMS health score (no {_META_KEY!r} metadata)")
        info = json.loads(meta[_META_KEY])
        self.feature_names = tuple(str(n) for n in info["feature_names"])
        if self.feature_names != FEATURE_NAMES:
            raise ValueError(
                f"the model was trained on features {self.feature_names}, this version "
                f"computes {FEATURE_NAMES}: retrain it (pulsebms-health train)"
            )
        self.n_trees = int(info["n_trees"])

    def predict(self, x: FloatArray) -> FloatArray:
        """Estimated SoH per row of features (float64), clipped to [0, 1.5].

        Raises:
            ValueError: On rows of the wrong width.
        """
        rows = np.asarray(x, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != len(self.feature_names):
            raise ValueError(
                f"features must be [batch, {len(self.feature_names)}], got {rows.shape}"
            )
        if rows.shape[0] == 0:
            return np.zeros(0)
        (out,) = self._session.run([SCORE_OUTPUT], {SCORE_INPUT: rows})
        return np.asarray(out, dtype=np.float64)


def check_score_parity(
    model: HealthScoreModel, onnx_model: OnnxHealthScore, x: FloatArray, *, atol: float = 1e-5
) -> float:
    """Largest |scikit-learn − onnxruntime| over the rows ``x``; raises when above ``atol``.

    Raises:
        ParityError: If the two disagree by more than ``atol``.
    """
    ours = onnx_model.predict(x)
    ref = model.predict(np.asarray(x, dtype=np.float64))
    return max_abs_difference(ours, ref, atol=atol, reference="scikit-learn")

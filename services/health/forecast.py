"""Degradation forecast: an LSTM predicting SoH ``horizon`` cycles ahead, and its baselines.

**Inputs.** The last ``lookback`` cycles of a pack's engineered features
(:data:`FORECAST_INPUTS`, a subset of :data:`~pulsebms.services.health.features.
FEATURE_NAMES`), NaN filled forward within the pack and then by the training medians
(:func:`prepare_inputs`). **Output.** SoH at cycle ``k + horizon``, as the last rolling
capacity estimate (the *anchor*) plus a learned correction — the network learns how much
more the pack will fade, not the level it is at. With the fade-law prior
(:attr:`TrainSettings.prior`) the anchor is the law's forecast and the network learns the
law's error. The capacity inputs are read relative to the window's latest estimate, and
the model is an ensemble of LSTMs, each early-stopped on its own fold of the training packs
(:class:`TrainSettings`).

:class:`SohLstm` (torch) holds the input normalisation in buffers, so the ONNX graph
(:mod:`pulsebms.services.health.forecast_onnx`) takes raw features. Training
(:func:`train_forecaster`) is seeded and runs on the CPU with a fixed thread count: the same
data and seed give the same weights bit for bit.

**Baselines**, on the same windows:

* :func:`linear_extrapolation` — a straight line through the last ``lookback`` capacity
  estimates, read ``horizon`` cycles on;
* :func:`fade_law_forecast` — the semi-empirical fade law fitted to the pack's whole history
  so far: ``SoH = a − b·EFC^z`` in full equivalent cycles, ``z`` on a grid over
  [0.3, 1.0] (the laws of :mod:`pulsebms.envs.twin.degradation` have exponents 0.5–0.75),
  ``a, b ≥ 0`` by least squares; the future EFC extrapolates the recent throughput rate.

Example:
    >>> import numpy as np
    >>> efc = np.arange(100.0)
    >>> soh = 1.0 - 0.01 * np.sqrt(efc)
    >>> round(fade_law_forecast(efc, soh, efc_future=400.0), 4)
    0.8
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pulsebms.core.types import FloatArray
from pulsebms.services.health.dataset import HealthDataset
from pulsebms.services.health.features import FEATURE_NAMES

__all__ = [
    "FORECAST_INPUTS",
    "PRIORS",
    "ForecastReport",
    "ForecastWindows",
    "SohLstm",
    "TrainSettings",
    "evaluate_forecaster",
    "fade_law_forecast",
    "fade_law_prior",
    "linear_extrapolation",
    "make_windows",
    "pack_inputs",
    "prepare_inputs",
    "train_forecaster",
]

FORECAST_INPUTS = (
    "capacity_ratio",
    "capacity_trend",
    "discharge_ratio",
    "resistance_ratio",
    "efficiency",
    "temperature_c",
    "throughput_efc",
    "age_days",
    "dod",
    "c_rate",
    "chem_LFP",
    "chem_NMC",
    "chem_LCO",
)
"""Features the LSTM reads, in input order (the anchor is the first)."""

_INPUT_COLUMNS = [FEATURE_NAMES.index(name) for name in FORECAST_INPUTS]
_EFC = FEATURE_NAMES.index("throughput_efc")
_Z_GRID = np.round(np.arange(0.3, 1.0001, 0.05), 4)

PRIORS = ("capacity", "fade_law")
"""What the LSTM's output corrects (:attr:`TrainSettings.prior`)."""


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fade_law_prior(
    features: FloatArray, fill: FloatArray, *, horizon: int, lookback: int
) -> FloatArray:
    """The fade-law forecast made at each cycle for ``horizon`` cycles later (one pack).

    Cycle ``j`` fits :func:`fade_law_forecast` to the rolling capacity estimates of cycles
    ``0…j`` and reads it at the throughput the last ``lookback`` cycles' rate gives.
    """
    inputs = prepare_inputs(features, fill)
    capacity = inputs[:, 0]
    efc = np.nan_to_num(features[:, _EFC])
    out = np.empty(capacity.size)
    for j in range(capacity.size):
        first = max(j - lookback + 1, 0)
        rate = (efc[j] - efc[first]) / max(j - first, 1)
        out[j] = fade_law_forecast(efc[: j + 1], capacity[: j + 1], efc[j] + rate * horizon)
    return out


def pack_inputs(
    features: FloatArray, fill: FloatArray, *, prior: str, horizon: int, lookback: int
) -> FloatArray:
    """The LSTM's input columns for one pack: :func:`prepare_inputs`, plus the prior column.

    With ``prior="fade_law"`` the :func:`fade_law_prior` is appended as the last column
    (the model's anchor); with ``prior="capacity"`` the inputs are unchanged (anchor: the
    rolling capacity estimate, column 0).

    Raises:
        ValueError: On an unknown prior.
    """
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
    x = prepare_inputs(features, fill)
    if prior == "capacity":
        return x
    law = fade_law_prior(features, fill, horizon=horizon, lookback=lookback)
    return np.column_stack([x, law])


def prepare_inputs(features: FloatArray, fill: FloatArray) -> FloatArray:
    """A pack's forecast inputs: the :data:`FORECAST_INPUTS` columns, NaN filled.

    Args:
        features: One pack's feature matrix ``(n_cycles, len(FEATURE_NAMES))``.
        fill: Value per input column for NaN left after the forward fill (training medians).

    Returns:
        ``(n_cycles, len(FORECAST_INPUTS))``, finite.
    """
    x = np.array(features[:, _INPUT_COLUMNS], dtype=np.float64)
    for j in range(x.shape[1]):
        col = x[:, j]
        ok = np.isfinite(col)
        if ok.any():
            idx = np.where(ok, np.arange(col.size), 0)
            np.maximum.accumulate(idx, out=idx)
            col = np.where(ok[idx], col[idx], np.nan)
        x[:, j] = np.where(np.isfinite(col), col, fill[j])
    return x


@dataclass(frozen=True)
class ForecastWindows:
    """Input windows and targets of a set of packs.

    Attributes:
        x: Inputs ``(m, lookback, n_inputs)``, NaN filled (:func:`pack_inputs`).
        y: True SoH ``horizon`` cycles after each window's last cycle.
        pack: Pack index per window.
        cycle: Last cycle of each window.
        efc: Full equivalent cycles per pack and cycle (for the fade-law baseline).
        capacity: Rolling capacity estimate per pack and cycle (NaN filled).
    """

    x: FloatArray
    y: FloatArray
    pack: FloatArray
    cycle: FloatArray
    efc: dict[int, FloatArray]
    capacity: dict[int, FloatArray]


def make_windows(
    data: HealthDataset,
    packs: Sequence[int],
    *,
    lookback: int,
    horizon: int,
    fill: FloatArray,
    prior: str = "capacity",
    stride: int = 1,
) -> ForecastWindows:
    """Every window of ``lookback`` cycles with a label ``horizon`` cycles later."""
    xs, ys, ps, cs = [], [], [], []
    efc: dict[int, FloatArray] = {}
    capacity: dict[int, FloatArray] = {}
    for k in packs:
        inputs = pack_inputs(
            data.features[k], fill, prior=prior, horizon=horizon, lookback=lookback
        )
        efc[k] = np.nan_to_num(data.features[k][:, _EFC])
        capacity[k] = inputs[:, 0]
        n = inputs.shape[0]
        for end in range(lookback - 1, n - horizon, stride):
            xs.append(inputs[end - lookback + 1 : end + 1])
            ys.append(data.soh[k][end + horizon])
            ps.append(k)
            cs.append(end)
    n_in = len(FORECAST_INPUTS) + (prior == "fade_law")
    return ForecastWindows(
        x=np.array(xs).reshape(-1, lookback, n_in),
        y=np.array(ys, dtype=np.float64),
        pack=np.array(ps, dtype=np.float64),
        cycle=np.array(cs, dtype=np.float64),
        efc=efc,
        capacity=capacity,
    )


class SohLstm(nn.Module):
    """LSTM(s) over a window of cycles → SoH ``horizon`` cycles on (anchor + correction).

    With ``members > 1`` the model is an ensemble: each member (an LSTM and its head) gives
    a correction and the model adds their mean to the anchor, all in one graph.

    Args:
        n_inputs: Features per cycle.
        hidden: LSTM hidden units.
        mean: Input normalisation mean per feature.
        std: Input normalisation standard deviation per feature.
        horizon: Cycles ahead (stored for the service and the ONNX metadata).
        anchor: Input column the correction is added to (0: the capacity estimate; the
            last column with the fade-law prior).
        lookback: Cycles per window (stored for inference).
        prior: ``"capacity"`` or ``"fade_law"`` (how the inputs were built).
        members: Ensemble members (LSTM + head each).
        relative: Per input column, 1 where the network reads it relative to the window's
            latest capacity estimate (column 0) rather than as a level; ``None``: none.
    """

    def __init__(
        self,
        n_inputs: int,
        hidden: int,
        mean: FloatArray,
        std: FloatArray,
        horizon: int,
        *,
        anchor: int = 0,
        lookback: int = 16,
        prior: str = "capacity",
        members: int = 1,
        relative: FloatArray | None = None,
    ) -> None:
        super().__init__()
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.horizon = int(horizon)
        self.anchor = int(anchor)
        self.lookback = int(lookback)
        self.prior = prior
        self.lstms = nn.ModuleList(
            nn.LSTM(n_inputs, hidden, batch_first=True) for _ in range(members)
        )
        self.heads = nn.ModuleList(self._head(hidden) for _ in range(members))
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.relative: torch.Tensor
        rel = np.zeros(n_inputs) if relative is None else np.asarray(relative, dtype=np.float64)
        self.register_buffer("relative", torch.as_tensor(rel, dtype=torch.float32))

    @staticmethod
    def _head(hidden: int) -> nn.Module:
        out_layer = nn.Linear(hidden, 1)
        # The output layer starts at zero: an untrained model forecasts its anchor.
        nn.init.zeros_(out_layer.weight)
        nn.init.zeros_(out_layer.bias)
        return nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), out_layer)

    @property
    def members(self) -> int:
        """Ensemble members."""
        return len(self.lstms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: raw features ``[batch, lookback, n_inputs]`` → SoH ``[batch]``."""
        level = x[:, -1:, :1]  # the latest capacity estimate
        z = (x - self.relative * level - self.mean) / self.std
        corrections = []
        for lstm, head in zip(self.lstms, self.heads, strict=True):
            out, _ = lstm(z)
            corrections.append(head(out[:, -1, :]).squeeze(-1))
        correction = torch.stack(corrections).mean(dim=0)
        anchor = x[:, -1, self.anchor]
        return anchor + 0.1 * correction

    def predict(self, x: FloatArray) -> FloatArray:
        """SoH forecasts for windows ``x`` (numpy in, numpy out; no gradient)."""
        if x.shape[0] == 0:
            return np.zeros(0)
        with torch.no_grad():
            out = self.eval()(torch.as_tensor(x, dtype=torch.float32))
        return np.asarray(out.numpy(), dtype=np.float64)


@dataclass(frozen=True)
class TrainSettings:
    """LSTM training settings.

    Attributes:
        lookback: Cycles per input window.
        horizon: Cycles ahead of the last input cycle.
        hidden: LSTM hidden units.
        epochs: Passes over the training windows.
        batch_size: Windows per gradient step.
        learning_rate: Adam step size.
        weight_decay: Adam weight decay.
        seed: Seed of the initial weights and the batch order.
        threads: torch CPU threads while training (the result does not depend on it only
            when it is fixed: keep it for bit-for-bit runs).
        prior: What the network corrects: ``"capacity"`` (the latest rolling capacity
            estimate: a pure LSTM) or ``"fade_law"`` (the semi-empirical law's forecast,
            given as an extra input: a physics-informed hybrid).
        val_fraction: With one member, the share of the training packs held back for
            validation; the weights of the epoch with the lowest validation RMSE are kept
            (0: the last epoch's).
        members: Ensemble members. With more than one, the training packs are dealt into
            ``members`` folds: member ``k`` validates (early stopping) on fold ``k``, fits
            on the others and starts from seed ``seed + k``; the model averages their
            corrections. Every training pack thus serves for validation once, and the
            forecast no longer hangs on one initialisation and one validation draw.
        relative: Read the capacity estimate (and the fade-law prior) relative to the
            window's latest capacity estimate: the network sees the shape of the recent
            fade and the law's predicted drop, not the pack's level, so a pack at a SoH the
            training packs never reached is no extrapolation in those inputs.
    """

    lookback: int = 16
    horizon: int = 30
    hidden: int = 32
    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 1e-5
    seed: int = 0
    threads: int = 1
    prior: str = "capacity"
    val_fraction: float = 0.2
    members: int = 5
    relative: bool = True


def _split_packs(
    packs: Sequence[int], settings: TrainSettings
) -> list[tuple[list[int], list[int]]]:
    """(fit packs, validation packs) of each member (see :class:`TrainSettings`)."""
    order = np.random.default_rng(settings.seed).permutation(len(packs))
    if settings.members == 1:
        n_val = round(settings.val_fraction * len(packs)) if len(packs) >= 3 else 0
        folds = [order[:n_val]]
    elif len(packs) >= settings.members:
        folds = [order[k :: settings.members] for k in range(settings.members)]
    else:
        folds = [order[:0]] * settings.members
    out = []
    for fold in folds:
        val = set(int(j) for j in fold)
        out.append(
            (
                [packs[j] for j in range(len(packs)) if j not in val],
                [packs[j] for j in sorted(val)],
            )
        )
    return out


def train_forecaster(
    data: HealthDataset, packs: Sequence[int], settings: TrainSettings = TrainSettings()
) -> tuple[SohLstm, FloatArray]:
    """Train the LSTM on the windows of ``packs``.

    Returns:
        The model (eval mode) and the NaN fill values it was trained with (pass them to
        :func:`prepare_inputs` / :func:`make_windows` at inference).

    Raises:
        ValueError: If the packs give no window (histories shorter than lookback + horizon).
    """
    if settings.members < 1:
        raise ValueError(f"members must be >= 1, got {settings.members}")
    stacked = np.concatenate([data.features[k][:, _INPUT_COLUMNS] for k in packs])
    fill = np.nan_to_num(np.nanmedian(stacked, axis=0), nan=0.0)

    def windows(which: Sequence[int]) -> ForecastWindows:
        return make_windows(
            data,
            which,
            lookback=settings.lookback,
            horizon=settings.horizon,
            fill=fill,
            prior=settings.prior,
        )

    every = windows(packs)
    if every.y.size == 0:
        raise ValueError(
            f"no training window: histories need more than lookback + horizon = "
            f"{settings.lookback + settings.horizon} cycles"
        )
    n_in = every.x.shape[-1]
    anchor = 0 if settings.prior == "capacity" else n_in - 1
    rel = np.zeros(n_in)
    if settings.relative:
        rel[0] = 1.0
        rel[anchor] = 1.0
    flat = (every.x - rel * every.x[:, -1:, :1]).reshape(-1, n_in)
    mean = flat.mean(axis=0)
    std = np.where(flat.std(axis=0) > 1e-9, flat.std(axis=0), 1.0)

    def model_of(members: int) -> SohLstm:
        return SohLstm(
            n_in,
            settings.hidden,
            mean,
            std,
            settings.horizon,
            anchor=anchor,
            lookback=settings.lookback,
            prior=settings.prior,
            members=members,
            relative=rel,
        )

    with _torch_threads(settings.threads), torch.random.fork_rng(devices=[]):
        ensemble = model_of(settings.members)
        for k, (fit_packs, val_packs) in enumerate(_split_packs(packs, settings)):
            win = windows(fit_packs)
            val = windows(val_packs) if val_packs else None
            if val is not None and val.y.size == 0:
                val = None  # no validation window: keep the last epoch
            torch.manual_seed(settings.seed + k)
            member = _train_member(model_of(1), win, val, settings, seed=settings.seed + k)
            ensemble.lstms[k].load_state_dict(member.lstms[0].state_dict())
            ensemble.heads[k].load_state_dict(member.heads[0].state_dict())
    return ensemble.eval(), fill


def _train_member(
    model: SohLstm,
    win: ForecastWindows,
    val: ForecastWindows | None,
    settings: TrainSettings,
    *,
    seed: int,
) -> SohLstm:
    """Train one member (batch order from ``seed``), keeping its best validation epoch."""
    opt = torch.optim.Adam(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    x_t = torch.as_tensor(win.x, dtype=torch.float32)
    y_t = torch.as_tensor(win.y, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    best_state = copy.deepcopy(model.state_dict())
    best_val = _val_rmse(model, val)
    for _ in range(settings.epochs):
        model.train()
        order_t = torch.randperm(y_t.shape[0], generator=gen)
        for start in range(0, y_t.shape[0], settings.batch_size):
            idx = order_t[start : start + settings.batch_size]
            opt.zero_grad()
            loss = torch.mean((model(x_t[idx]) - y_t[idx]) ** 2)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        score = _val_rmse(model, val)
        if val is None or score < best_val:
            best_val = score
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return model


def _val_rmse(model: SohLstm, val: ForecastWindows | None) -> float:
    """RMSE on the validation windows (``inf`` without any)."""
    if val is None or val.y.size == 0:
        return math.inf
    return float(np.sqrt(np.mean((model.predict(val.x) - val.y) ** 2)))


def linear_extrapolation(capacity: FloatArray, horizon: int) -> float:
    """A least-squares line through ``capacity`` (one value per cycle), ``horizon`` on.

    Example:
        >>> linear_extrapolation(np.array([1.0, 0.99, 0.98]), 10)
        0.88
    """
    n = capacity.size
    t = np.arange(n, dtype=np.float64)
    slope, intercept = np.polyfit(t, capacity, 1)
    return round(float(intercept + slope * (n - 1 + horizon)), 12)


def fade_law_forecast(efc: FloatArray, soh: FloatArray, efc_future: float) -> float:
    """Fit ``SoH = a − b·EFC^z`` (``b ≥ 0``, ``z`` on a grid) and read it at ``efc_future``.

    Args:
        efc: Full equivalent cycles of each past estimate.
        soh: The SoH (capacity) estimates.
        efc_future: Throughput at the forecast time.

    Returns:
        The forecast SoH.
    """
    ok = np.isfinite(efc) & np.isfinite(soh)
    e, s = np.maximum(efc[ok], 0.0), soh[ok]
    if s.size < 3:
        return float(s[-1]) if s.size else float("nan")
    best = (np.inf, float(np.mean(s)), 0.0, 1.0)
    for z in _Z_GRID:
        basis = e**z
        var = float(np.var(basis))
        b = 0.0 if var <= 0 else -float(np.cov(basis, s, bias=True)[0, 1]) / var
        b = max(b, 0.0)
        a = float(np.mean(s + b * basis))
        err = float(np.sum((a - b * basis - s) ** 2))
        if err < best[0]:
            best = (err, a, b, float(z))
    _, a, b, z = best
    return float(a - b * max(efc_future, 0.0) ** z)


@dataclass(frozen=True)
class ForecastReport:
    """Held-out RMSE of the SoH forecast ``horizon`` cycles ahead, and its baselines.

    Attributes:
        rmse_lstm: LSTM.
        rmse_linear: Linear extrapolation of the last ``lookback`` capacity estimates.
        rmse_fade_law: Semi-empirical fade law fitted to the history so far.
        rmse_persistence: Today's capacity estimate as the forecast (no change).
        horizon: Cycles ahead.
        lookback: Cycles per window.
        n_windows: Windows scored.
        model: The trained LSTM.
        fill: Its NaN fill values.
    """

    rmse_lstm: float
    rmse_linear: float
    rmse_fade_law: float
    rmse_persistence: float
    horizon: int
    lookback: int
    n_windows: int
    model: SohLstm
    fill: FloatArray


def _rmse(a: FloatArray, b: FloatArray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2))) if a.size else float("nan")


def evaluate_forecaster(
    data: HealthDataset,
    train: Sequence[int],
    test: Sequence[int],
    settings: TrainSettings = TrainSettings(),
) -> ForecastReport:
    """Train on ``train`` packs; RMSE of the LSTM and the baselines on ``test`` packs."""
    model, fill = train_forecaster(data, train, settings)
    win = make_windows(
        data,
        test,
        lookback=settings.lookback,
        horizon=settings.horizon,
        fill=fill,
        prior=settings.prior,
    )
    lstm = model.predict(win.x)
    linear = np.empty(win.y.size)
    law = np.empty(win.y.size)
    for j in range(win.y.size):
        k, end = int(win.pack[j]), int(win.cycle[j])
        cap = win.capacity[k]
        efc = win.efc[k]
        linear[j] = linear_extrapolation(
            cap[end - settings.lookback + 1 : end + 1], settings.horizon
        )
        rate = (efc[end] - efc[end - settings.lookback + 1]) / max(settings.lookback - 1, 1)
        law[j] = fade_law_forecast(
            efc[: end + 1], cap[: end + 1], efc[end] + rate * settings.horizon
        )
    return ForecastReport(
        rmse_lstm=_rmse(lstm, win.y),
        rmse_linear=_rmse(linear, win.y),
        rmse_fade_law=_rmse(law, win.y),
        rmse_persistence=_rmse(win.x[:, -1, 0], win.y),
        horizon=settings.horizon,
        lookback=settings.lookback,
        n_windows=int(win.y.size),
        model=model,
        fill=fill,
    )

"""PulseBMS's PPO Learner for RLlib: RLlib's torch PPO Learner with cheaper per-minibatch work.

:class:`PulsePPOTorchLearner` computes RLlib's PPO update (same loss, same optimizer
formula, same metrics) with less per-minibatch overhead than RLlib's generic torch Learner
pays on every SGD step, which a small MLP policy on a CPU feels (``pulsebms-bench ray``
measures it against SB3's PPO):

* **Minibatches by index.** RLlib's ``MiniBatchCyclicIterator`` slices the train batch
  (a ``SampleBatch`` of ~10 columns) and concatenates the slices for every minibatch, and
  shuffles by copying every column at each epoch's end. :class:`IndexedCyclicIterator`
  walks the same cycle over an index permutation instead (one gather per column and
  minibatch): the same minibatches, the same reshuffle points and the same
  ``np.random.permutation`` draws as RLlib's iterator (bit-identical on the same batch).
  Batches it does not cover (sequences with ``seq_lens``, columns that are not flat
  arrays or tensors) keep RLlib's iterator.
* **Only the rows the loss uses.** RLlib's PPO train batch holds one masked bootstrap row
  per episode chunk, spread over the minibatches, and every loss term takes a masked mean;
  this Learner drops those rows before minibatching (:func:`without_masked_rows`), so each
  minibatch holds ``minibatch_size`` rows the loss uses, as SB3's do (set
  ``drop_masked_rows = False`` for RLlib's minibatches bit for bit).
* **One finiteness check, not two per parameter.** RLlib's ``apply_gradients`` calls
  ``torch.isfinite(grad).all()`` on every parameter's gradient, then again on every
  parameter before the optimizer step: 2 × (number of parameter tensors) small kernels and
  Python↔tensor syncs per minibatch (26 for a 64-64 actor and critic). This Learner checks
  all gradients with one reduction; only when some gradient is not finite (or when grad
  scalers or torch LR schedulers are configured) does it hand over to RLlib's own
  ``apply_gradients``, which then zeroes the NaNs and warns as usual.
* **Fused optimizer, multi-tensor clip.** Adam runs torch's fused kernel, one kernel for
  the whole step (torch's CPU default loops over the parameters in Python, about ten kernels
  each): the same update formula, with other rounding in the last bits, repeatable run to
  run. ``learner_config_dict["fused_adam"] = False`` (``ray.fused_adam=false``) runs the
  ``foreach=True`` multi-tensor step instead, RLlib's arithmetic bit for bit. The
  global-norm gradient clip runs as two ``torch._foreach_*`` calls
  (:func:`clip_by_global_norm`), whose per-tensor norms also establish that every gradient
  is finite: same arithmetic, bit-identical.
* **Metrics once per update.** RLlib reduces and logs the PPO loss metrics and the
  gradient norm on every minibatch with a window of one, and eight steps-trained counters
  per minibatch; this Learner logs the same reported values (the last minibatch's terms,
  the update's sums) once per update.
* **Its own minibatch loop.** RLlib's ``Learner.update`` builds a ``SampleBatch`` and a
  ``MultiAgentBatch`` per minibatch and runs a module-id check, two Prometheus counters,
  the steps-trained counters and the slicing flags per minibatch; its ``_update`` keys the
  gradients by parameter in three dicts per step (computed, filtered per optimizer, set
  back on the parameters). :meth:`PulsePPOTorchLearner.update` runs the same steps in the
  same order on plain dicts of rows gathered once per column and pass
  (:meth:`IndexedCyclicIterator.column_minibatches`), does the bookkeeping once per update
  with the update's totals, and, for one module with one optimizer, steps with the
  parameters in a list (:meth:`PulsePPOTorchLearner._gradient_step`). Bit-identical
  weights and metrics (tested); ``own_update_loop = False`` restores RLlib's loop.
* **The Gaussian's terms as tensor ops.** The loss's log-prob, entropy and KL of RLlib's
  ``TorchDiagGaussian`` run through a ``torch.distributions.Normal`` built per minibatch;
  :class:`DiagGaussianTerms` runs the same operations on the same tensors (bit-identical
  values and gradients).
* **Off-policyness once per update.** RLlib logs how many weight updates separate the
  samples from the Learner's weights on every minibatch, with a window of one (only the
  last value is reported); this Learner logs it for the first minibatch of each update.
  PPO samples synchronously, so every sample of a batch carries the same weights number and
  the reported figure is the same.

PPO-Lagrangian's learner (:class:`~pulsebms.agents.rllib_lagrangian.PPOLagrangianTorchLearner`)
derives from this class. :func:`pulsebms.agents.rllib.build_rllib_algorithm` uses it for PPO
unless a ``learner_class`` is given.

Example:
    >>> import torch
    >>> grads = [torch.ones(3), torch.zeros(2, 2)]
    >>> all_finite(grads), all_finite([*grads, torch.tensor([float("nan")])])
    (True, False)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from ray.rllib.algorithms.ppo.ppo import (
    LEARNER_RESULTS_KL_KEY,
    LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY,
    LEARNER_RESULTS_VF_LOSS_UNCLIPPED_KEY,
)
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core import ALL_MODULES
from ray.rllib.core.columns import Columns
from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.core.learner.training_data import TrainingData
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.metrics import (
    MODULE_TRAIN_BATCH_SIZE_MEAN,
    NUM_ENV_STEPS_TRAINED,
    NUM_ENV_STEPS_TRAINED_LIFETIME,
    NUM_MODULE_STEPS_TRAINED,
    NUM_MODULE_STEPS_TRAINED_LIFETIME,
    WEIGHTS_SEQ_NO,
)
from ray.rllib.utils.metrics.ray_metrics import TimerAndPrometheusLogger
from ray.rllib.utils.minibatch_utils import MiniBatchCyclicIterator
from ray.rllib.utils.torch_utils import explained_variance

from pulsebms.agents.rllib_gae import batch_learner_connector

__all__ = [
    "FUSED_ADAM_KEY",
    "DiagGaussianTerms",
    "IndexedCyclicIterator",
    "PulsePPOTorchLearner",
    "RLlibLoopPPOTorchLearner",
    "all_finite",
    "clip_by_global_norm",
    "without_masked_rows",
]


def all_finite(tensors: Iterable[torch.Tensor | None]) -> bool:
    """Whether every element of every tensor is finite (``None`` entries are skipped).

    One concatenation and one reduction for all tensors: the per-minibatch check of all
    gradients at the cost of one small kernel instead of one per parameter.

    Example:
        >>> all_finite([torch.ones(2), None]), all_finite([torch.tensor([float("inf")])])
        (True, False)
    """
    flat = [t.reshape(-1) for t in tensors if t is not None]
    if not flat:
        return True
    return bool(torch.isfinite(torch.cat(flat)).all())


def clip_by_global_norm(
    grads: list[torch.Tensor], grad_clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale ``grads`` in place to a global L2 norm of at most ``grad_clip``.

    Returns:
        The global norm (RLlib's figure) and a boolean tensor: whether every gradient's
        norm is finite, which implies every gradient is finite (a non-finite element makes
        its tensor's norm inf or NaN), so the caller needs no separate finiteness check.

    RLlib's ``clip_gradients(grad_clip_by="global_norm")`` arithmetic (the same per-tensor
    norms with non-finite norms replaced, the same ``grad_clip / max(norm + 1e-6,
    grad_clip)`` factor capped at 1, the same in-place products: bit-identical results),
    with the per-tensor norms and products as two ``torch._foreach_*`` calls instead of a
    Python loop of kernels per gradient (what ``torch.nn.utils.clip_grad_norm_`` does).

    Example:
        >>> g = [torch.tensor([3.0]), torch.tensor([4.0])]
        >>> norm, finite = clip_by_global_norm(g, 1.0)
        >>> float(norm), bool(finite), [round(float(x), 4) for x in torch.cat(g)]
        (5.0, True, [0.6, 0.8])
    """
    if not grads:
        return torch.tensor(0.0), torch.tensor(True)
    norms = torch.stack(torch._foreach_norm(grads, 2.0))
    finite = torch.isfinite(norms).all()
    total_norm: torch.Tensor = torch.norm(
        norms.nan_to_num(neginf=-10e8, posinf=10e8), 2.0
    ).nan_to_num(neginf=-10e8, posinf=10e8)
    clip_coeff = torch.clamp(grad_clip / torch.clamp(total_norm + 1e-6, min=grad_clip), max=1.0)
    torch._foreach_mul_(grads, clip_coeff)
    return total_norm, finite


class IndexedCyclicIterator:
    """RLlib's cyclic minibatch iterator over an index permutation instead of data copies.

    Yields the minibatches RLlib's ``MiniBatchCyclicIterator`` yields for the same batch,
    settings and numpy random state: minibatches of ``minibatch_size`` rows taken in order
    from the (shuffled) batch, running on across its end into the next pass; each pass
    over a module's batch counts as an epoch, and at every pass end the order is shuffled
    with ``np.random.permutation(len(batch))`` (RLlib's ``SampleBatch.shuffle``). It stops
    when every module's batch has been covered ``num_epochs`` times (or after
    ``num_total_minibatches`` minibatches, if > 0). Only the rows of each minibatch are
    gathered; the train batch itself is never copied.

    Args:
        batch: The train batch; every column a flat ``torch.Tensor`` or ``np.ndarray``
            (see :meth:`supports`).
        num_epochs: Passes over each module's batch.
        minibatch_size: Rows per minibatch.
        shuffle_batch_per_epoch: Reshuffle at every pass end.
        num_total_minibatches: If > 0, the number of minibatches instead of ``num_epochs``.

    Raises:
        ValueError: If a module's batch is empty (the cycle would never end).

    Example:
        >>> batch = SampleBatch({"obs": np.arange(5.0)}).as_multi_agent()
        >>> it = IndexedCyclicIterator(batch, num_epochs=2, minibatch_size=4,
        ...                            shuffle_batch_per_epoch=False)
        >>> [mb.policy_batches["default_policy"]["obs"].tolist() for mb in it]
        [[0.0, 1.0, 2.0, 3.0], [4.0, 0.0, 1.0, 2.0], [3.0, 4.0, 0.0, 1.0]]
    """

    def __init__(
        self,
        batch: MultiAgentBatch,
        *,
        num_epochs: int = 1,
        minibatch_size: int,
        shuffle_batch_per_epoch: bool = True,
        num_total_minibatches: int = 0,
    ) -> None:
        for module_id, module_batch in batch.policy_batches.items():
            if len(module_batch) == 0:
                raise ValueError(
                    f"The batch of module {module_id!r} is empty: the minibatch cycle would "
                    "never cover it"
                )
        self._batch = batch
        self._num_epochs = int(num_epochs)
        self._minibatch_size = int(minibatch_size)
        self._shuffle = bool(shuffle_batch_per_epoch)
        self._num_total_minibatches = int(num_total_minibatches)

    @staticmethod
    def supports(batch: MultiAgentBatch) -> bool:
        """Whether every module batch is flat rows of tensors/arrays (no sequences, no lists)."""
        for module_batch in batch.policy_batches.values():
            if SampleBatch.SEQ_LENS in module_batch or getattr(
                module_batch, "_slice_seq_lens_in_B", False
            ):
                return False
            count = len(module_batch)
            for value in module_batch.values():
                if not isinstance(value, torch.Tensor | np.ndarray) or value.ndim == 0:
                    return False
                if value.shape[0] != count:
                    return False
        return True

    def __iter__(self) -> Iterator[MultiAgentBatch]:
        batches = self._batch.policy_batches
        order = {mid: np.arange(len(b)) for mid, b in batches.items()}
        start = dict.fromkeys(batches, 0)
        covered = dict.fromkeys(batches, 0)
        made = 0
        while (self._num_total_minibatches == 0 and min(covered.values()) < self._num_epochs) or (
            self._num_total_minibatches > 0 and made < self._num_total_minibatches
        ):
            minibatch: dict[Any, SampleBatch] = {}
            for mid, module_batch in batches.items():
                size = len(module_batch)
                s, need = start[mid], self._minibatch_size
                parts = []
                while s + need >= size:  # the rest of this pass, then wrap (and reshuffle)
                    parts.append(order[mid][s:])
                    need -= size - s
                    s = 0
                    covered[mid] += 1
                    if self._shuffle:
                        # RLlib's SampleBatch.shuffle draws from the global numpy state (seeded).
                        order[mid] = order[mid][np.random.permutation(size)]  # noqa: NPY002
                if need > 0:
                    parts.append(order[mid][s : s + need])
                start[mid] = s + need
                index = parts[0] if len(parts) == 1 else np.concatenate(parts)
                minibatch[mid] = SampleBatch(  # type: ignore[no-untyped-call]  # RLlib is untyped
                    _take_rows(module_batch, index)
                )
            made += 1
            yield MultiAgentBatch(minibatch, len(self._batch))

    def column_minibatches(self) -> Iterator[dict[Any, dict[str, torch.Tensor | np.ndarray]]]:
        """The same minibatches as plain ``{module_id: {column: rows}}`` dicts, gathered per pass.

        Walks the same cycle as :meth:`__iter__` (the same rows in the same order, the same
        ``np.random.permutation`` draws at the same points), but gathers each column once
        per pass over a module's batch (one ``index_select`` of the whole batch after each
        reshuffle, none for the unshuffled first pass) and takes every minibatch as slices
        of that copy (a minibatch running across a pass end: the two slices concatenated):
        ~10 gathers per pass instead of ~10 per minibatch, and no ``SampleBatch`` or
        ``MultiAgentBatch`` per minibatch. Every minibatch column is contiguous and holds
        the values :meth:`__iter__` yields, element for element.

        Example:
            >>> batch = SampleBatch({"obs": np.arange(5.0)}).as_multi_agent()
            >>> it = IndexedCyclicIterator(batch, num_epochs=2, minibatch_size=4,
            ...                            shuffle_batch_per_epoch=False)
            >>> [mb["default_policy"]["obs"].tolist() for mb in it.column_minibatches()]
            [[0.0, 1.0, 2.0, 3.0], [4.0, 0.0, 1.0, 2.0], [3.0, 4.0, 0.0, 1.0]]
        """
        batches = self._batch.policy_batches
        columns = {mid: dict(b) for mid, b in batches.items()}
        order = {mid: np.arange(len(b)) for mid, b in batches.items()}
        # The current pass's rows in order: the batch itself until the first reshuffle.
        passes: dict[Any, dict[str, torch.Tensor | np.ndarray] | None] = dict(columns)
        start = dict.fromkeys(batches, 0)
        covered = dict.fromkeys(batches, 0)
        made = 0
        while (self._num_total_minibatches == 0 and min(covered.values()) < self._num_epochs) or (
            self._num_total_minibatches > 0 and made < self._num_total_minibatches
        ):
            minibatch: dict[Any, dict[str, torch.Tensor | np.ndarray]] = {}
            for mid, module_columns in columns.items():
                size = len(order[mid])
                s, need = start[mid], self._minibatch_size
                pieces: list[dict[str, torch.Tensor | np.ndarray]] = []
                while s + need >= size:  # the rest of this pass, then wrap (and reshuffle)
                    if s < size:
                        pieces.append(
                            _slice_rows(
                                _current_pass(passes, mid, module_columns, order[mid]), s, size
                            )
                        )
                    need -= size - s
                    s = 0
                    covered[mid] += 1
                    if self._shuffle:
                        # The draws of __iter__ (and RLlib's SampleBatch.shuffle), in order.
                        order[mid] = order[mid][np.random.permutation(size)]  # noqa: NPY002
                        passes[mid] = None  # gathered when its first row is needed
                if need > 0:
                    pieces.append(
                        _slice_rows(
                            _current_pass(passes, mid, module_columns, order[mid]), s, s + need
                        )
                    )
                start[mid] = s + need
                minibatch[mid] = pieces[0] if len(pieces) == 1 else _concat_rows(pieces)
            made += 1
            yield minibatch


def _current_pass(
    passes: dict[Any, dict[str, torch.Tensor | np.ndarray] | None],
    module_id: Any,
    columns: Mapping[str, torch.Tensor | np.ndarray],
    order: np.ndarray,
) -> dict[str, torch.Tensor | np.ndarray]:
    """The module's rows in the current pass's order, gathered once per pass."""
    rows = passes[module_id]
    if rows is None:
        rows = passes[module_id] = _take_rows(columns, order)
    return rows


def _slice_rows(
    columns: Mapping[str, torch.Tensor | np.ndarray], start: int, stop: int
) -> dict[str, torch.Tensor | np.ndarray]:
    """Rows ``start:stop`` of every column (views, contiguous: the rows are leading)."""
    return {key: value[start:stop] for key, value in columns.items()}


def _concat_rows(
    pieces: list[dict[str, torch.Tensor | np.ndarray]],
) -> dict[str, torch.Tensor | np.ndarray]:
    """The pieces' rows one after the other, column by column."""
    out: dict[str, torch.Tensor | np.ndarray] = {}
    for key, first in pieces[0].items():
        parts = [piece[key] for piece in pieces]
        if isinstance(first, torch.Tensor):
            out[key] = torch.cat(parts)  # type: ignore[arg-type]  # all pieces are one kind
        else:
            out[key] = np.concatenate(parts)
    return out


def without_masked_rows(batch: MultiAgentBatch) -> MultiAgentBatch:
    """The train batch without the rows its ``loss_mask`` excludes, and without the mask.

    RLlib's PPO adds one extra time step to each episode chunk (the bootstrap observation of
    the value targets) and masks it out of the loss with ``loss_mask``. Once the value
    targets and advantages are computed (the learner connector, before minibatching), those
    rows carry nothing the loss uses; RLlib still spreads them over the minibatches (one
    chunk per env and runner: ~1 % of the rows at 4 envs and 1536 steps, which is why an
    iteration ran 122 minibatches where SB3 runs 120), and every loss term then takes a
    masked mean. Without them every minibatch holds ``minibatch_size`` rows the loss uses
    and the loss takes plain means: the same objective per valid row, SB3's minibatch
    count. A module whose rows are all masked is left as it is.

    Example:
        >>> from ray.rllib.core.columns import Columns
        >>> batch = SampleBatch({"x": np.arange(4.0), Columns.LOSS_MASK: np.array(
        ...     [True, False, True, True])}).as_multi_agent()
        >>> dict(without_masked_rows(batch).policy_batches["default_policy"])
        {'x': array([0., 2., 3.])}
    """
    batches: dict[Any, SampleBatch] = {}
    for module_id, module_batch in batch.policy_batches.items():
        if Columns.LOSS_MASK not in module_batch:
            batches[module_id] = module_batch
            continue
        mask = module_batch[Columns.LOSS_MASK]
        if isinstance(mask, torch.Tensor):
            mask = mask.cpu().numpy()
        keep = np.flatnonzero(np.asarray(mask, dtype=bool))
        if keep.size == 0:
            batches[module_id] = module_batch
            continue
        columns = {key: value for key, value in module_batch.items() if key != Columns.LOSS_MASK}
        batches[module_id] = SampleBatch(  # type: ignore[no-untyped-call]  # RLlib is untyped
            _take_rows(columns, keep)
        )
    return MultiAgentBatch(batches, batch.env_steps())


def _take_rows(
    columns: Mapping[str, torch.Tensor | np.ndarray], index: np.ndarray
) -> dict[str, torch.Tensor | np.ndarray]:
    """The rows ``index`` (int64) of every column.

    ``index_select`` on tensors, with one index tensor per device for all of them (not one
    conversion and advanced indexing per column: ~2× cheaper per minibatch of ~10
    columns); numpy indexing on arrays.
    """
    on_device: dict[torch.device, torch.Tensor] = {}
    taken: dict[str, torch.Tensor | np.ndarray] = {}
    for key, value in columns.items():
        if isinstance(value, torch.Tensor):
            rows = on_device.get(value.device)
            if rows is None:
                rows = on_device[value.device] = torch.from_numpy(index).to(value.device)
            taken[key] = value.index_select(0, rows)
        else:
            taken[key] = value[index]
    return taken


_HALF_LOG_2PI = math.log(math.sqrt(2 * math.pi))
_NORMAL_ENTROPY_CONST = 0.5 + 0.5 * math.log(2 * math.pi)


class DiagGaussianTerms:
    """``TorchDiagGaussian``'s log-prob, entropy and KL as the tensor ops it runs.

    RLlib's diagonal Gaussian wraps a ``torch.distributions.Normal`` (built on every
    minibatch, twice with the KL term) and reaches ``Normal.log_prob``/``entropy`` and
    ``kl_divergence``'s normal-normal rule through two layers of objects; these are the
    same operations on the same tensors in the same order (``from_logits``' chunk and
    ``exp``, ``Normal``'s argument broadcast, then each formula as torch writes it, summed
    over the action dimension), so values and gradients are bit-identical (tested).

    Example:
        >>> logits = torch.tensor([[0.0, 1.0, 0.0, 0.5]])
        >>> from ray.rllib.core.distribution.torch.torch_distribution import TorchDiagGaussian
        >>> a, b = DiagGaussianTerms(logits), TorchDiagGaussian.from_logits(logits)
        >>> x = torch.tensor([[0.3, 0.2]])
        >>> bool(torch.equal(a.logp(x), b.logp(x))), bool(torch.equal(a.entropy(), b.entropy()))
        (True, True)
    """

    __slots__ = ("loc", "scale")

    def __init__(self, logits: torch.Tensor) -> None:
        loc, log_std = logits.chunk(2, dim=-1)
        broadcast: Any = torch.broadcast_tensors  # Normal's broadcast_all (torch types it loosely)
        self.loc, self.scale = broadcast(loc, log_std.exp())

    def logp(self, value: torch.Tensor) -> torch.Tensor:
        """``Normal.log_prob`` summed over the last dimension."""
        var = self.scale**2
        log_prob = -((value - self.loc) ** 2) / (2 * var) - self.scale.log() - _HALF_LOG_2PI
        summed: torch.Tensor = log_prob.sum(-1)
        return summed

    def entropy(self) -> torch.Tensor:
        """``Normal.entropy`` summed over the last dimension."""
        return (_NORMAL_ENTROPY_CONST + torch.log(self.scale)).sum(-1)

    def kl(self, other: DiagGaussianTerms) -> torch.Tensor:
        """``kl_divergence(Normal, Normal)``, ``self`` ‖ ``other``, summed over the last dim."""
        var_ratio = (self.scale / other.scale).pow(2)
        t1 = ((self.loc - other.loc) / other.scale).pow(2)
        summed: torch.Tensor = (0.5 * (var_ratio + t1 - 1 - var_ratio.log())).sum(-1)
        return summed


FUSED_ADAM_KEY = "fused_adam"
"""``learner_config_dict`` key: Adam with torch's fused kernel (default ``True``; ``False``:
the ``foreach`` step, RLlib's arithmetic; see ``ray.fused_adam``)."""


class PulsePPOTorchLearner(PPOTorchLearner):
    """RLlib's torch PPO Learner with index minibatches and one finiteness check per step.

    Attributes:
        drop_masked_rows: Take minibatches from the rows the loss uses only (see
            :func:`without_masked_rows`); ``False``: RLlib's minibatches, bit for bit.
        own_update_loop: Run the epochs × minibatches loop in :meth:`update` (one gather
            per column and pass, bookkeeping once per update, :meth:`_gradient_step`);
            ``False``: RLlib's ``Learner.update`` loop. The same weights and metrics.
        gaussian_terms: Compute the diagonal Gaussian's log-prob, entropy and KL with
            :class:`DiagGaussianTerms`; ``False``: RLlib's distribution objects. The same
            values and gradients.
    """

    drop_masked_rows: ClassVar[bool] = True
    own_update_loop: ClassVar[bool] = True
    gaussian_terms: ClassVar[bool] = True

    def build(self) -> None:
        """Build as RLlib does, with empty stores for the metrics logged once per update.

        RLlib's GAE piece of the default learner pipeline becomes the batched one
        (:func:`~pulsebms.agents.rllib_gae.batch_learner_connector`) when every module is
        stateless.
        """
        super().build()
        if self.config.add_default_connectors_to_learner_pipeline:
            modules: Any = self.module
            stateful = any(m.is_stateful() for m in modules._rl_modules.values())
            batch_learner_connector(self._learner_connector, stateful=stateful)
        self._pending_loss_metrics: dict[Any, dict[str, torch.Tensor]] = {}
        self._pending_grad_norms: dict[tuple[Any, str], torch.Tensor] = {}
        # Per module: [minibatches, rows]; and the env steps of the update's minibatches.
        self._pending_module_steps: dict[Any, list[int]] = {}
        self._pending_env_steps = 0
        # Gradients (param refs) whose finiteness the global-norm clip has established.
        self._grads_known_finite: set[Any] = set()

    @property
    def fused_adam(self) -> bool:
        """Whether Adam runs torch's fused kernel (``learner_config_dict["fused_adam"]``).

        On unless the key is ``False`` (then the ``foreach`` step, RLlib's arithmetic).
        """
        return bool(self.config.learner_config_dict.get(FUSED_ADAM_KEY, True))

    def _adam_kernel(self) -> dict[str, bool | None]:
        """Adam's kernel flags: fused, or the multi-tensor foreach step."""
        if self.fused_adam:
            return {"fused": True, "foreach": False}
        return {"fused": None, "foreach": True}

    def configure_optimizers_for_module(self, module_id: Any, config: Any = None) -> None:
        """RLlib's optimizer (Adam over the module's parameters) with torch's fused kernel.

        Torch's fused Adam runs the whole step as one kernel, where torch's CPU default
        loops over the parameters in Python (about ten kernels per parameter): the same
        update formula, repeatable run to run, its rounding differs from RLlib's in the last
        bits. With ``learner_config_dict["fused_adam"] = False`` (``ray.fused_adam=false``),
        the ``foreach=True`` multi-tensor step instead: one ``torch._foreach_*`` kernel per
        update term for all parameters, RLlib's arithmetic and weights bit for bit.
        """
        modules: Any = self._module
        params = self.get_parameters(modules[module_id])
        kernel = self._adam_kernel()
        self.register_optimizer(
            module_id=module_id,
            optimizer=torch.optim.Adam(params, foreach=kernel["foreach"], fused=kernel["fused"]),
            params=params,
            lr_or_lr_schedule=config.lr,
        )

    def _set_optimizer_state(self, state: dict[str, Any]) -> None:
        """RLlib's optimizer restore; Adam keeps this Learner's kernel (foreach or fused).

        ``load_state_dict`` takes the param-group settings from the checkpoint, and
        checkpoints written before this Learner used ``foreach=True`` hold ``None``
        (torch's per-parameter loop on CPU), those of a fused-Adam run ``fused=True``:
        the moments and step counts are restored as saved, the kernel is this Learner's.
        """
        super()._set_optimizer_state(state)
        kernel = self._adam_kernel()
        for optimizer in self._named_optimizers.values():
            if isinstance(optimizer, torch.optim.Adam):
                for group in optimizer.param_groups:
                    group.update(kernel)

    def compute_loss_for_module(
        self, *, module_id: Any, config: Any, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> torch.Tensor:
        """RLlib's PPO loss; its metrics are reduced and logged once per update.

        RLlib reduces and logs six loss metrics on every minibatch with a window of one,
        so only the last minibatch's values are ever reported; this keeps the last
        minibatch's (detached) terms and logs the same six values from them once, at the
        end of the update (:meth:`after_gradient_based_update`). The loss itself is
        RLlib's, term for term. Batches with a ``loss_mask`` (sequences, or
        ``drop_masked_rows = False``) and critic-less modules take RLlib's own loss.
        """
        if Columns.LOSS_MASK in batch or not config.use_critic:
            loss: Any = super().compute_loss_for_module(
                module_id=module_id, config=config, batch=batch, fwd_out=fwd_out
            )
            return loss  # type: ignore[no-any-return]  # RLlib types it tensor | array
        module: Any = self.module[module_id].unwrapped()
        curr_action_dist = self._action_dist(
            module.get_train_action_dist_cls(), fwd_out[Columns.ACTION_DIST_INPUTS]
        )
        logp_ratio = torch.exp(
            curr_action_dist.logp(batch[Columns.ACTIONS]) - batch[Columns.ACTION_LOGP]
        )
        mean_kl_loss: Any
        if config.use_kl_loss:
            prev_action_dist = self._action_dist(
                module.get_exploration_action_dist_cls(), batch[Columns.ACTION_DIST_INPUTS]
            )
            mean_kl_loss = torch.mean(prev_action_dist.kl(curr_action_dist))
        else:
            mean_kl_loss = torch.tensor(0.0, device=logp_ratio.device)
        curr_entropy = curr_action_dist.entropy()
        advantages = batch[Postprocessing.ADVANTAGES]
        surrogate_loss = torch.min(
            advantages * logp_ratio,
            advantages * torch.clamp(logp_ratio, 1 - config.clip_param, 1 + config.clip_param),
        )
        value_fn_out = module.compute_values(batch, embeddings=fwd_out.get(Columns.EMBEDDINGS))
        value_targets = batch[Postprocessing.VALUE_TARGETS]
        vf_loss = torch.pow(value_fn_out - value_targets, 2.0)
        # A square is >= 0 (or NaN): clamping it into [0, inf] changes nothing.
        vf_loss_clipped = (
            vf_loss
            if config.vf_clip_param == float("inf")
            else torch.clamp(vf_loss, 0, config.vf_clip_param)
        )
        entropy_coeff = self.entropy_coeff_schedulers_per_module[module_id].get_current_value()
        total_loss = torch.mean(
            -surrogate_loss + config.vf_loss_coeff * vf_loss_clipped - entropy_coeff * curr_entropy
        )
        if config.use_kl_loss:
            kl_coeff: Any = self.curr_kl_coeffs_per_module[module_id]
            total_loss += kl_coeff * mean_kl_loss
        self._pending_loss_metrics[module_id] = {
            "surrogate": surrogate_loss.detach(),
            "vf_clipped": vf_loss_clipped.detach(),
            "vf": vf_loss.detach(),
            "values": value_fn_out.detach(),
            "targets": value_targets,
            "entropy": curr_entropy.detach(),
            "kl": mean_kl_loss.detach(),
        }
        return total_loss

    def postprocess_gradients_for_module(
        self, *, module_id: Any, config: Any = None, module_gradients_dict: dict[Any, Any]
    ) -> dict[Any, Any]:
        """RLlib's global-norm clip in one pass (:func:`clip_by_global_norm`), norm logged once.

        RLlib logs each optimizer's global gradient norm on every minibatch with a window
        of one; this keeps the last one and logs it at the end of the update. Other clip
        modes (and no clip) are RLlib's.
        """
        if not config.grad_clip or config.grad_clip_by != "global_norm":
            grads: dict[Any, Any] = super().postprocess_gradients_for_module(
                module_id=module_id, config=config, module_gradients_dict=module_gradients_dict
            )
            return grads
        out: dict[Any, Any] = {}
        for optimizer_name, optimizer in self.get_optimizers_for_module(module_id):
            to_clip = self.filter_param_dict_for_optimizer(module_gradients_dict, optimizer)
            present = [g for g in to_clip.values() if g is not None]
            norm, finite = clip_by_global_norm(present, config.grad_clip)
            self._pending_grad_norms[(module_id, f"gradients_{optimizer_name}_global_norm")] = norm
            if finite:  # clipped by a finite factor: still finite (see apply_gradients)
                self._grads_known_finite.update(to_clip)
            out.update(to_clip)
        return out

    def _log_steps_trained_metrics(self, batch: MultiAgentBatch) -> None:
        """Count the minibatch's rows; :meth:`_flush_steps_trained_metrics` logs them."""
        for module_id, module_batch in batch.policy_batches.items():
            counts = self._pending_module_steps.setdefault(module_id, [0, 0])
            counts[0] += 1
            counts[1] += len(module_batch)
        self._pending_env_steps += batch.env_steps()

    def _flush_steps_trained_metrics(self) -> None:
        """RLlib's steps-trained metrics for the whole update, logged once.

        RLlib logs eight values per minibatch; the sums (steps trained, this update and
        lifetime) are the same when logged once with the update's totals, the weights
        number is the same for every minibatch of an update, and the mean minibatch size
        is logged as the update's mean (RLlib's figure whenever all minibatches of an
        update have one size, as the cyclic iterator makes them). The throughput figures
        RLlib derives from the lifetime counters are then rates between updates rather
        than between minibatches.
        """
        log = self.metrics.log_value
        for module_id, (minibatches, rows) in self._pending_module_steps.items():
            log((module_id, WEIGHTS_SEQ_NO), self._weights_seq_no, window=1)
            log((module_id, MODULE_TRAIN_BATCH_SIZE_MEAN), rows / minibatches, reduce="mean")
            log((module_id, NUM_MODULE_STEPS_TRAINED), rows, reduce="sum")
            log(
                (module_id, NUM_MODULE_STEPS_TRAINED_LIFETIME),
                rows,
                reduce="lifetime_sum",
                with_throughput=True,
            )
            log((ALL_MODULES, NUM_MODULE_STEPS_TRAINED), rows, reduce="sum", with_throughput=True)
            log(
                (ALL_MODULES, NUM_MODULE_STEPS_TRAINED_LIFETIME),
                rows,
                reduce="lifetime_sum",
                with_throughput=True,
            )
        if self._pending_module_steps:
            env_steps = self._pending_env_steps
            log((ALL_MODULES, NUM_ENV_STEPS_TRAINED), env_steps, reduce="sum", with_throughput=True)
            log(
                (ALL_MODULES, NUM_ENV_STEPS_TRAINED_LIFETIME),
                env_steps,
                reduce="lifetime_sum",
                with_throughput=True,
            )
        self._pending_module_steps.clear()
        self._pending_env_steps = 0

    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        """Log the update's last loss metrics and gradient norms, then RLlib's hooks.

        The values RLlib would report (window one: the last minibatch's), reduced from
        the kept terms with RLlib's own expressions; logged before PPO's hook, which reads
        the KL metric to adapt the KL coefficient.
        """
        for module_id, terms in self._pending_loss_metrics.items():
            self.metrics.log_dict(
                {
                    POLICY_LOSS_KEY: -torch.mean(terms["surrogate"]),
                    VF_LOSS_KEY: torch.mean(terms["vf_clipped"]),
                    LEARNER_RESULTS_VF_LOSS_UNCLIPPED_KEY: torch.mean(terms["vf"]),
                    LEARNER_RESULTS_VF_EXPLAINED_VAR_KEY: explained_variance(
                        terms["targets"], terms["values"]
                    ),
                    ENTROPY_KEY: torch.mean(terms["entropy"]),
                    LEARNER_RESULTS_KL_KEY: terms["kl"],
                },
                key=module_id,
                window=1,
            )
        for key, norm in self._pending_grad_norms.items():
            self.metrics.log_value(key=key, value=norm, window=1)
        self._pending_loss_metrics.clear()
        self._pending_grad_norms.clear()
        self._flush_steps_trained_metrics()
        super().after_gradient_based_update(timesteps=timesteps)

    def update(  # RLlib's signature
        self,
        batch: MultiAgentBatch | None = None,
        batches: list[MultiAgentBatch] | None = None,
        batch_refs: list[Any] | None = None,
        episodes: list[Any] | None = None,
        episodes_refs: list[Any] | None = None,
        data_iterators: list[Any] | None = None,
        training_data: TrainingData | None = None,
        *,
        timesteps: dict[str, Any] | None = None,
        num_total_minibatches: int = 0,
        num_epochs: int = 1,
        minibatch_size: int | None = None,
        shuffle_batch_per_epoch: bool = False,
        _no_metrics_reduce: bool = False,
        **kwargs: Any,
    ) -> Any:
        """RLlib's ``Learner.update`` (epochs × minibatches of SGD), its loop run here.

        The same steps in the same order as RLlib's: ``before_gradient_based_update``,
        the train batch from the learner connector, the weights number, then one
        gradient step per minibatch of the cycle (:meth:`_create_iterator_if_necessary`),
        the last minibatch's total loss, ``after_gradient_based_update`` and the metrics
        reduce. What differs is the per-minibatch work around the gradient step
        (:meth:`_run_column_minibatches`): the minibatches come from
        :meth:`IndexedCyclicIterator.column_minibatches` (one gather per column and
        pass, plain dicts), the module-id check, Ray's two Prometheus counters and the
        steps-trained counters run once per update with the update's totals, and with
        one module and one optimizer the step itself skips RLlib's per-minibatch
        gradient dicts (:meth:`_gradient_step`). Seeded weights and every reported
        metric are those of RLlib's loop, bit for bit (tested).

        RLlib's own ``update`` runs instead for data iterators (Ray Data), a compiled
        update (``torch_compile_learner``) and when ``own_update_loop`` is ``False``.
        """
        if (
            not self.own_update_loop
            or data_iterators
            or (training_data is not None and training_data.data_iterators)
            or self._torch_compile_complete_update
        ):
            return super().update(
                batch=batch,
                batches=batches,
                batch_refs=batch_refs,
                episodes=episodes,
                episodes_refs=episodes_refs,
                data_iterators=data_iterators,
                training_data=training_data,
                timesteps=timesteps,
                num_total_minibatches=num_total_minibatches,
                num_epochs=num_epochs,
                minibatch_size=minibatch_size,
                shuffle_batch_per_epoch=shuffle_batch_per_epoch,
                _no_metrics_reduce=_no_metrics_reduce,
                **kwargs,
            )
        self._check_is_built()
        self.before_gradient_based_update(timesteps=timesteps or {})
        if training_data is None:
            training_data = TrainingData(
                batch=batch,
                batches=batches,
                batch_refs=batch_refs,
                episodes=episodes,
                episodes_refs=episodes_refs,
            )
        training_data.validate()  # type: ignore[no-untyped-call]  # RLlib is untyped
        training_data.solve_refs()  # type: ignore[no-untyped-call]  # RLlib is untyped
        if training_data.batches is not None:  # pragma: no cover - RLlib's own invariant
            raise ValueError("Learner.update: training_data.batches must be None")
        self._weights_seq_no += 1
        iterator = self._create_iterator_if_necessary(
            training_data=training_data,
            num_total_minibatches=num_total_minibatches,
            num_epochs=num_epochs,
            minibatch_size=minibatch_size,
            shuffle_batch_per_epoch=shuffle_batch_per_epoch,
            **kwargs,
        )
        if isinstance(iterator, IndexedCyclicIterator):
            loss_per_module = self._run_column_minibatches(iterator)
        else:
            loss_per_module = self._run_minibatches(iterator)
        # RLlib logs the total loss of the last minibatch only (window one).
        for module_id, loss in loss_per_module.items():
            self.metrics.log_value(key=(module_id, self.TOTAL_LOSS_KEY), value=loss, window=1)
        self.after_gradient_based_update(timesteps=timesteps or {})
        if _no_metrics_reduce:
            return None
        return self.metrics.reduce()

    def _check_module_ids(self, module_ids: Iterable[Any]) -> None:
        """RLlib's check: every module id of the batch is one of this Learner's modules."""
        unknown = set(module_ids) - set(self.module.keys())
        if unknown:
            raise ValueError(
                f"Batch contains one or more ModuleIDs ({unknown}) that are not in this Learner!"
            )

    def _run_minibatches(self, iterator: Iterable[MultiAgentBatch]) -> dict[Any, Any]:
        """RLlib's per-minibatch steps over RLlib's iterator (batches the index cycle skips)."""
        loss_per_module: dict[Any, Any] = {}
        for minibatch in iterator:
            self._check_module_ids(minibatch.policy_batches)
            with TimerAndPrometheusLogger(self._metrics_learner_inner_update):
                _, loss_per_module, _ = self._update(minibatch.policy_batches)
            self._log_metrics(batch=minibatch)
            self._log_steps_trained_metrics(minibatch)
            self._set_slicing_by_batch_id(minibatch, value=False)
        return loss_per_module

    def _run_column_minibatches(self, iterator: IndexedCyclicIterator) -> dict[Any, Any]:
        """The minibatch loop over the index cycle, the per-update bookkeeping done once.

        RLlib's per-minibatch Prometheus histogram of the step's time is kept (one
        observation per minibatch); its two counters and the steps-trained counters get
        the update's sums once (the same totals: every minibatch counts the whole batch's
        env steps, as RLlib's iterators report them, and its own rows).
        """
        batch = iterator._batch
        self._check_module_ids(batch.policy_batches)
        step = self._gradient_step_plan(batch)
        timer = self._metrics_learner_inner_update
        loss_per_module: dict[Any, Any] = {}
        made = 0
        rows = dict.fromkeys(batch.policy_batches, 0)
        for minibatch in iterator.column_minibatches():
            with TimerAndPrometheusLogger(timer):
                if step is None:
                    _, loss_per_module, _ = self._update(minibatch)
                else:
                    loss_per_module = self._gradient_step(minibatch, *step)
            made += 1
            for module_id, columns in minibatch.items():
                rows[module_id] += len(next(iter(columns.values())))
        env_steps = made * int(batch.env_steps())
        if env_steps > 0:
            self._metrics_all_modules_num_env_steps_trained.inc(value=env_steps)
            self._metrics_all_modules_num_module_steps_trained.inc(value=sum(rows.values()))
        for module_id, count in rows.items():
            counts = self._pending_module_steps.setdefault(module_id, [0, 0])
            counts[0] += made
            counts[1] += count
        self._pending_env_steps += env_steps
        return loss_per_module

    _GRADIENT_HOOKS: ClassVar[tuple[str, ...]] = (
        "_update",
        "_uncompiled_update",
        "compute_gradients",
        "postprocess_gradients",
        "postprocess_gradients_for_module",
        "apply_gradients",
        "filter_param_dict_for_optimizer",
    )

    def _gradient_step_plan(self, batch: MultiAgentBatch) -> tuple[Any, ...] | None:
        """What :meth:`_gradient_step` needs, or ``None`` where RLlib's ``_update`` must run.

        The lean step covers one module with one optimizer, no grad scaler, no torch LR
        scheduler, one Learner (no DDP), gradients clipped by global norm or not at all
        (without gradient logging), and a class that keeps this Learner's gradient hooks
        (a subclass overriding one of them gets RLlib's ``_update`` and its hooks).
        """
        cls = type(self)
        if any(
            getattr(cls, name) is not getattr(PulsePPOTorchLearner, name)
            for name in self._GRADIENT_HOOKS
        ):
            return None
        if (
            self._grad_scalers is not None
            or self._lr_scheduler_classes is not None
            or self.config.num_learners > 1
            or len(batch.policy_batches) != 1
            or len(self._module_optimizers) != 1
        ):
            return None
        (module_id,) = batch.policy_batches
        optimizers = self.get_optimizers_for_module(module_id)
        if len(optimizers) != 1:
            return None
        ((name, optimizer),) = optimizers
        config = self.config.get_config_for_module(module_id)
        clip: float | None
        if config.grad_clip and config.grad_clip_by == "global_norm":
            clip = float(config.grad_clip)  # postprocess_gradients_for_module's clip
        elif config.grad_clip is None and not config.log_gradients:
            clip = None  # RLlib passes the gradients through
        else:
            return None
        refs = list(self._optimizer_parameters[optimizer])
        params = [self._params[ref] for ref in refs]
        norm_key = (module_id, f"gradients_{name}_global_norm")
        return module_id, optimizer, refs, params, clip, norm_key

    def _gradient_step(
        self,
        minibatch: dict[Any, dict[str, Any]],
        module_id: Any,
        optimizer: torch.optim.Optimizer,
        refs: list[Any],
        params: list[torch.Tensor],
        clip: float | None,
        norm_key: tuple[Any, str],
    ) -> dict[Any, Any]:
        """One SGD step on ``minibatch``: RLlib's ``_uncompiled_update`` for one module.

        The same calls on the same tensors in the same order (off-policyness, the
        module's ``forward_train``, :meth:`compute_losses`, gradients zeroed and the
        loss backpropagated, the global-norm clip of :meth:`postprocess_gradients_for_module`,
        the optimizer step), without RLlib's per-step dicts of gradients keyed by
        parameter, filtered per optimizer and set back on the parameters they came
        from. A non-finite gradient goes to RLlib's ``apply_gradients`` (NaNs zeroed,
        warning), as in :meth:`apply_gradients`.
        """
        self._compute_off_policyness(minibatch)
        fwd_out = self.module.forward_train(minibatch)
        loss_per_module: dict[Any, Any] = self.compute_losses(fwd_out=fwd_out, batch=minibatch)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_per_module[module_id]
        if loss.grad_fn is None:  # every parameter frozen: RLlib steps with no gradients
            if clip is not None:  # and its clip logs the norm of none: 0
                self._pending_grad_norms[norm_key] = clip_by_global_norm([], clip)[0]
            PPOTorchLearner.apply_gradients(self, {})
            return loss_per_module
        loss.backward()
        grads = [(ref, p.grad) for ref, p in zip(refs, params, strict=True) if p.grad is not None]
        present = [grad for _, grad in grads]
        if clip is not None:
            norm, finite = clip_by_global_norm(present, clip)
            self._pending_grad_norms[norm_key] = norm
            ok = bool(finite)
        else:
            ok = all_finite(present)
        if ok:
            optimizer.step()
        else:
            PPOTorchLearner.apply_gradients(self, dict(grads))
        return loss_per_module

    def _action_dist(self, dist_cls: Any, logits: torch.Tensor) -> Any:
        """The loss's action distribution: :class:`DiagGaussianTerms` or RLlib's object.

        :class:`DiagGaussianTerms` for RLlib's ``TorchDiagGaussian`` unless
        ``gaussian_terms`` is ``False``; any other class's ``from_logits``.
        """
        if self.gaussian_terms and dist_cls is TorchDiagGaussian:
            return DiagGaussianTerms(logits)
        return dist_cls.from_logits(logits)

    def _create_iterator_if_necessary(self, **kwargs: Any) -> Any:
        """RLlib's minibatch iterator, replaced by :class:`IndexedCyclicIterator` if it fits."""
        iterator = super()._create_iterator_if_necessary(**kwargs)
        if type(iterator) is MiniBatchCyclicIterator and IndexedCyclicIterator.supports(
            iterator._batch
        ):
            batch = iterator._batch
            if self.drop_masked_rows:
                batch = without_masked_rows(batch)
            return IndexedCyclicIterator(
                batch,
                num_epochs=iterator._num_epochs,
                minibatch_size=iterator._minibatch_size,
                shuffle_batch_per_epoch=iterator._shuffle_batch_per_epoch,
                num_total_minibatches=iterator._num_total_minibatches,
            )
        return iterator

    def _compute_off_policyness(self, batch: Any) -> None:
        """RLlib's off-policyness metric, logged once per update (see the module docstring)."""
        if getattr(self, "_off_policyness_seq_no", None) == self._weights_seq_no:
            return
        self._off_policyness_seq_no = self._weights_seq_no
        super()._compute_off_policyness(batch)  # type: ignore[no-untyped-call]  # RLlib is untyped

    def apply_gradients(self, gradients_dict: dict[Any, torch.Tensor]) -> None:
        """Set the gradients and step the optimizers, as RLlib does, checking finiteness once.

        Falls back to RLlib's ``apply_gradients`` (per-parameter NaN handling and warnings)
        if a gradient is not finite, or if grad scalers or torch LR schedulers are in use.
        Gradients the global-norm clip found finite (all per-tensor norms finite) skip
        the check: a finite gradient times a finite clip factor stays finite.

        Args:
            gradients_dict: Parameter id → gradient (from ``compute_gradients``).
        """
        known_finite = self._grads_known_finite.issuperset(gradients_dict)
        self._grads_known_finite.clear()
        if (
            self._grad_scalers is not None
            or self._lr_scheduler_classes is not None
            or not (known_finite or all_finite(gradients_dict.values()))
        ):
            super().apply_gradients(gradients_dict)
            return
        params = self._params
        for pid, grad in gradients_dict.items():
            params[pid].grad = grad
        for module_id, optimizer_names in self._module_optimizers.items():
            for name in optimizer_names:
                self.get_optimizer(module_id, name).step()


class RLlibLoopPPOTorchLearner(PulsePPOTorchLearner):
    """:class:`PulsePPOTorchLearner` with RLlib's ``Learner.update`` loop and distributions.

    The Learner as it was before its own minibatch loop and :class:`DiagGaussianTerms`
    (``own_update_loop = False``, ``gaussian_terms = False``): the same weights and
    metrics at a higher cost per minibatch. The baseline of ``pulsebms-bench ray
    --ab-learner`` / ``--rllib-update-loop``.
    """

    own_update_loop: ClassVar[bool] = False
    gaussian_terms: ClassVar[bool] = False

"""Where one PPO training iteration's CPU goes, SB3 against RLlib on one remote EnvRunner.

``pulsebms-bench ray --account`` runs this instead of the throughput rounds: the same
samplers as :mod:`pulsebms.benchmarks.ray` (SB3 PPO in this process; RLlib PPO with one
remote EnvRunner, the Learner in this process), the same env and PPO work, and times named
pieces of every training iteration with ``time.thread_time`` spans, in this process and
inside the runner actor (installed there through ``foreach_env_runner``). Iterations of
the two run alternately, so the machine's load hits both alike.

Per process it also reads the whole process's CPU (``time.process_time``) and the CPU of
the thread that runs the work (the main thread here; the actor's task thread there): the
difference is the CPU of the process's other threads (Ray's core-worker threads, gRPC,
torch's inter-op pool). Every figure is CPU milliseconds per env step, the median over the
iterations. Items are exclusive: a parent's row is what is left of it after its children.

Example:
    $ pulsebms-bench ray --account --iterations 6
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Spans", "account", "account_table"]


_MISSING = object()


class Spans:
    """Exclusive CPU time of named, possibly nested spans (thread CPU of the calling thread).

    A span's time excludes the spans opened inside it, so the names add up to the time
    spent in all of them.

    Example:
        >>> spans = Spans()
        >>> double = spans.timed("double", lambda x: 2 * x)
        >>> outer = spans.timed("outer", lambda x: double(x) + 1)
        >>> outer(3), sorted(spans.cpu_s), spans.calls["double"]
        (7, ['double', 'outer'], 1)
    """

    def __init__(self) -> None:
        self.cpu_s: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._children_s: list[float] = []  # per open span: CPU of the spans inside it
        self._patched: list[tuple[Any, str, Any]] = []  # (owner, attribute, original)

    def timed(self, name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        """``call`` wrapped so that its exclusive thread CPU time adds to ``name``."""
        cpu_s, calls, stack = self.cpu_s, self.calls, self._children_s

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            stack.append(0.0)
            start = time.thread_time()
            try:
                return call(*args, **kwargs)
            finally:
                inclusive = time.thread_time() - start
                inside = stack.pop()
                cpu_s[name] += inclusive - inside
                calls[name] += 1
                if stack:
                    stack[-1] += inclusive

        return wrapped

    def patch(self, owner: Any, attr: str, name: str) -> None:
        """Replace ``owner.attr`` by its timed version (until :meth:`restore`)."""
        self._patched.append((owner, attr, owner.__dict__.get(attr, _MISSING)))
        setattr(owner, attr, self.timed(name, getattr(owner, attr)))

    def restore(self) -> None:
        """Undo :meth:`patch` (module functions and instance attributes alike)."""
        for owner, attr, original in reversed(self._patched):
            if original is _MISSING:
                delattr(owner, attr)
            else:
                setattr(owner, attr, original)
        self._patched.clear()

    def patch_call(self, obj: Any, name: str) -> None:
        """Time ``obj(...)`` (its class's ``__call__``) for this object only."""
        cls = type(obj)
        timed = self.timed(name, cls.__call__)
        obj.__class__ = type(cls.__name__, (cls,), {"__call__": timed})

    def snapshot(self) -> dict[str, float]:
        """The accumulated CPU seconds so far, by name."""
        return dict(self.cpu_s)


class GcClock:
    """Thread CPU of Python's garbage collections in this process (``gc.callbacks``).

    Collections run inside whatever span allocated when a threshold was crossed, so this is
    an "of which" figure across the spans, not an item of its own.
    """

    def __init__(self) -> None:
        import gc

        self.cpu_s = 0.0
        self.collections = 0
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: Mapping[str, Any]) -> None:
        if phase == "start":
            self._start = time.thread_time()
        else:
            self.cpu_s += time.thread_time() - self._start
            self.collections += 1


_GC: list[GcClock] = []


def _gc_cpu_s() -> float:
    if not _GC:
        _GC.append(GcClock())
    return _GC[0].cpu_s


_RUNNER_SPANS: list[Spans] = []
"""The spans installed in this process's EnvRunner (one; in the runner actor)."""


def _env_cpu_s() -> float:
    from pulsebms.benchmarks.ray import _ENV_CPU_S

    return _ENV_CPU_S[0]


def _clocks(spans: Spans) -> dict[str, float]:
    return {
        **spans.snapshot(),
        "_process": time.process_time(),
        "_thread": time.thread_time(),
        "_env": _env_cpu_s(),
        "_gc": _gc_cpu_s(),
        "_wall": time.perf_counter(),
    }


def _install_runner_spans(runner: Any) -> bool:
    """In the runner actor: time its sample, forward, pipelines, env vector and state calls."""
    spans = Spans()
    _RUNNER_SPANS.append(spans)
    spans.patch(runner, "sample", "sample")
    spans.patch(runner, "get_metrics", "get_metrics")
    spans.patch(runner, "set_state", "set_state")
    spans.patch(runner, "get_state", "get_state")
    spans.patch(runner.module, "forward_exploration", "module_forward")
    spans.patch_call(runner._env_to_module, "env_to_module")
    spans.patch_call(runner._module_to_env, "module_to_env")
    spans.patch(runner.env, "step", "env_vector_step")
    return threading.current_thread() is threading.main_thread()


def _runner_clocks(_: Any = None) -> dict[str, float]:
    return _clocks(_RUNNER_SPANS[0])


def _delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def _sb3_iteration(sb3: Any, spans: Spans) -> tuple[int, dict[str, float]]:
    before = _clocks(spans)
    sb3.model.learn(sb3.batch, reset_num_timesteps=False)
    return sb3.batch, _delta(_clocks(spans), before)


def _install_sb3_spans(sb3: Any, spans: Spans) -> None:
    model = sb3.model
    spans.patch(model, "collect_rollouts", "rollout")
    spans.patch(model.policy, "forward", "policy_forward")
    spans.patch(model.env, "step", "vec_env_step")
    spans.patch(model.rollout_buffer, "add", "buffer_add")
    spans.patch(model.rollout_buffer, "compute_returns_and_advantage", "gae")
    spans.patch(model.policy, "predict_values", "bootstrap_value")
    spans.patch(model, "train", "train")
    spans.patch(model.policy, "evaluate_actions", "train_forward")


def _install_rllib_driver_spans(algo: Any, spans: Spans) -> None:
    import ray.rllib.algorithms.ppo.ppo as ppo_module

    import pulsebms.agents.rllib_learner as learner_module

    # PPO's training_step calls the module-level name: time the calls through it.
    spans.patch(ppo_module, "synchronous_parallel_sample", "sample_wait_and_receive")

    learner = algo.learner_group._learner
    spans.patch(algo.learner_group, "update", "learner_update")
    spans.patch(learner, "update", "learner_update_inner")
    spans.patch(learner, "_create_iterator_if_necessary", "make_batch_and_iterator")
    spans.patch_call(learner._learner_connector, "learner_connector")
    spans.patch(learner_module, "_take_rows", "take_rows")  # the iterator's row gather
    spans.patch(learner, "_log_metrics", "ray_metrics_per_minibatch")
    spans.patch(learner, "_log_steps_trained_metrics", "steps_trained_per_minibatch")
    spans.patch(learner, "_set_slicing_by_batch_id", "slicing_flags")
    spans.patch(learner, "_update", "minibatch_update")
    spans.patch(learner, "_gradient_step", "minibatch_update")  # the own loop's step
    spans.patch(learner, "after_gradient_based_update", "after_update")
    spans.patch(learner.metrics, "reduce", "learner_metrics_reduce")
    spans.patch(algo.env_runner_group, "sync_weights", "sync_weights")
    spans.patch(algo.env_runner_group, "sync_env_runner_states", "sync_env_runner_states")
    spans.patch(algo, "_compile_iteration_results", "compile_results")
    spans.patch(algo.metrics, "compile", "metrics_compile")
    spans.patch(algo, "training_step", "training_step")
    spans.patch(algo, "train", "train")


def _rllib_iteration(rl: Any, spans: Spans) -> tuple[int, dict[str, float], dict[str, float]]:
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED

    runner_before = rl.group.foreach_env_runner(_runner_clocks, local_env_runner=False)[0]
    before = _clocks(spans)
    result = rl.algo.train()
    driver = _delta(_clocks(spans), before)
    runner_after = rl.group.foreach_env_runner(_runner_clocks, local_env_runner=False)[0]
    steps = int(result[ENV_RUNNER_RESULTS][NUM_ENV_STEPS_SAMPLED])
    return steps, driver, _delta(runner_after, runner_before)


def _per_step_ms(rows: list[tuple[int, dict[str, float]]]) -> list[dict[str, float]]:
    return [{k: 1e3 * v / n for k, v in d.items()} for n, d in rows]


def _medians(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = set().union(*rows)
    return {k: statistics.median(r.get(k, 0.0) for r in rows) for k in keys}


SPANS_SB3 = (
    "rollout", "policy_forward", "vec_env_step", "buffer_add", "gae", "bootstrap_value",
    "train", "train_forward",
)  # fmt: skip
SPANS_DRIVER = (
    "train", "training_step", "sample_wait_and_receive", "learner_update", "learner_update_inner",
    "make_batch_and_iterator", "learner_connector", "take_rows", "ray_metrics_per_minibatch",
    "steps_trained_per_minibatch", "slicing_flags", "minibatch_update", "after_update",
    "learner_metrics_reduce", "sync_weights", "sync_env_runner_states", "compile_results",
    "metrics_compile",
)  # fmt: skip
SPANS_RUNNER = (
    "sample", "get_metrics", "set_state", "get_state", "module_forward", "env_to_module",
    "module_to_env", "env_vector_step",
)  # fmt: skip


def account_table(
    sb3: Mapping[str, float], driver: Mapping[str, float], runner: Mapping[str, float]
) -> list[tuple[str, str, float, float]]:
    """Items (what, where, SB3 ms/step, RLlib ms/step) from exclusive span times.

    ``sb3``, ``driver`` and ``runner`` hold CPU ms per env step by span name (exclusive,
    :class:`Spans`), plus ``_process`` (the process), ``_thread`` (the working thread) and
    ``_env`` (the env's own steps, inside the vector env's step). SB3 runs in one process,
    RLlib in the driver and one runner. The items add up to the processes' CPU.
    """
    s, d, r = sb3, driver, runner

    def g(m: Mapping[str, float], *keys: str) -> float:
        return float(sum(m.get(k, 0.0) for k in keys))

    def rest(m: Mapping[str, float], names: tuple[str, ...]) -> float:
        return g(m, "_thread") - g(m, *names)

    rows: list[tuple[str, str, float, float]] = []

    def add(what: str, where: str, sb3_ms: float, rllib_ms: float) -> None:
        rows.append((what, where, sb3_ms, rllib_ms))

    add("env (shielded FleetEnv, same wrapper)", "sampler", g(s, "_env"), g(r, "_env"))
    add(
        "vector env around it (DummyVecEnv+VecNormalize | gymnasium vector, info split)",
        "sampler",
        g(s, "vec_env_step") - g(s, "_env"),
        g(r, "env_vector_step") - g(r, "_env"),
    )
    add(
        "policy forward (SB3: actor+critic, sample | RLlib: actor)",
        "sampler",
        g(s, "policy_forward"),
        g(r, "module_forward"),
    )
    add(
        "connectors (RLlib: obs filter+batch | Gaussian sample, unsquash, unbatch)",
        "sampler",
        0.0,
        g(r, "env_to_module", "module_to_env"),
    )
    add("rollout buffer add (SB3)", "sampler", g(s, "buffer_add"), 0.0)
    add(
        "rest of the sampling loop (SB3: obs→tensor, callbacks | RLlib: episodes, metrics)",
        "sampler",
        g(s, "rollout"),
        g(r, "sample"),
    )
    add("runner: get_metrics", "runner", 0.0, g(r, "get_metrics"))
    add("runner: set_state (weights, filter state, counters)", "runner", 0.0, g(r, "set_state"))
    add("runner: get_state (filter state)", "runner", 0.0, g(r, "get_state"))
    add(
        "runner: task thread outside calls (Ray: (de)serialise episodes, args; dispatch)",
        "runner",
        0.0,
        rest(r, SPANS_RUNNER),
    )
    add(
        "runner: other threads (Ray core worker)", "runner", 0.0, g(r, "_process") - g(r, "_thread")
    )
    add(
        "GAE (SB3: bootstrap value + recursion | RLlib: learner connector, value forward)",
        "learner",
        g(s, "gae", "bootstrap_value"),
        g(d, "learner_connector"),
    )
    add(
        "minibatch steps (forward, loss, backward, clip, Adam; SB3: its whole train())",
        "learner",
        g(s, "train", "train_forward"),
        g(d, "minibatch_update"),
    )
    add(
        "train batch: episodes→batch, masked rows out, iterator",
        "learner",
        0.0,
        g(d, "make_batch_and_iterator"),
    )
    add("minibatch row gathers (index_select)", "learner", 0.0, g(d, "take_rows"))
    add(
        "per-minibatch step counters, Ray metrics, slicing flags",
        "learner",
        0.0,
        g(d, "ray_metrics_per_minibatch", "steps_trained_per_minibatch", "slicing_flags"),
    )
    add(
        "rest of Learner.update's loop (minibatch objects, Prometheus timer, checks)",
        "learner",
        0.0,
        g(d, "learner_update_inner"),
    )
    add(
        "after_gradient_based_update (metrics once, KL coeff, LR)",
        "learner",
        0.0,
        g(d, "after_update"),
    )
    add("learner metrics reduce", "learner", 0.0, g(d, "learner_metrics_reduce"))
    add("LearnerGroup.update around Learner.update", "learner", 0.0, g(d, "learner_update"))
    add(
        "driver: waiting for / receiving episodes (ray.get, unpickle)",
        "driver",
        0.0,
        g(d, "sample_wait_and_receive"),
    )
    add("driver: weight sync to the runner", "driver", 0.0, g(d, "sync_weights"))
    add("driver: connector (filter) state sync", "driver", 0.0, g(d, "sync_env_runner_states"))
    add(
        "driver: result metrics (MetricsLogger.compile, results dict)",
        "driver",
        0.0,
        g(d, "metrics_compile", "compile_results"),
    )
    add(
        "main thread, rest (SB3: learn() setup, logger | RLlib: train(), training_step rest)",
        "driver",
        rest(s, SPANS_SB3),
        rest(d, SPANS_DRIVER) + g(d, "train", "training_step"),
    )
    add(
        "process's other threads (Ray core worker, torch)",
        "driver",
        g(s, "_process") - g(s, "_thread"),
        g(d, "_process") - g(d, "_thread"),
    )
    return rows


def account(
    *,
    iterations: int,
    work: Mapping[str, Any],
    loss: Mapping[str, Any],
    compile_learner: bool = False,
    learner_class: type[Any] | None = None,
    observation_filter: str = "vector_step",
    runner_inference: str = "numpy",
    fused_adam: bool | None = None,
) -> dict[str, Any]:
    """Build SB3 and RLlib (1 remote runner), alternate ``iterations`` training iterations.

    Call inside a :func:`~pulsebms.agents.rllib.ray_session`. ``work``: the bench's
    settings (``n_envs``, ``batch``, ``minibatch``, ``epochs``, ``seed``);
    ``observation_filter``, ``runner_inference``: the RLlib agent config's; ``fused_adam``:
    the PPO Learner's Adam kernel (``ray.fused_adam``; ``None``: the Learner's default).
    Returns the per-process span medians (ms per env step) and the exclusive items of
    :func:`account_table`.
    """
    from pulsebms.benchmarks.ray import _SB3, _RLlib

    sb3 = _SB3(**work)
    rl = _RLlib(
        runners=1,
        loss=loss,
        compile_learner=compile_learner,
        learner_class=learner_class,
        observation_filter=observation_filter,
        runner_inference=runner_inference,
        fused_adam=fused_adam,
        **work,
    )
    sb3_spans, driver_spans = Spans(), Spans()
    try:
        on_main = rl.group.foreach_env_runner(_install_runner_spans, local_env_runner=False)
        _install_sb3_spans(sb3, sb3_spans)
        _install_rllib_driver_spans(rl.algo, driver_spans)
        _sb3_iteration(sb3, sb3_spans)  # warm-up, both
        _rllib_iteration(rl, driver_spans)
        sb3_rows: list[tuple[int, dict[str, float]]] = []
        driver_rows: list[tuple[int, dict[str, float]]] = []
        runner_rows: list[tuple[int, dict[str, float]]] = []
        for i in range(iterations):
            for which in ("sb3", "rllib") if i % 2 == 0 else ("rllib", "sb3"):
                if which == "sb3":
                    sb3_rows.append(_sb3_iteration(sb3, sb3_spans))
                else:
                    steps, driver, runner = _rllib_iteration(rl, driver_spans)
                    driver_rows.append((steps, driver))
                    runner_rows.append((steps, runner))
    finally:
        driver_spans.restore()  # the module-level functions patched in this process
        sb3.close()
        rl.close()
    ss, ds, rs = _per_step_ms(sb3_rows), _per_step_ms(driver_rows), _per_step_ms(runner_rows)
    tables = [account_table(s, d, r) for s, d, r in zip(ss, ds, rs, strict=True)]
    items = [
        (
            what,
            where,
            statistics.median(t[i][2] for t in tables),
            statistics.median(t[i][3] for t in tables),
        )
        for i, (what, where, _, _) in enumerate(tables[0])
    ]
    return {
        "runner_task_on_main_thread": bool(on_main[0]),
        "sb3": _medians(ss),
        "driver": _medians(ds),
        "runner": _medians(rs),
        "items": items,
        "sb3_total_ms_per_step": statistics.median(s["_process"] for s in ss),
        "rllib_total_ms_per_step": statistics.median(
            d["_process"] + r["_process"] for d, r in zip(ds, rs, strict=True)
        ),
        "sb3_wall_ms_per_step": statistics.median(s["_wall"] for s in ss),
        "rllib_wall_ms_per_step": statistics.median(d["_wall"] for d in ds),
        "sb3_gc_ms_per_step": statistics.median(s["_gc"] for s in ss),
        "rllib_gc_ms_per_step": statistics.median(
            d["_gc"] + r["_gc"] for d, r in zip(ds, rs, strict=True)
        ),
    }


def print_account(out: Mapping[str, Any], write: Callable[[str], None] = print) -> None:
    """Print the items table of :func:`account` (CPU ms per env step)."""
    write(f"{'item':<86} {'where':<8} {'SB3':>7} {'RLlib':>7} {'diff':>7}")
    total_s = total_r = 0.0
    for what, where, s, r in out["items"]:
        total_s += s
        total_r += r
        write(f"{what:<86} {where:<8} {s:7.4f} {r:7.4f} {r - s:+7.4f}")
    write(f"{'sum of items':<86} {'':<8} {total_s:7.4f} {total_r:7.4f} {total_r - total_s:+7.4f}")
    write(
        f"{'processes CPU (SB3 process; RLlib driver + runner)':<86} {'':<8} "
        f"{out['sb3_total_ms_per_step']:7.4f} {out['rllib_total_ms_per_step']:7.4f}"
    )
    write(
        f"{'of which Python garbage collection (inside the items above)':<86} {'':<8} "
        f"{out['sb3_gc_ms_per_step']:7.4f} {out['rllib_gc_ms_per_step']:7.4f}"
    )
    write(
        f"{'wall per env step (SB3 learn(); RLlib train())':<86} {'':<8} "
        f"{out['sb3_wall_ms_per_step']:7.4f} {out['rllib_wall_ms_per_step']:7.4f}"
    )

"""Tiny checkpoints for tests and smoke runs (seconds to train, not meant to be good).

Example:
    >>> import tempfile
    >>> one_pack = {"fleet": [{"chemistry": "LFP"}]}
    >>> with tempfile.TemporaryDirectory() as out:
    ...     ckpt = tiny_sb3_checkpoint(out, env_kwargs=one_pack, total_timesteps=64)
    ...     print(ckpt.name, sorted(p.name for p in ckpt.parent.iterdir()))
    model.zip ['model.zip', 'model_vecnormalize.pkl']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import pulsebms.envs  # noqa: F401 - registers the PulseBMS ids
from pulsebms.export.sb3 import ALGORITHMS

__all__ = ["tiny_sb3_checkpoint"]


def tiny_sb3_checkpoint(
    out_dir: str | Path,
    *,
    algorithm: str = "PPO",
    env_id: str = "PulseBMS/FleetSmall-v0",
    env_kwargs: dict[str, Any] | None = None,
    total_timesteps: int = 256,
    seed: int = 0,
) -> Path:
    """Train an SB3 model for a few steps behind ``VecNormalize`` and save it.

    Writes ``model.zip`` and ``model_vecnormalize.pkl`` (the layout of
    :func:`pulsebms.agents.sb3.save_agent`).

    Args:
        out_dir: Directory to write to (created).
        algorithm: ``PPO`` or ``SAC`` (any key of :data:`pulsebms.export.sb3.ALGORITHMS`).
        env_id: Gymnasium id.
        env_kwargs: Keyword arguments of ``gymnasium.make``.
        total_timesteps: Training steps.
        seed: Seed of the model and the env.

    Returns:
        The path of ``model.zip``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = dict(env_kwargs or {})
    venv = VecNormalize(DummyVecEnv([lambda: gym.make(env_id, **kwargs)]))
    venv.seed(seed)
    algo = algorithm.upper()
    extra: dict[str, Any] = (
        {"n_steps": 64, "batch_size": 32, "n_epochs": 1}
        if algo == "PPO"
        else {"learning_starts": 32, "batch_size": 32, "buffer_size": 1000}
    )
    model = ALGORITHMS[algo](
        "MlpPolicy",
        venv,
        seed=seed,
        device="cpu",
        policy_kwargs={"net_arch": [32, 32]},
        **extra,
    )
    model.learn(total_timesteps)
    path = out / "model.zip"
    model.save(str(path))
    venv.save(str(out / "model_vecnormalize.pkl"))
    venv.close()
    return path

"""Where this process stands in a training cluster, read from TF_CONFIG (no TensorFlow import)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from tasks.core.errors import PawflowError

FIX = (
    'Set TF_CONFIG to {"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", '
    '"index": N}} with this machine\'s N, or unset it to train on this machine alone.'
)


@dataclass(frozen=True)
class Role:
    index: int
    workers: int

    @property
    def chief(self) -> bool:
        """Worker 0 writes the outputs (TensorFlow's convention when TF_CONFIG names no chief task)."""
        return self.index == 0


def role(tf_config: str | None) -> Role:
    """Worker `index` of `workers`; a lone process (no or empty TF_CONFIG) is worker 0 of 1."""
    if not tf_config or not tf_config.strip():
        return Role(0, 1)
    try:
        spec = json.loads(tf_config)
        cluster, task = spec.get("cluster", {}), spec.get("task", {})
        other = sorted(set(cluster) - {"worker"})
        if other or task.get("type", "worker") != "worker":
            raise PawflowError(
                f"TF_CONFIG names {other or [task.get('type')]} tasks: pawflow trains with workers only "
                "(MultiWorkerMirroredStrategy, worker 0 writes the outputs).",
                FIX,
            )
        workers, index = len(cluster.get("worker", [])), int(task.get("index", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
        raise PawflowError(f"TF_CONFIG is not a valid cluster description ({err}).", FIX) from None
    if workers > 1 and not 0 <= index < workers:
        raise PawflowError(f"TF_CONFIG task index {index} is not one of the {workers} workers.", FIX)
    return Role(index, max(1, workers))

"""How TensorFlow runs on the CPU: settings that decide which kernels compute the model, applied once
per process before TensorFlow is imported, so the same shards and params give the same model bytes on
every x86-64 host of the same core count, whatever its load or instruction set.

Measured on 2-core AMD EPYC hosts (docs/design.md, "Reproducibility"):
- oneDNN's AVX-512 kernels corrupt the heap while training small models on hosts with AVX512_BF16
  (`double free or corruption`, 5 crashes in 5 runs at width 8 / 32 px); capped at AVX2, 0 crashes.
- oneDNN picks its kernels at run time from the CPU's instruction set, so uncapped, two hosts of the
  same kind train different models (test accuracy 0.830 vs 0.843). AVX2 is on every x86-64 host this
  runs on, and the cap costs no speed here.
- TensorFlow sizes its thread pools from the core count: a fixed count keeps the reduction order, and
  so the numbers, the same on a bigger machine.

This module does not import TensorFlow: it must run before the first import.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tasks.core.errors import PawflowError

if TYPE_CHECKING:
    from tasks.core.params import TensorFlow
    from tasks.reports.reports import TensorFlowSettings


def tensorflow_env(cfg: TensorFlow) -> dict[str, str]:
    """The environment variables TensorFlow and oneDNN read when they start."""
    return {
        "TF_ENABLE_ONEDNN_OPTS": "1" if cfg.onednn else "0",
        "ONEDNN_MAX_CPU_ISA": cfg.onednn_max_isa,
        "TF_NUM_INTRAOP_THREADS": str(cfg.threads),
        "TF_NUM_INTEROP_THREADS": str(cfg.threads),
    }


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence what TensorFlow's C++ side writes to fd 2 while it is imported: absl's "All log messages
    before absl::InitializeLog()" and the oneDNN notice come before TF_CPP_MIN_LOG_LEVEL is read, so
    only redirecting the file descriptor hides them. If the import fails, what it wrote is shown."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def configure(cfg: TensorFlow) -> None:
    """Apply params.yaml `tensorflow:` to this process: before TensorFlow is imported, or refuse.

    Called by every entry point that runs a model: train and evaluate with params.yaml's, predict with
    the copy the model's model.json keeps (tasks.predict.ModelCard.tensorflow). A process that imported
    TensorFlow with other settings cannot change them any more, and would silently compute another
    model, so that is an error rather than a warning.
    """
    wanted = tensorflow_env(cfg)
    if "tensorflow" not in sys.modules:
        os.environ.update(wanted)
        # C++ info and warning lines off (errors still shown), and the start-up lines that come before
        # TensorFlow reads that setting (absl, the oneDNN notice, the CPU feature guard) silenced.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with quiet_native_stderr():
            import tensorflow  # noqa: F401
    else:
        differing = {k: v for k, v in wanted.items() if os.environ.get(k) != v}
        if differing:
            raise PawflowError(
                "TensorFlow was imported in this process before params.yaml `tensorflow:` could be applied "
                f"(it needs {', '.join(f'{k}={v}' for k, v in differing.items())}).",
                "Run the stage in its own process (`python -m flows.<stage>`), or set those variables "
                "before Python starts.",
            )
    if cfg.deterministic_ops:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def describe(cfg: TensorFlow) -> TensorFlowSettings:
    """What train.json records of the settings (all of them come from params.yaml)."""
    return {
        "onednn": cfg.onednn,
        "onednn_max_isa": cfg.onednn_max_isa if cfg.onednn else None,
        "threads": cfg.threads,
        "deterministic_ops": cfg.deterministic_ops,
    }

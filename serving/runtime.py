"""onnxruntime sessions with explicit providers and thread counts, honest about the device.

CUDA (and TensorRT when asked for) is tried first when this onnxruntime build offers it;
``session.get_providers()[0]`` then says what is really in use: onnxruntime-gpu on a host
without a usable GPU silently falls back to the CPU, which ``require_gpu`` turns into an
error. Thread counts come from the CPUs this process may actually use (affinity and the
cgroup CPU quota), not from the host's core count.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brewcast.contract import per_column_inputs, takes_per_column_inputs

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
#: Rows from which a CUDA session binds inputs/outputs explicitly (one copy each way), when
#: every input is numeric: onnxruntime binds no string tensors.
IO_BINDING_MIN_ROWS = 1024


class GpuUnavailableError(RuntimeError):
    """A GPU was required (BREWCAST_REQUIRE_GPU=1) but the session runs on the CPU."""


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2/v1 CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = None
    v2 = cgroup_root / "cpu.max"
    v1_quota, v1_period = (
        cgroup_root / "cpu" / "cpu.cfs_quota_us",
        cgroup_root / "cpu" / ("cpu.cfs_period_us"),
    )
    try:
        if v2.exists():
            limit, period = v2.read_text().split()[:2]
            if limit != "max":
                quota = int(limit) / int(period)
        elif v1_quota.exists() and v1_period.exists():
            limit = int(v1_quota.read_text())
            if limit > 0:
                quota = limit / int(v1_period.read_text())
    except (OSError, ValueError):
        quota = None
    if quota is not None:
        count = min(count, max(1, math.floor(quota)))
    return max(1, count)


def choose_providers(
    available: list[str], prefer_gpu: bool = True, use_tensorrt: bool = False
) -> list[str]:
    """Providers to ask for, best first, among those this onnxruntime build offers."""
    wanted = []
    if prefer_gpu:
        if use_tensorrt:
            wanted.append(TENSORRT)
        wanted.append(CUDA)
    wanted.append(CPU)
    return [p for p in wanted if p in available or p == CPU]


@dataclass
class Session:
    """An inference session and the facts about it that /metadata reports."""

    session: object  # onnxruntime.InferenceSession
    provider: str
    requested: list[str]
    intra_op_threads: int
    spinning: bool
    #: The graph takes one ``[N, 1]`` input per schema column: a model exported before the
    #: two-tensor contract (:func:`brewcast.contract.per_column_inputs`), still servable.
    per_column: bool = False

    @property
    def on_gpu(self) -> bool:
        return self.provider in (CUDA, TENSORRT)

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """``outputs`` for :func:`brewcast.contract.raw_inputs`-shaped ``inputs``."""
        if self.per_column:
            inputs = per_column_inputs(inputs)
        rows = len(next(iter(inputs.values()))) if inputs else 0
        if (
            self.on_gpu
            and rows >= IO_BINDING_MIN_ROWS
            and all(value.dtype != object for value in inputs.values())
        ):
            return self._run_bound(inputs, outputs)
        return self.session.run(outputs, inputs)

    def _run_bound(self, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """Large numeric batches on the GPU: bind inputs and outputs once instead of per-call
        copies. brewcast's own graphs take string columns, which cannot be bound (binding
        them raised, which a CPU stand-in for the GPU session found), so they run unbound;
        a numeric-only graph is bound. Not run on a GPU yet: none was lent.
        """
        binding = self.session.io_binding()
        for name, value in inputs.items():
            binding.bind_cpu_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def create_session(
    model_bytes: bytes,
    require_gpu: bool = False,
    prefer_gpu: bool = True,
    threads: int | None = None,
    spinning: bool = False,
    use_tensorrt: bool = False,
) -> Session:
    import onnxruntime as ort

    requested = choose_providers(ort.get_available_providers(), prefer_gpu, use_tensorrt)
    options = ort.SessionOptions()
    threads = threads or usable_cpus()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    # A CPU-only host cannot load the CUDA provider; say so once, below, not in red on stderr.
    options.log_severity_level = 3 if requested[0] != CPU else 2
    session = ort.InferenceSession(model_bytes, options, providers=requested)
    in_use = session.get_providers()[0]
    if require_gpu and in_use not in (CUDA, TENSORRT):
        raise GpuUnavailableError(
            f"a GPU was required but onnxruntime runs on {in_use} (asked for {requested}; "
            f"CUDA needs a GPU, CUDA 13 and cuDNN 9)"
        )
    if requested[0] != CPU and in_use == CPU:
        log.warning("onnxruntime: %s unavailable, running on the CPU", requested[0])
    log.info(
        "onnxruntime session on %s (%d intra-op threads, spinning %s)",
        in_use,
        threads,
        "on" if spinning else "off",
    )
    per_column = takes_per_column_inputs(i.name for i in session.get_inputs())
    if per_column:
        log.warning("the model takes one input per column (exported before 2026-11-30)")
    return Session(session, in_use, requested, threads, spinning, per_column)

"""What the collector records about the environment a profile was taken in.

The record is embedded in every trace (top-level key `npu_advise`, read back by the Kineto loader into
`Trace.metadata`) and saved in `collection.json`, so the env analyzer can judge the settings that were
really in effect. Runs inside the profiled process; imports only the standard library and torch.
"""
from __future__ import annotations

import os
import platform
import socket
import sys

# Environment variables that change Ascend / PyTorch training performance (see REFERENCE.md).
ENV_VARS = (
    "TASK_QUEUE_ENABLE", "CPU_AFFINITY_CONF", "PYTORCH_NPU_ALLOC_CONF", "COMBINED_ENABLE",
    "ASCEND_LAUNCH_BLOCKING", "ACLNN_CACHE_LIMIT", "TORCH_NPU_FALLBACK_CPU_DISABLE", "LD_PRELOAD",
    "OMP_NUM_THREADS",
)
ENV_PREFIXES = ("HCCL_",)


def relevant_env(environ=None) -> dict:
    """The performance-relevant variables: each watched one (None when unset) and any HCCL_* that is set."""
    environ = os.environ if environ is None else environ
    # Every watched variable is listed, None when unset: "recorded as unset" must stay distinguishable
    # from "not recorded" (the environment analyzer judges the former, and only reports the latter).
    env = {k: environ.get(k) for k in ENV_VARS}
    env.update({k: v for k, v in environ.items() if k.startswith(ENV_PREFIXES)})
    return dict(sorted(env.items()))


def rank_and_world_size() -> tuple:
    """From the torchrun environment; a single process is rank 0 of 1."""
    def _int(name, default):
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            return default
    return _int("RANK", 0), _int("WORLD_SIZE", 1)


def versions() -> dict:
    import torch

    out = {"torch": torch.__version__, "cuda": getattr(torch.version, "cuda", None),
           "hip": getattr(torch.version, "hip", None), "torch_npu": None, "cann": None}
    npu = sys.modules.get("torch_npu")
    if npu is not None:
        out["torch_npu"] = getattr(npu, "__version__", None)
        cann = getattr(getattr(npu, "version", None), "cann", None)
        out["cann"] = cann if isinstance(cann, str) else None
    return out


def environment_record(device: str, profiler: str) -> dict:
    rank, world_size = rank_and_world_size()
    return {
        "collector": "npu-advise",
        "rank": rank,
        "world_size": world_size,
        "local_rank": int(os.environ.get("LOCAL_RANK", "0") or 0),
        "device": device,
        "profiler": profiler,
        "versions": versions(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "env": relevant_env(),
    }

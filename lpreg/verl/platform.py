"""A CPU platform for verl: lets verl's FSDP engine run in one CPU process (gloo), for the tests.

verl picks its device through platform plugins (``verl.plugin.platform``: nvidia, npu, rocm) and has none for the
CPU. :func:`register` adds one under the name ``cpu``: device name ``"cpu"``, gloo for collectives, no-op
synchronize and cache calls, Ray resource ``"CPU"``. verl reads ``VERL_PLATFORM`` once, on the first call of
``verl.plugin.platform.get_platform()``, so call :func:`register` before anything else asks verl for its device
(``tests/test_verl.py`` does, at import).

Not for training: verl's full trainer refuses a job without GPUs and needs a GPU rollout server (vLLM, SGLang or
TensorRT-LLM); this plugin only makes verl's actor engine testable on a CPU.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

PLATFORM = "cpu"


class _CPUDeviceModule:
    """``torch.cpu`` plus the memory queries verl logs (``max_memory_allocated`` and friends), which read 0 here."""

    def __getattr__(self, name):
        return getattr(torch.cpu, name)

    def _zero(self, *args, **kwargs) -> int:
        return 0

    max_memory_allocated = max_memory_reserved = memory_allocated = memory_reserved = _zero

    def reset_peak_memory_stats(self, *args, **kwargs) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def mem_get_info(self, *args, **kwargs) -> tuple[int, int]:
        return (0, 0)

    def get_device_name(self, *args, **kwargs) -> str:
        return "CPU"


def _platform_class():
    from verl.plugin.platform import PlatformBase

    class PlatformCPU(PlatformBase):
        device_name = "cpu"
        vendor_name = "cpu"
        device_module = _CPUDeviceModule()

        def is_available(self) -> bool:
            return True

        def is_platform_available(self, use_smi_check=False) -> bool:
            return False  # never auto-detected: only VERL_PLATFORM=cpu selects it

        def current_device(self):
            return "cpu"  # verl moves tensors and modules with .to(get_device_id())

        def device_count(self) -> int:
            return 1

        def set_device(self, device_index: int) -> None:
            pass

        def synchronize(self, device_index=None) -> None:
            pass

        def manual_seed(self, seed: int) -> None:
            torch.manual_seed(seed)

        def manual_seed_all(self, seed: int) -> None:
            torch.manual_seed(seed)

        def set_allocator_settings(self, settings: str) -> None:
            pass

        def empty_cache(self) -> None:
            pass

        def get_device_capability(self, device_index: int = 0):
            return (None, None)

        def communication_backend_name(self) -> str:
            return "gloo"

        def visible_devices_envvar(self) -> str:
            return "CUDA_VISIBLE_DEVICES"

        @contextmanager
        def nvtx_range(self, msg: str):
            yield

        def profiler_start(self) -> None:
            pass

        def profiler_stop(self) -> None:
            pass

        def ray_resource_name(self) -> str:
            return "CPU"

        def ray_noset_envvars(self) -> list[str]:
            return []

        def is_ipc_supported(self) -> bool:
            return False

        def cudart(self):
            return None

    return PlatformCPU


def register() -> None:
    """Register the CPU platform with verl and select it (``VERL_PLATFORM=cpu``, ``VERL_ENGINE_DEVICE=cuda`` so
    that verl's engine registry, which lists only cuda and npu, hands out its FSDP engine)."""
    from verl.plugin.platform import PlatformRegistry

    if PlatformRegistry.get(PLATFORM) is None:
        PlatformRegistry.register(platform=PLATFORM)(_platform_class())
    os.environ["VERL_PLATFORM"] = PLATFORM
    os.environ.setdefault("VERL_ENGINE_DEVICE", "cuda")

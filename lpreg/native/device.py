"""Where the native trainer computes: the device (``trainer.device``) and the compute dtype (``model.dtype``).

Weights and AdamW state always stay fp32 master copies; ``model.dtype`` only sets the autocast dtype of the forward
and backward passes.
"""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")  # auto = cuda when a GPU is visible, else cpu
DTYPES = ("float32", "bfloat16", "float16")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def compute_dtype(model_cfg) -> torch.dtype | None:
    """The autocast dtype of forward and backward (``model.dtype``); None = plain fp32."""
    name = getattr(model_cfg, "dtype", "float32")
    return None if name == "float32" else getattr(torch, name)

"""Per-token targets computed from the full-vocabulary logits inside verl's actor, where those logits exist.

verl's FSDP engine (``FSDPEngineWithLMHead.prepare_model_outputs``) calls the actor's loss object as
``loss(student_logits=[1, nnz, V], data=micro_batch)`` when the micro-batch's flag ``distillation_use_topk`` is set,
and stores each returned ``[1, nnz]`` tensor in the model outputs under its key (a hook verl has for top-k
distillation; lpreg sets the flag on its own batches, ``lpreg/verl/extension.py``). ``nnz`` are the micro-batch's
packed tokens (prompt and response of each sequence, in order), the logits already divided by the temperature, and
the labels are the input ids rolled by one, as verl rolls them.

- The log-prob pass of π_old (no gradient) computes what the native token pass computes besides log π_old(y):
  the entropy, the min-p tail mass and the low-probability mass for the ``policy/*`` metrics, and the targets the
  regularizer declares from π_old's logits (``Regularizer.old_targets``: Lp-Reg's log π_proxy(y)), with the very
  functions of the native pass (``lpreg.native.tokens.old_pass_fns``). They come back from verl as model outputs,
  verl stores them with the batch, and the update reads them from its micro-batches (``OLD`` keys).
- The update (with gradient) computes only what needs the current logits and is not a verl output already: the
  paper's full-vocabulary forward KL of Lp-Reg ``divergence: forward_kl`` (``NEW`` keys). verl's hook carries one
  scalar per token, not the sparse list of π_old's survivors the native pass keeps, so on verl the proxy of the
  forward KL is built from the current logits, detached: that is π_old's proxy exactly when the update is
  on-policy (one update per rollout, the weights of the log-prob pass), and ``lpreg/verl/config.py`` refuses the
  variant off-policy. The entropy of the entropy bonus and of the 80/20 rule is verl's own entropy output.

Only response-predicting rows are computed (the rest of the ``[1, nnz]`` output is 0), one chunk of
``token_chunk`` rows at a time, so the no-grad pass adds a few chunk-sized temporaries to the logits verl already
holds. With a gradient (the forward KL) each chunk is recomputed in backward, whose gather allocates one
logits-sized gradient buffer at a time. Values are computed in fp32 (logits in bf16 are cast per
chunk). Not supported: Ulysses sequence parallelism and static packing pads (the hook would see a slice of the
packed sequence); ``lpreg/verl/config.py`` refuses both before launch.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from lpreg.core.losses import REGULARIZERS
from lpreg.core.losses.lpreg import forward_kl, proxy_param
from lpreg.native.tokens import TokenFn, old_pass_fns

OLD = "lpreg_old_"  # prefix of π_old's per-token values in verl's model outputs and batches
NEW = "lpreg_new_"  # prefix of the current policy's per-token values in the update's model outputs


# Lp-Reg's sparse list of π_old's survivors (forward_kl): several values per token, which verl's hook cannot carry;
# the update's dense forward KL (new_fns) stands in for them.
SPARSE = ("proxy_idx", "proxy_q")


def old_fns(reg_cfg, tail_kappa: float, lowprob_threshold: float) -> dict[str, TokenFn]:
    """What the log-prob pass computes from π_old's logits: ``policy/*`` inputs and the regularizer's targets."""
    declared = REGULARIZERS.get(reg_cfg.name).old_targets(reg_cfg)
    return old_pass_fns(tail_kappa, lowprob_threshold, {k: fn for k, fn in declared.items() if k not in SPARSE})


def new_fns(reg_cfg) -> dict[str, TokenFn]:
    """What the update computes from the current logits (module docstring): Lp-Reg's forward KL, if configured."""
    if reg_cfg.name == "lpreg" and reg_cfg.divergence == "forward_kl":
        param, kind = proxy_param(reg_cfg), reg_cfg.proxy
        return {"forward_kl": lambda z, y, old: forward_kl(z, z.detach(), param, kind)}
    return {}


def response_rows(data) -> torch.Tensor:
    """Packed rows whose logits predict a response token, in the order of the responses' tokens: ``[N]``.

    The same rows verl's ``no_padding_2_padding`` takes (position ``end - len - 1 + t`` predicts response token t)."""
    seq_lens = data["input_ids"].offsets().diff()
    responses = data["responses"]
    if responses.is_nested:
        resp_lens = responses.offsets().diff()
    else:
        resp_lens = data["attention_mask"][:, data["prompts"].shape[1]:].sum(-1)
    ends = seq_lens.cumsum(0)
    return torch.cat([torch.arange(int(e - r - 1), int(e - 1), device=seq_lens.device)
                      for e, r in zip(ends.tolist(), resp_lens.tolist())])


def _values(fns: dict[str, TokenFn], flat: torch.Tensor, labels: torch.Tensor,
            rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    z = flat.index_select(0, rows)  # [n, V]: one chunk of logits
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    y = labels.index_select(0, rows)  # [n]
    return tuple(fn(z, y, {}) for fn in fns.values())


def per_token(fns: dict[str, TokenFn], logits: torch.Tensor, data, chunk: int,
              prefix: str) -> dict[str, torch.Tensor]:
    """``{prefix + name: [1, nnz]}`` for verl's hook: each ``fn`` at the response-predicting rows of ``logits``
    (``[1, nnz, V]`` at temperature), 0 elsewhere."""
    if not fns:
        return {}
    flat = logits[0]  # [nnz, V]
    input_ids = data["input_ids"].values()  # [nnz]
    if flat.shape[0] != input_ids.shape[0]:
        raise RuntimeError(f"verl's logits hold {flat.shape[0]} rows for {input_ids.shape[0]} packed tokens: Ulysses "
                           "sequence parallelism and static packing pads are not supported by lpreg's extension")
    labels = torch.roll(input_ids, shifts=-1)  # [nnz], as verl rolls them
    rows = response_rows(data).to(flat.device)  # [N]
    size = chunk or max(len(rows), 1)
    parts: list[tuple[torch.Tensor, ...]] = []
    for s in range(0, len(rows), size):
        r = rows[s: s + size]
        if torch.is_grad_enabled() and flat.requires_grad:  # the chunk's logits are recomputed in backward
            parts.append(checkpoint(_values, fns, flat, labels, r, use_reentrant=False))
        else:
            parts.append(_values(fns, flat, labels, r))
    out = {}
    for i, name in enumerate(fns):
        vals = torch.cat([p[i] for p in parts]) if parts else flat.new_zeros(0)  # [N]
        full = torch.zeros(flat.shape[0], dtype=vals.dtype, device=flat.device).index_copy(0, rows, vals)
        out[prefix + name] = full[None]  # [1, nnz]
    return out


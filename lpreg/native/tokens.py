"""The token pass: rollout sequences -> per-token scalars, one chunk of the output head at a time.

At a real vocabulary (Qwen: V = 151,936) one fp32 logit row is 0.58 MiB, so no code path here ever holds the logits
of more than one chunk of ``trainer.token_chunk`` tokens:

1. ``plan`` cuts a mini-batch into micro-batches of at most ``trainer.max_tokens_per_micro_batch`` padded tokens
   (contiguous rows, in rollout order, as the reference's per-GPU micro-batches are; 0 = one micro-batch), each
   padded only to its own longest prompt and response.
2. ``hidden`` runs the model's decoder (``model.get_decoder()``) and keeps the last hidden state at the positions
   that predict a response token: ``[N, H]`` for the micro-batch's N response tokens; padding never reaches the head.
3. ``per_token`` applies the output head to chunks of those rows and reduces each chunk at once to per-token values:
   log π(y) always, the entropy and the min-p tail mass in the no-grad pass of π_old, and whatever the regularizer
   declares (``Regularizer.old_targets`` from π_old's chunk, ``Regularizer.new_targets`` from the current chunk).
   With gradient, each chunk runs under activation checkpointing, so its logits are recomputed in backward and the
   gradient pass is bounded by the chunk as well.

Per-token values are flat ``[N, ...]`` tensors in the row-major order of the micro-batch's response mask;
``grid`` lays them out as ``[b, R, ...]`` for the losses. Logits are divided by the rollout temperature in fp32 (or
in the model's dtype if wider).
Supported models compute ``logits = lm_head(last hidden state)`` (Qwen, Llama, Mistral families); a model whose
config asks for logit soft-capping or scaling is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from lpreg.core.metrics import lowprob_mass, token_entropy
from lpreg.core.proxy import tail_mass

TokenFn = Callable[[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], torch.Tensor]
"""``fn(logits [n, V] fp32 at T, tokens [n], old targets of these rows) -> [n, ...]``: a declared per-token target."""


@dataclass
class MicroBatch:
    rows: slice  # rollout rows of this micro-batch (contiguous)
    input_ids: torch.Tensor  # [b, L] left-padded prompt + right-padded response
    attention_mask: torch.Tensor  # [b, L]
    position_ids: torch.Tensor  # [b, L]
    prompt_len: int  # P_mb: the prompt part's width
    response_mask: torch.Tensor  # [b, R] 1 on response tokens
    tokens: torch.Tensor  # [N] the sampled response tokens, row-major over response_mask

    @property
    def n_tokens(self) -> int:
        return self.tokens.numel()


def _layout(gen, rows: slice) -> MicroBatch:
    """One micro-batch of ``gen``'s ``rows``, trimmed to its own longest prompt and response."""
    pmask, rmask = gen.prompt_mask[rows], gen.response_mask[rows]
    P = int(pmask.sum(-1).max())
    R = max(1, int(rmask.sum(-1).max()))
    prompt, pmask = gen.prompt_ids[rows, gen.prompt_ids.shape[1] - P:], pmask[:, pmask.shape[1] - P:]  # [b, P]
    resp, rmask = gen.response_ids[rows, :R], rmask[:, :R]  # [b, R]
    ids = torch.cat([prompt, resp], 1)  # [b, P+R]
    attn = torch.cat([pmask, torch.ones_like(resp)], 1)  # [b, P+R]
    pos = (attn.cumsum(-1) - 1).clamp_min(0)  # left padding: positions start at the first real token
    return MicroBatch(rows, ids, attn, pos, P, rmask, resp[rmask > 0])


def seq_tokens(gen) -> torch.Tensor:
    """Padded length (prompt + response) of each rollout row, ``[B]``: what a micro-batch budget counts."""
    return gen.prompt_mask.sum(-1) + gen.response_mask.sum(-1)


def plan(gen, rows: slice, max_tokens: int) -> list[MicroBatch]:
    """Cut ``rows`` into contiguous micro-batches of at most ``max_tokens`` padded tokens each (0 = one).

    A micro-batch of b rows costs b × (its longest prompt + its longest response). A single row longer than the
    budget gets a micro-batch of its own (``validate`` refuses budgets below prompt + response length limits).
    """
    if not max_tokens:
        return [_layout(gen, rows)]
    p_len, r_len = gen.prompt_mask.sum(-1).tolist(), gen.response_mask.sum(-1).tolist()
    out, start, P, R = [], rows.start, 0, 0
    for i in range(rows.start, rows.stop):
        P2, R2 = max(P, p_len[i]), max(R, r_len[i])
        if i > start and (i - start + 1) * (P2 + R2) > max_tokens:
            out.append(_layout(gen, slice(start, i)))
            start, P2, R2 = i, p_len[i], r_len[i]
        P, R = P2, R2
    out.append(_layout(gen, slice(start, rows.stop)))
    return out


def grid(flat: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
    """Flat per-token values ``[N, ...]`` laid out as ``[b, R, ...]`` (zeros on padding; keeps the graph)."""
    mask = mb.response_mask > 0
    out = flat.new_zeros(*mask.shape, *flat.shape[1:])
    out[mask] = flat
    return out


def check_head(model) -> None:
    """Refuse models whose logits are not ``lm_head(hidden)``: the chunked head would compute wrong values."""
    cfg = getattr(model, "config", None)
    for key in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        if getattr(cfg, key, None) not in (None, 1, 1.0):
            raise ValueError(f"model config sets {key}={getattr(cfg, key)}: lpreg's chunked token pass assumes "
                             "logits = lm_head(hidden state) and does not apply it; this model is not supported")


def hidden(model, mb: MicroBatch) -> torch.Tensor:
    """Last hidden states at the positions that predict the response tokens: ``[N, H]``."""
    out = model.get_decoder()(input_ids=mb.input_ids, attention_mask=mb.attention_mask,
                              position_ids=mb.position_ids).last_hidden_state  # [b, L, H]
    R = mb.response_mask.shape[1]
    h = out[:, mb.prompt_len - 1: mb.prompt_len - 1 + R]  # [b, R, H]: position P-1+t predicts response token t
    return h[mb.response_mask > 0]  # [N, H]


def _chunk_values(head, temperature: float, fns: dict[str, TokenFn], h: torch.Tensor, tokens: torch.Tensor,
                  old: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    logits = head(h)  # [n, V]: the only logits that exist at this moment
    logits = (logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits) / temperature
    values = {"log_prob": torch.log_softmax(logits, -1).gather(-1, tokens[:, None])[:, 0]}  # [n]
    values.update({name: fn(logits, tokens, old) for name, fn in fns.items()})
    return tuple(values.values())


def per_token(model, mb: MicroBatch, temperature: float, chunk: int, fns: dict[str, TokenFn],
              old: dict[str, torch.Tensor] | None = None, grad: bool = False,
              autocast: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """``{"log_prob": [N], **{name: fn(...)}}`` for the micro-batch's response tokens, the head applied to
    ``chunk`` tokens at a time (0 = all at once). ``old`` holds flat per-token targets passed to each ``fn`` for
    its chunk's rows. With ``grad``, each chunk is recomputed in backward (activation checkpointing)."""
    old = old or {}
    head = model.get_output_embeddings()
    amp = torch.autocast(mb.input_ids.device.type, dtype=autocast) if autocast else nullcontext()
    with amp:
        h = hidden(model, mb)  # [N, H]
        N = h.shape[0]
        size = chunk or max(N, 1)
        parts = []
        for s in range(0, N, size):
            sl = slice(s, min(s + size, N))
            args = (head, temperature, fns, h[sl], mb.tokens[sl], {k: v[sl] for k, v in old.items()})
            if grad:
                parts.append(checkpoint(_chunk_values, *args, use_reentrant=False))
            else:
                parts.append(_chunk_values(*args))
    names = ["log_prob", *fns]
    if not parts:
        return {name: h.new_zeros(0) for name in names}
    return {name: _cat_padded([p[i] for p in parts]) for i, name in enumerate(names)}


def _cat_padded(parts: list[torch.Tensor]) -> torch.Tensor:
    """Chunks of one per-token value concatenated; a ``[n, K]`` value whose K differs between chunks (a sparse list,
    e.g. Lp-Reg's min-p survivors) is padded with zeros to the widest chunk (index 0 with probability 0)."""
    if parts[0].dim() == 2:
        width = max(p.shape[1] for p in parts)
        parts = [torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts]
    return torch.cat(parts)


def old_pass_fns(tail_kappa: float, lowprob_threshold: float, declared: dict[str, TokenFn]) -> dict[str, TokenFn]:
    """What the no-grad pass of π_old computes besides log π_old(y): the policy metrics' entropy, tail mass and
    low-probability mass, and the declared old targets (the regularizer's, the task's decision point)."""
    return {"entropy": lambda z, y, old: token_entropy(z), "tail_mass": lambda z, y, old: tail_mass(z, tail_kappa),
            "lowprob_mass": lambda z, y, old: lowprob_mass(z, lowprob_threshold), **declared}

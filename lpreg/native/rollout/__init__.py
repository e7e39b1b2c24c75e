"""Rollout engines: sample responses for token-id prompts. Registry mirrors ``rollout=``.

The rules every engine follows (the HF engine is their CPU-testable reference; vLLM adds its own specifics):
- **Prompts are token ids**, made once by our tokenizer (``encode_prompts``: no special tokens added, left-truncated
  to ``task.max_prompt_len``), so no engine tokenizes twice or adds its own BOS.
- **One stream per response**: each response is sampled from its own random stream, seeded by
  ``request_seed(run seed, step, prompt, sample)`` (the prompt's position in the step and the sample's in its group),
  so a response does not depend on what else is in the batch or how the engine batches, two seeds give different
  rollouts, the same seed the same rollouts, and a resumed run continues the stream. Engines sample from their own
  generators: generating never moves the trainer's RNG.
- **Stop set**: the tokenizer's EOS and the model's ``generation_config`` EOS ids (``stop_token_ids``).
- **A response ends where the engine says it ended**: the first stop token (HF stops there; vLLM reports the true
  length and ``finish_reason``), never where padding starts (Qwen base models pad with their EOS id). The response
  mask covers exactly the generated tokens: the stop token when it was generated, nothing after it; a response that
  reached ``max_new_tokens`` without a stop token is truncated (``finished`` False).
- **Sampled-token log-probs** of the engine (``rollout_log_prob``, at the sampling temperature, before any top-k/p
  since lpreg samples with neither) when asked: the trainer logs their gap to its own log-probs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from lpreg.registry import Registry


@dataclass
class Generation:
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, R] right-padded
    response_mask: torch.Tensor  # [B, R] float, 1 on generated tokens (the stop token included)
    finished: torch.Tensor  # [B] bool, the response ended with a stop token (False: cut at max_new_tokens)
    texts: list[str]  # decoded responses without special tokens
    rollout_log_prob: torch.Tensor | None = None  # [B, R] the engine's log-prob of each sampled token, if asked


ROLLOUTS: Registry[type] = Registry("rollout")


def request_seed(seed: int, step: int | str, prompt: int, sample: int) -> int:
    """The sampling seed of sample ``sample`` of the ``prompt``-th prompt of rollout ``step`` (evaluations use their
    own step tags): a hash, so neighbouring runs, steps and requests get unrelated streams; a 63-bit integer for torch
    and vLLM alike."""
    digest = hashlib.sha256(f"lpreg/{seed}/{step}/{prompt}/{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def group_seeds(seed: int, step: int | str, n_prompts: int, group_size: int) -> list[int]:
    """The seeds of a rollout of ``n_prompts`` prompts × ``group_size`` samples, in row order (prompt-major)."""
    return [request_seed(seed, step, j, k) for j in range(n_prompts) for k in range(group_size)]


def stop_token_ids(tokenizer, model) -> list[int]:
    """The tokenizer's EOS and every EOS id of the model's generation config, without duplicates."""
    ids = [tokenizer.eos_token_id]
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += extra if isinstance(extra, list) else [extra]
    return list(dict.fromkeys(i for i in ids if i is not None))


def encode_prompts(tokenizer, texts: list[str], max_len: int) -> list[list[int]]:
    """Token ids of each prompt by our tokenizer, no special tokens added, left-truncated to ``max_len`` (the
    reference's ``truncation=left``: the end of a prompt, where the answer starts, is kept)."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [x[-max_len:] if max_len and len(x) > max_len else x for x in ids]


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [B, P], mask [B, P])``, left-padded to the longest prompt."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def responses(token_lists: list[list[int]], finished: list[bool], pad_id: int, device,
              log_probs: list[list[float]] | None = None) -> tuple[torch.Tensor, ...]:
    """``(ids [B, R], mask [B, R], finished [B], log_prob [B, R] | None)`` from each response's generated tokens as
    the engine reports them (already cut after the stop token)."""
    width = max(1, max(len(t) for t in token_lists))
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width))
    lp = torch.zeros((len(token_lists), width)) if log_probs is not None else None
    for i, t in enumerate(token_lists):
        ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        mask[i, : len(t)] = 1.0
        if lp is not None:
            lp[i, : len(t)] = torch.tensor(log_probs[i][: len(t)], dtype=torch.float32)
    return (ids.to(device), mask.to(device), torch.tensor(finished, device=device),
            lp.to(device) if lp is not None else None)


def cut_at_stop(row: list[int], stop_ids: list[int]) -> tuple[list[int], bool]:
    """The generated tokens up to and including the first stop token, and whether there was one."""
    for j, tok in enumerate(row):
        if tok in stop_ids:
            return row[: j + 1], True
    return row, False


def decode(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [tokenizer.decode(ids[m > 0].tolist(), skip_special_tokens=True) for ids, m in zip(response_ids, mask)]


def build_rollout(cfg, model, tokenizer, model_path: str, max_model_len: int, seed: int):
    """The ``rollout=`` engine for ``model``: ``max_model_len`` = longest prompt + longest response; ``seed`` = the
    run's seed (the engine's default stream; each response still gets its own ``request_seed``)."""
    from lpreg.native.rollout import hf, vllm  # noqa: F401  (registration)

    return ROLLOUTS.get(cfg.name)(cfg, model, tokenizer, model_path, max_model_len, seed)

"""Which tokens a regularizer acts on: a per-step sample of them, and the share that is the task's spark.

A regularizer that acts on some tokens only declares which (``Regularizer.acts_on``, the same function its loss
selects with): Lp-Reg its regularized tokens, KL-Cov its penalized ones, 80/20 the kept ones, the spark floor the
decision points it lifts. After each micro-batch's loss the trainer shows this recorder the loss's inputs; it keeps a
row per acted-on token (the token, π_θ(y), π_old(y), π_proxy(y) where the regularizer has a proxy, the advantage's
sign, whether the response was graded correct, the response position and the mini-batch) and logs a sample of at most
``metrics.acted_tokens_n`` rows per step, drawn with a generator seeded by the step, as the table ``acted_tokens``
of the samples store. For a task with a spark it also returns ``spark/reg_share``.
"""

from __future__ import annotations

import math
import random

import torch

from lpreg.core.reduce import Mean

PROXY_TARGET = "proxy_log_prob"


class ActedTokens:
    def __init__(self, reg, reg_cfg, tokenizer, spark: int | None, correct: torch.Tensor, limit: int):
        self.reg, self.cfg, self.tokenizer, self.spark = reg, reg_cfg, tokenizer, spark
        self.correct, self.limit, self.rows = correct, limit, []

    def observe(self, inp, mb, tokens: torch.Tensor, mini: int) -> dict:
        """Record micro-batch ``mb``'s acted-on tokens (``tokens``: its sampled tokens ``[b, R]``); returns its
        ``spark/reg_share`` part (empty when the regularizer declares no selection or the task has no spark)."""
        if self.reg.acts_on is None:
            return {}
        acted = self.reg.acts_on(inp, self.cfg)  # [b, R] bool
        if self.limit:
            rows, pos = acted.nonzero(as_tuple=True)
            proxy = inp.old.get(PROXY_TARGET)
            for i, t in zip(rows.tolist(), pos.tolist()):
                proxy_p = proxy[i, t].exp().item() if proxy is not None else math.nan
                self.rows.append({
                    "token": self.tokenizer.decode([int(tokens[i, t])]), "position": t, "mini_batch": mini,
                    "p": round(inp.log_prob[i, t].exp().item(), 6), "p_old": round(inp.old_log_prob[i, t].exp().item(), 6),
                    "p_proxy": round(proxy_p, 6) if not math.isnan(proxy_p) else None,
                    "adv_sign": int(torch.sign(inp.advantages[i, t]).item()),
                    "correct": bool(self.correct[mb.rows][i].item()),
                })
        if self.spark is None:
            return {}
        return {"spark/reg_share": Mean(float((acted & (tokens == self.spark)).sum()), float(acted.sum()))}

    def sample(self, step: int) -> list[dict]:
        """At most ``limit`` of the step's rows, a seeded sample in rollout order."""
        if len(self.rows) <= self.limit:
            return self.rows
        keep = sorted(random.Random(step).sample(range(len(self.rows)), self.limit))
        return [self.rows[i] for i in keep]

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
        self.correct, self.limit, self.parts = correct, limit, []

    def observe(self, inp, mb, tokens: torch.Tensor, mini: int) -> dict:
        """Record micro-batch ``mb``'s acted-on tokens (``tokens``: its sampled tokens ``[b, R]``); returns its
        ``spark/reg_share`` part (empty when the regularizer declares no selection or the task has no spark). The
        values are gathered as tensors (a step can act on millions of tokens); rows are built only for the sample."""
        if self.reg.acts_on is None:
            return {}
        acted = self.reg.acts_on(inp, self.cfg)  # [b, R] bool
        if self.limit:
            rows, pos = acted.nonzero(as_tuple=True)
            proxy = inp.old.get(PROXY_TARGET)
            self.parts.append({
                "token": tokens[rows, pos].cpu(), "position": pos.cpu(), "mini_batch": torch.full_like(pos, mini).cpu(),
                "p": inp.log_prob[rows, pos].detach().exp().cpu(), "p_old": inp.old_log_prob[rows, pos].exp().cpu(),
                "p_proxy": (proxy[rows, pos].exp() if proxy is not None else torch.full(rows.shape, math.nan)).cpu(),
                "adv_sign": torch.sign(inp.advantages[rows, pos]).cpu(),
                "correct": self.correct[mb.rows][rows].cpu()})
        if self.spark is None:
            return {}
        return {"spark/reg_share": Mean(float((acted & (tokens == self.spark)).sum()), float(acted.sum()))}

    def sample(self, step: int) -> list[dict]:
        """At most ``limit`` of the step's acted-on tokens, a sample seeded by the step, in rollout order."""
        if not self.parts:
            return []
        cols = {k: torch.cat([p[k] for p in self.parts]) for k in self.parts[0]}
        n = len(cols["token"])
        keep = range(n) if n <= self.limit else sorted(random.Random(step).sample(range(n), self.limit))
        out = []
        for i in keep:
            proxy_p = float(cols["p_proxy"][i])
            out.append({"token": self.tokenizer.decode([int(cols["token"][i])]), "position": int(cols["position"][i]),
                        "mini_batch": int(cols["mini_batch"][i]), "p": round(float(cols["p"][i]), 6),
                        "p_old": round(float(cols["p_old"][i]), 6),
                        "p_proxy": None if math.isnan(proxy_p) else round(proxy_p, 6),
                        "adv_sign": int(cols["adv_sign"][i]), "correct": bool(cols["correct"][i])})
        return out

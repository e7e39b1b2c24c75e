"""Rollouts with Hugging Face ``generate`` (KV cache; pure sampling at the temperature: no top-k, no top-p, no
repetition penalty, whatever the model's own generation defaults say). CPU or GPU.

One random stream per response, batched: ``generate`` runs in greedy mode and a logits processor (:class:`RowSampler`)
adds to each row's log-probabilities at temperature T Gumbel noise drawn from that row's own generator, seeded by the
row's request seed. The argmax of log p + Gumbel is a sample from p (the Gumbel-max trick), so each row is sampled from
softmax(scores / T) by its own stream alone: a response does not depend on the batch it is generated in, and the
trainer's RNG never moves. Each row draws one vector of V uniforms per generated position, finished rows included,
so a row's draws at position t are the same whatever the other rows do. Sampled-token log-probs come from a logits
processor that sees each step's scores before the noise and keeps only one step's ``[B, V]`` at a time.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from lpreg.native.rollout import ROLLOUTS, Generation, cut_at_stop, decode, left_pad, responses, stop_token_ids


class SampledLogProbs(LogitsProcessor):
    """Records log softmax(scores / T) at each sampled token; needs the final sequences for the last one."""

    def __init__(self, temperature: float):
        self.temperature, self.prev, self.out = temperature, None, []

    def __call__(self, input_ids, scores):
        if self.prev is not None:  # input_ids now ends with the token sampled from the previous step's scores
            self.out.append(self.prev.gather(-1, input_ids[:, -1:])[:, 0])
        self.prev = torch.log_softmax(scores.float() / self.temperature, -1)  # [B, V]
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """``[B, R']`` log-probs of the generated tokens (``sequences`` is the full output)."""
        if self.prev is not None:
            self.out.append(self.prev.gather(-1, sequences[:, -1:])[:, 0])
        return torch.stack(self.out, 1) if self.out else torch.zeros(len(sequences), 0)


class RowSampler(LogitsProcessor):
    """Turns greedy decoding into sampling at ``temperature`` with one generator per row (module docstring)."""

    def __init__(self, seeds: list[int], temperature: float, device: torch.device):
        self.temperature = temperature
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids, scores):
        log_p = torch.log_softmax(scores.float() / self.temperature, -1)  # [B, V]
        u = torch.stack([torch.rand(log_p.shape[-1], generator=g, device=log_p.device) for g in self.generators])
        tiny = torch.finfo(u.dtype).tiny
        return log_p - torch.log(-torch.log(u.clamp(tiny, 1.0 - 1e-7)))  # + Gumbel(0, 1) noise, [B, V]


@ROLLOUTS.register("hf")
class HFRollout:
    def __init__(self, cfg, model, tokenizer, model_path: str, max_model_len: int, seed: int):
        self.model, self.tokenizer, self.logprobs = model, tokenizer, cfg.logprobs
        self.stop_ids = stop_token_ids(tokenizer, model)

    def sync_weights(self) -> None:
        """The engine shares the trained model object: nothing to copy."""

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, seeds: list[int]) -> Generation:
        """One response per token-id prompt, row i sampled from ``seeds[i]``'s stream; ``temperature == 0`` means
        greedy (the seeds are then unused)."""
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        ids, mask = left_pad(prompts, pad, device)
        sample = temperature > 0
        config = GenerationConfig(do_sample=False, repetition_penalty=1.0, max_new_tokens=max_new_tokens,
                                  eos_token_id=self.stop_ids, pad_token_id=pad, temperature=None, top_k=None,
                                  top_p=None)
        record = SampledLogProbs(temperature) if sample and self.logprobs else None
        processors = [p for p in (record, RowSampler(seeds, temperature, device) if sample else None) if p]
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                  logits_processor=LogitsProcessorList(processors))
        self.model.train(was_training)
        gen = out[:, ids.shape[1]:].tolist()  # [B, R'] generated tokens, padded after each response's stop
        cut = [cut_at_stop(row, self.stop_ids) for row in gen]
        lp = record.finish(out).tolist() if record else None
        resp, rmask, finished, rollout_lp = responses([c[0] for c in cut], [c[1] for c in cut], pad, device, lp)
        return Generation(ids, mask, resp, rmask, finished, decode(self.tokenizer, resp, rmask), rollout_lp)

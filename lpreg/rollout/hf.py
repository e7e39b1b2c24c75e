"""Rollouts with Hugging Face ``generate`` (KV cache; pure sampling at the temperature: top-k 0, top-p 1, no
repetition penalty, whatever the model's own generation defaults say). CPU or GPU.

Seeds: a batch is sampled under ``torch.random.fork_rng`` from the seed of its first request, so the trainer's RNG
never moves and the same (seed, step) gives the same tokens. Per-request seeds would need one ``generate`` call per
request; one seed per batch keeps batching and the stated rules (different seeds differ, same seed repeats, resume
continues). Sampled-token log-probs come from a logits processor that sees each step's scores before the
temperature warper and keeps only one step's ``[B, V]`` at a time.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from lpreg.rollout import ROLLOUTS, Generation, cut_at_stop, decode, left_pad, responses, stop_token_ids


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


@ROLLOUTS.register("hf")
class HFRollout:
    def __init__(self, cfg, model, tokenizer, model_path: str, max_model_len: int, seed: int):
        self.model, self.tokenizer, self.logprobs = model, tokenizer, cfg.logprobs
        self.stop_ids = stop_token_ids(tokenizer, model)

    def sync_weights(self) -> None:
        """The engine shares the trained model object: nothing to copy."""

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, seeds: list[int]) -> Generation:
        """One response per token-id prompt; ``temperature == 0`` means greedy."""
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        ids, mask = left_pad(prompts, pad, device)
        sample = temperature > 0
        config = GenerationConfig(do_sample=sample, temperature=temperature if sample else None, top_k=0 if sample
                                  else None, top_p=1.0 if sample else None, repetition_penalty=1.0,
                                  max_new_tokens=max_new_tokens, eos_token_id=self.stop_ids, pad_token_id=pad)
        record = SampledLogProbs(temperature) if sample and self.logprobs else None
        was_training = self.model.training
        self.model.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seeds[0])
            out = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                      logits_processor=LogitsProcessorList([record] if record else []))
        self.model.train(was_training)
        gen = out[:, ids.shape[1]:].tolist()  # [B, R'] generated tokens, padded after each response's stop
        cut = [cut_at_stop(row, self.stop_ids) for row in gen]
        lp = record.finish(out).tolist() if record else None
        resp, rmask, finished, rollout_lp = responses([c[0] for c in cut], [c[1] for c in cut], pad, device, lp)
        return Generation(ids, mask, resp, rmask, finished, decode(self.tokenizer, resp, rmask), rollout_lp)

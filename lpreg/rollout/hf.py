"""Rollouts with Hugging Face ``generate`` (KV cache; pure sampling at the temperature: top-k 0, top-p 1)."""

from __future__ import annotations

import torch

from lpreg.rollout import ROLLOUTS, Generation, decode, response_mask


@ROLLOUTS.register("hf")
class HFRollout:
    def __init__(self, cfg, model, tokenizer, model_path: str):
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer

    def sync_weights(self) -> None:
        """The engine shares the trained model object: nothing to copy."""

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int, temperature: float) -> Generation:
        """Sample one response per prompt; ``temperature == 0`` means greedy."""
        device = next(self.model.parameters()).device
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(
            do_sample=False)
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                  eos_token_id=self.tokenizer.eos_token_id, **sampling)
        self.model.train(was_training)
        resp = out[:, enc.input_ids.shape[1]:]  # [B, R']
        mask, finished = response_mask(resp, self.tokenizer.eos_token_id)
        resp = resp.masked_fill(mask == 0, self.tokenizer.pad_token_id)
        return Generation(enc.input_ids, enc.attention_mask, resp, mask, finished, decode(self.tokenizer, resp, mask))

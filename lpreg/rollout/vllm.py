"""Rollouts with vLLM on a GPU (``pip install -e '.[gpu]'``), colocated with the trainer in one process.

The engine is created from the initial model folder; after every optimizer update the trainer calls
``sync_weights`` and the current weights are loaded into the engine's model (``LLM.apply_model``, which needs
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` so that the model lives in this process; set here). Sampling matches the HF
engine: temperature T, top-k off, top-p 1. vLLM's sampled tokens are re-scored by the trainer's own forward pass,
so the loss never uses vLLM's log-probs.
"""

from __future__ import annotations

import os

import torch

from lpreg.rollout import ROLLOUTS, Generation, decode, response_mask


@ROLLOUTS.register("vllm")
class VLLMRollout:
    def __init__(self, cfg, model, tokenizer, model_path: str):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError("rollout=vllm needs vLLM and a GPU: pip install -e '.[gpu]'") from err
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.llm = LLM(model=model_path, dtype=cfg.dtype, gpu_memory_utilization=cfg.gpu_memory_utilization,
                       enforce_eager=cfg.enforce_eager, max_model_len=cfg.max_model_len, seed=0)

    def sync_weights(self) -> None:
        weights = [(k, v.detach()) for k, v in self.model.state_dict().items()]
        self.llm.apply_model(lambda m: m.load_weights(weights))
        self.llm.reset_prefix_cache()

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int, temperature: float) -> Generation:
        from vllm import SamplingParams

        params = SamplingParams(temperature=temperature, top_k=-1, top_p=1.0, max_tokens=max_new_tokens)
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        width = max(1, max(len(o.outputs[0].token_ids) for o in outs))
        resp = torch.full((len(outs), width), pad)
        for i, o in enumerate(outs):
            ids = list(o.outputs[0].token_ids)
            resp[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        device = next(self.model.parameters()).device
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        mask, finished = response_mask(resp, eos)
        resp = resp.masked_fill(mask == 0, pad).to(device)
        return Generation(enc.input_ids, enc.attention_mask, resp, mask.to(device), finished.to(device),
                          decode(self.tokenizer, resp, mask))

"""Rollouts with vLLM on a GPU (``pip install -e '.[gpu]'``), colocated with the trainer in this process.

NOT RUN in this repository's sessions (no GPU with vLLM was available): written against vLLM 0.32's source
and its documentation; ``scripts/gpu_check.sh`` runs it where vLLM is installed.

- One engine per process, built from the initial model folder with the run's seed (``request_seed(seed, -1, 0, 0)``),
  ``max_model_len`` = longest prompt + ``max_response_len``, CUDA graphs on unless ``rollout.enforce_eager``,
  ``gpu_memory_utilization`` from the config, ``logprobs_mode="processed_logprobs"`` (the log-probs of the sampling
  distribution at T), in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so the weights can be loaded by name.
  Building the engine reseeds torch: the trainer's RNG state is saved before and restored after.
- Sleep mode (``rollout.sleep``): the engine sleeps (level 2: weights and KV cache freed) through the log-prob pass
  and the update, and wakes for generation: weights first, then the trainer's weights are pushed (a level-2 wake
  leaves garbage; ``reload_weights`` would reload the original checkpoint from disk, not the trained weights), then
  the KV cache.
- Weight sync by parameter name on the GPU, one tensor at a time in the engine's dtype (no full CPU copy of the
  state dict); HF names are accepted by vLLM's ``load_weights`` (q/k/v and gate/up are packed there).
- Prompts go in as token ids (``TokensPrompt``); each request has its own seed (``SamplingParams.seed``); responses
  end where vLLM says (``token_ids`` includes the stop token; ``finish_reason`` ``"stop"`` or ``"length"``).
"""

from __future__ import annotations

import os

import torch

from lpreg.native.rollout import ROLLOUTS, Generation, decode, left_pad, request_seed, responses, stop_token_ids


@ROLLOUTS.register("vllm")
class VLLMRollout:
    def __init__(self, cfg, model, tokenizer, model_path: str, max_model_len: int, seed: int):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError as err:
            raise ImportError("rollout=vllm needs vLLM and a CUDA GPU: pip install -e '.[gpu]'") from err
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.stop_ids = stop_token_ids(tokenizer, model)
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        self.llm = LLM(model=model_path, dtype=cfg.dtype, gpu_memory_utilization=cfg.gpu_memory_utilization,
                       enforce_eager=cfg.enforce_eager, max_model_len=cfg.max_model_len or max_model_len,
                       seed=engine_seed(seed), enable_sleep_mode=cfg.sleep, logprobs_mode="processed_logprobs")
        torch.set_rng_state(cpu_rng)  # vLLM's start-up seeds torch; the trainer's stream must not move
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        self.dirty = True  # the engine's weights differ from the trainer's until the first push
        if cfg.sleep:
            self.llm.sleep(level=2)

    def _engine_model(self):
        return self.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model

    def sync_weights(self) -> None:
        """Called after each update: the weights are pushed at the next wake (or now, without sleep mode)."""
        self.dirty = True
        if not self.cfg.sleep:
            self._push()

    def _push(self) -> None:
        dtype = getattr(torch, self.cfg.dtype)
        target = self._engine_model()
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                target.load_weights([(name, param.detach().to(dtype))])  # one tensor at a time, on the GPU
        self.llm.reset_prefix_cache()
        self.dirty = False

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float, seeds: list[int]) -> Generation:
        from vllm import SamplingParams, TokensPrompt

        if self.cfg.sleep:
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])
        if self.dirty:
            self._push()
        if self.cfg.sleep:
            self.llm.wake_up(tags=["kv_cache"])
        params = [SamplingParams(temperature=temperature, top_k=0, top_p=1.0, max_tokens=max_new_tokens,
                                 stop_token_ids=self.stop_ids, seed=s, logprobs=0 if temperature > 0 else None)
                  for s in seeds]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        if self.cfg.sleep:
            self.llm.sleep(level=2)
            self.dirty = True  # a level-2 sleep drops the weights: push again at the next wake
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        finished = [o.outputs[0].finish_reason == "stop" for o in outs]
        lps = None
        if temperature > 0:
            lps = [[step[t].logprob for step, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)] for o in outs]
        ids, mask = left_pad(prompts, pad, device)
        resp, rmask, done, rollout_lp = responses(tokens, finished, pad, device, lps)
        return Generation(ids, mask, resp, rmask, done, decode(self.tokenizer, resp, rmask), rollout_lp)


def engine_seed(seed: int) -> int:
    """The vLLM engine seed of a run (only the engine's own default stream: every request has its own seed)."""
    return request_seed(seed, -1, 0, 0) % (2**31)

"""Peak memory and time of the token path at a real vocabulary: the old dense path against the chunked token pass.

    python benchmarks/token_path.py [--lengths 256,1024,4096] [--chunk 1024] [--regs none,entropy,...] [--out FILE]

A Qwen2-architecture model with Qwen's vocabulary (V = 151,936), a small hidden size and random init (config
below, no download) scores one sequence: a prompt of 64 tokens and a response of R tokens:
- ``old``: the path lpreg used before the token pass: one forward to full logits ``[b, R, V]`` (fp32), then
  log-softmax, entropy, tail mass and the regularizer's targets over the whole tensor; the update recomputes full
  logits with gradient (and ``forward_kl`` keeps π_old's full logits).
- ``new``: ``lpreg/native/tokens.py``: the head applied to ``--chunk`` tokens at a time, each chunk reduced at once and
  recomputed in backward; the update is the trainer's own ``update``.
On the CPU each (path, regularizer, R, phase) runs in a fresh process and memory is the peak rise of the process's
resident set during the measured call (sampled every millisecond); on CUDA all run in one process and memory is the
rise of ``torch.cuda.max_memory_allocated`` during the call. Time is the wall time of the call (median of
``--repeat``).
The head is scaled (``HEAD_SCALE``) so that the random model's next-token distributions are peaked like a trained
LM's (a flat random distribution keeps every token in the min-p proxy, which no real model does).
Prints a Markdown table (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import resource
import statistics
import sys
import threading
import time

V = 151_936
MODELS = {  # Qwen2-architecture shapes with Qwen's vocabulary, random init
    "small": dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=8192, tie_word_embeddings=True),
    # Qwen3-0.6B's shape (28 layers, hidden 1,024, 16 heads / 8 KV heads, tied embeddings), for the GPU check
    "qwen3-0.6b": dict(vocab_size=V, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=40960,
                       tie_word_embeddings=True),
}
PROMPT = 64
HEAD_SCALE = 20.0  # final-norm gain: mean max probability 0.96, entropy 0.34 nats, at most ~100 min-p survivors
REGS = {"none": {}, "entropy": {}, "lpreg": {}, "lpreg_fkl": {"divergence": "forward_kl"}, "kl_cov": {}}


class PeakRSS:
    """Peak resident set size (MiB) above its level at entry, sampled every millisecond by a thread. Large tensors
    are mmap-ed by glibc and returned on free, so the resident set follows the live tensors of the measured call."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def rise(self) -> float:
        return self.peak - self.base

    def _run(self):
        while not self.stop.wait(0.001):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


_MODELS: dict = {}  # in-process measurements (CUDA) build each model once


def build_model(shape: str, device: str):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if (shape, device) not in _MODELS:
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(Qwen2Config(**MODELS[shape])).float().to(device)
        with torch.no_grad():
            model.get_decoder().norm.weight.mul_(HEAD_SCALE)
        _MODELS[(shape, device)] = model
    return _MODELS[(shape, device)]


def setup(reg_key: str, R: int, chunk: int, shape: str, device: str):
    import torch

    from lpreg.native.rollout import Generation

    model = build_model(shape, device)
    name = "lpreg" if reg_key.startswith("lpreg") else reg_key
    overrides = [f"regularizer={name}", *(f"regularizer.{k}={v}" for k, v in REGS[reg_key].items()),
                 f"trainer.token_chunk={chunk}", "trainer.mini_batches=1", "rollout.group_size=2",
                 "trainer.prompts_per_step=1",  # group/prompt sizes only pass validation; one sequence is scored
                 *(["model=hf", "model.path=unused", "model.dtype=bfloat16"] if device == "cuda" else [])]
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from lpreg.harness.config import CONF, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = OmegaConf.to_object(compose(config_name="config", overrides=overrides))
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, V, (1, PROMPT), generator=g)
    resp = torch.randint(0, V, (1, R), generator=g)
    prompt, resp = prompt.to(device), resp.to(device)
    gen = Generation(prompt, torch.ones_like(prompt), resp, torch.ones(1, R, device=device),
                     torch.ones(1, dtype=torch.bool, device=device), [""])
    adv = -torch.ones(1, R, device=device)  # one response with a negative advantage: every token is an Lp-Reg candidate
    return torch, model, cfg, gen, adv


def old_logprob(torch, model, cfg, gen):
    """The dense log-prob pass: full logits ``[b·R, V]`` (fp32), then every per-token value over the whole tensor.
    With ``forward_kl`` the old path keeps π_old's full logits for the update."""
    from lpreg.core.losses import REGULARIZERS
    from lpreg.native.tokens import old_pass_fns

    reg = REGULARIZERS.get(cfg.regularizer.name)
    y = gen.response_ids.flatten()
    with torch.no_grad():
        z = dense_logits(torch, model, cfg, gen)
        fns = old_pass_fns(cfg.metrics.tail_kappa, cfg.metrics.lowprob_threshold, reg.old_targets(cfg.regularizer))
        old = {"log_prob": torch.log_softmax(z, -1).gather(-1, y[:, None])[:, 0],
               **{k: fn(z, y, {}) for k, fn in fns.items()}}
    keeps_logits = cfg.regularizer.name == "lpreg" and cfg.regularizer.divergence == "forward_kl"
    return old, (z if keeps_logits else None)


def dense_logits(torch, model, cfg, gen):
    ids = torch.cat([gen.prompt_ids, gen.response_ids], 1)
    R = gen.response_ids.shape[1]
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=R + 1).logits[:, :-1]
    return out.float().reshape(-1, V) / cfg.rollout.temperature  # [b·R, V]


def old_update(torch, model, cfg, gen, adv, old):
    """The dense update: full logits with gradient, the regularizer's targets over the whole tensor, backward."""
    from lpreg.core.losses import REGULARIZERS, LossInputs

    reg = REGULARIZERS.get(cfg.regularizer.name)
    y = gen.response_ids.flatten()
    z = dense_logits(torch, model, cfg, gen)  # with gradient
    new = {k: fn(z, y, old) for k, fn in reg.new_targets(cfg.regularizer).items()}
    lp = torch.log_softmax(z, -1).gather(-1, y[:, None])[:, 0]
    grid = lambda v: v.reshape(*gen.response_ids.shape, *v.shape[1:])
    inp = LossInputs(grid(lp), grid(old["log_prob"]), adv, gen.response_mask,
                     old={k: grid(old[k]) for k in reg.old_targets(cfg.regularizer)},
                     new={k: grid(v) for k, v in new.items()},
                     rollout=reg.rollout_targets(cfg.regularizer, old["log_prob"], adv.flatten()))
    loss, _ = reg.loss(inp, cfg.regularizer)
    loss.backward()


def new_logprob(torch, model, cfg, gen):
    from lpreg.core.losses import REGULARIZERS
    from lpreg.native import trainer
    from lpreg.native.tokens import old_pass_fns

    reg = REGULARIZERS.get(cfg.regularizer.name)
    minis = trainer.micro_batches(gen, cfg)
    return minis, trainer.old_pass(model, minis, old_pass_fns(cfg.metrics.tail_kappa, cfg.metrics.lowprob_threshold,
                                                              reg.old_targets(cfg.regularizer)), cfg)


def new_update(torch, model, cfg, gen, adv, state):
    from lpreg.core.losses import REGULARIZERS
    from lpreg.native import trainer

    reg = REGULARIZERS.get(cfg.regularizer.name)
    minis, olds = state
    roll = reg.rollout_targets(cfg.regularizer, trainer.rollout_flat(olds, "log_prob"), adv.flatten())
    trainer.update(model, torch.optim.SGD(model.parameters(), lr=0.0), minis, olds, adv, roll, reg, cfg)


def measure(args) -> dict:
    """One measurement in this (fresh) process. For the update, π_old's targets are computed first with the chunked
    pass (whose peak is small) and are not part of the measurement; the old ``forward_kl`` path also holds π_old's
    full logits during its update (built chunk by chunk, so only its size counts), as it did in the trainer."""
    path, reg_key, R, phase, chunk, repeat, threads, shape, device = args
    import torch

    torch.set_num_threads(threads)
    torch_, model, cfg, gen, adv = setup(reg_key, R, chunk, shape, device)
    held = None
    if phase == "update":
        state = new_logprob(torch, model, cfg, gen)
        if path == "old":
            old = {k: torch.cat([o[k] for mini in state[1] for o in mini]) for k in state[1][0][0]}
            if cfg.regularizer.name == "lpreg" and cfg.regularizer.divergence == "forward_kl":
                with torch.no_grad():
                    held = dense_logits(torch, model, cfg, gen)  # π_old's full logits, kept by the old path
            run = lambda: old_update(torch, model, cfg, gen, adv, old)
        else:
            run = lambda: new_update(torch, model, cfg, gen, adv, state)
    else:
        run = (lambda: old_logprob(torch, model, cfg, gen)) if path == "old" else (
            lambda: new_logprob(torch, model, cfg, gen))
    times, peaks = [], []
    for _ in range(repeat):
        model.zero_grad(set_to_none=True)
        if device == "cuda":  # torch's own peak counter: the rise of allocated memory during the call
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            run()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            peaks.append((torch.cuda.max_memory_allocated() - base) / 2**20)
            continue
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        peaks.append(mem.rise)
    del held
    return {"path": path, "reg": reg_key, "R": R, "phase": phase, "peak_mib": max(peaks), "s": statistics.median(times)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="256,1024,4096")
    ap.add_argument("--regs", default=",".join(REGS))
    ap.add_argument("--chunk", type=int, default=None, help="token chunk of the new path (default: the trainer's)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", choices=sorted(MODELS), default="small")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: bf16 autocast, torch's peak counter")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    from lpreg.harness.config import TrainerConfig

    chunk = args.chunk if args.chunk is not None else TrainerConfig().token_chunk
    jobs = [(path, reg, int(R), phase, chunk, args.repeat, args.threads, args.model, args.device)
            for R in args.lengths.split(",")
            for reg in args.regs.split(",") for phase in ("logprob", "update") for path in ("old", "new")]
    ctx = mp.get_context("spawn")
    if args.device == "cuda":  # CUDA context, kernels and allocator warmed up before the first timed call
        measure(("new", jobs[0][1], min(int(R) for R in args.lengths.split(",")), "update", *jobs[0][4:]))
    rows = []
    for i, job in enumerate(jobs, 1):
        if args.device == "cuda":  # torch's peak counter is reset per call: one process, the model built once
            import torch

            try:
                row = measure(job)
            except torch.OutOfMemoryError:  # the old path at long R: recorded as out of memory
                torch.cuda.empty_cache()
                row = {"path": job[0], "reg": job[1], "R": job[2], "phase": job[3], "peak_mib": math.inf,
                       "s": math.nan}
        else:
            with ctx.Pool(1) as pool:  # a fresh process per measurement: its peak RSS is this measurement's
                row = pool.apply(measure, (job,))
        rows.append(row)
        print(f"[{i}/{len(jobs)}] {json.dumps(row)}", file=sys.stderr, flush=True)
    table = ["| R | regularizer | phase | old peak MiB | new peak MiB | old/new memory | old s | new s |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    by = {(r["path"], r["reg"], r["R"], r["phase"]): r for r in rows}
    for R in sorted({r["R"] for r in rows}):
        for reg in args.regs.split(","):
            for phase in ("logprob", "update"):
                o, n = by[("old", reg, R, phase)], by[("new", reg, R, phase)]
                mem = lambda r: "out of memory" if math.isinf(r["peak_mib"]) else f"{r['peak_mib']:.0f}"
                ratio = "-" if math.isinf(o["peak_mib"] + n["peak_mib"]) else f"{o['peak_mib'] / max(n['peak_mib'], 1):.1f}×"
                table.append(f"| {R} | {reg} | {phase} | {mem(o)} | {mem(n)} | {ratio} | {o['s']:.2f} | {n['s']:.2f} |")
    step = ["", "Step time (log-prob pass + update) of each regularizer relative to `none`, new path:", "",
            "| R | " + " | ".join(args.regs.split(",")) + " |", "|---:|" + "---:|" * len(args.regs.split(","))]
    for R in sorted({r["R"] for r in rows}):
        t = {reg: by[("new", reg, R, "logprob")]["s"] + by[("new", reg, R, "update")]["s"] for reg in args.regs.split(",")}
        step.append(f"| {R} | " + " | ".join(f"{t[reg] / t['none']:.2f}" for reg in t) + " |")
    shape = MODELS[args.model]
    where = f"{args.device}, {args.threads} threads" if args.device == "cpu" else "cuda, bf16 autocast"
    text = "\n".join([f"Token path, V = {V:,}, {shape['num_hidden_layers']} layers × hidden {shape['hidden_size']}, "
                      f"prompt {PROMPT}, one sequence, token_chunk {chunk}, {where}:", "", *table, *step]) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""lpreg's trainer against TRL's ``GRPOTrainer`` on the embedded task: seconds per step and where they go.

    pip install -e '.[bench]'          # brings trl (pinned in pyproject.toml)
    python benchmarks/vs_trl.py [--threads 1,2] [--pairs 3] [--warmup 2] [--steps 8] [--out benchmarks/vs_trl.md]

Both systems train lpreg's shipped warmed-up tiny Qwen2 (``lpreg/assets/``) on the same prompts in the same order
(lpreg's own prompt sampler, replayed into TRL's dataset with shuffling off): 32 prompts × 8 samples per rollout,
at most 4 response tokens, pure sampling at T = 1, two optimizer steps per rollout (token-mean loss over each
mini-batch of 128 responses, PPO clip 0.2, no KL, AdamW lr 3e-4 without weight decay, grad clip 1.0), fp32 on the
CPU, reward = exact match of the response that requires the end token (the task's own ``reward``). One lpreg step
is one rollout, so it is compared with two TRL optimizer steps (``steps_per_generation=2``). lpreg runs with
``regularizer=none`` and with no evaluation, checkpoint or sample table in any step (``eval.every=0``,
``trainer.checkpoint_every=0``); TRL with ``save_strategy="no"`` and no evaluation.

Each run is a fresh process (model load and imports are not timed); runs alternate A, B, A, B (``--pairs`` pairs
per thread count) so that a change of the machine's load hits both systems alike. A step's time is the wall time
between consecutive step boundaries (lpreg: its tracker's ``log`` call; TRL: ``on_step_end`` of every second
optimizer step), so everything each trainer does counts; the first ``--warmup`` steps of every run are dropped.
The phases are timed by the same wrappers in both systems: ``rollout`` = the model's ``generate``; ``log-prob`` =
the no-grad pass of π_old over the rollout (lpreg ``old_pass``, TRL ``_get_per_token_logps_and_entropies`` without
grad); ``backward`` = ``torch.autograd.backward``; ``optimizer`` = ``clip_grad_norm_`` + ``AdamW.step``; ``loss
forward`` = lpreg's ``timing/update`` less backward and optimizer, TRL's ``compute_loss``; ``other`` = the rest of
the step (reward, advantages, metrics, data loading, trainer overhead).

The compute limit: the step's FLOPs (``step_flops``) over its median time, against the fp32 matmul throughput this
machine reaches on the model's own shapes (``matmul_rate``).
Prints a Markdown table and writes it to ``--out``; every pair records the 1-minute load average (``os.getloadavg``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS, GROUP, MAX_RESPONSE, LR = 32, 8, 4, 3e-4
PHASES = ("rollout", "log-prob", "loss forward", "backward", "optimizer", "other")
SYSTEMS = ("lpreg", "trl")


class Phases:
    """Seconds per phase since the last ``cut``, and the wall time between cuts (step boundaries)."""

    def __init__(self):
        self.acc: dict[str, float] = {}
        self.rows: list[dict[str, float]] = []
        self.last: float | None = None
        self.shape: list[tuple[int, int]] = []  # (prompt width, response width) of each generate call

    def add(self, name: str, seconds: float) -> None:
        self.acc[name] = self.acc.get(name, 0.0) + seconds

    def begin(self) -> None:
        """Mark the start of the first step (later steps start where the previous one ended)."""
        if self.last is None:
            self.last, self.acc = time.perf_counter(), {}

    def cut(self) -> None:
        now = time.perf_counter()
        self.rows.append({"step": now - self.last, **self.acc})
        self.last, self.acc = now, {}

    def wrap(self, owner, attr: str, name: str, when=lambda *a, **k: True) -> None:
        """Time every call of ``owner.attr`` as phase ``name`` (when ``when(*args)`` holds)."""
        fn = getattr(owner, attr)

        def timed(*args, **kwargs):
            if not when(*args, **kwargs):
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - t0)

        setattr(owner, attr, timed)


def common_wrappers(clock: Phases) -> None:
    """The phases both systems share: generate, backward, gradient clipping and the AdamW step."""
    import torch
    from transformers import Qwen2ForCausalLM

    generate = Qwen2ForCausalLM.generate

    def timed_generate(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = generate(self, *args, **kwargs)
        clock.add("rollout", time.perf_counter() - t0)
        width = kwargs["input_ids"].shape[1]
        clock.shape.append((width, out.shape[1] - width))
        return out

    Qwen2ForCausalLM.generate = timed_generate
    clock.wrap(torch.autograd, "backward", "backward")
    clock.wrap(torch.nn.utils, "clip_grad_norm_", "optimizer")
    clock.wrap(torch.optim.AdamW, "step", "optimizer")


def policy_and_prompts(n_steps: int, seed: int = 0):
    """lpreg's default config with the benchmark's overrides, the shipped policy's folder, and the problems of the
    first ``n_steps`` rollouts in lpreg's order (each prompt once; the samples of a group are generated from it)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from lpreg.harness.config import CONF, register_configs
    from lpreg.native.models import tiny_policy_path
    from lpreg.native.trainer import PromptSampler
    from lpreg.tasks import build_task

    register_configs()
    overrides = ["regularizer=none", f"seed={seed}", f"trainer.prompts_per_step={PROMPTS}", f"rollout.group_size={GROUP}",
                 "trainer.mini_batches=2", f"trainer.lr={LR}", "trainer.weight_decay=0", "trainer.grad_clip=1.0",
                 "rollout.temperature=1.0", f"task.max_response_len={MAX_RESPONSE}", "eval.at_start=false",
                 "eval.every=0", "trainer.checkpoint_every=0", "metrics.samples_every=0",
                 "trainer.device=cpu"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = OmegaConf.to_object(compose(config_name="config", overrides=overrides))
    task = build_task(cfg.task)
    sampler = PromptSampler(len(task.train_problems()), cfg.seed)
    problems = [task.train_problems()[i] for _ in range(n_steps) for i in sampler.next(PROMPTS)]
    return cfg, task, tiny_policy_path(cfg.model, task), problems


class NullTracker:
    """lpreg's tracker interface; ``log`` (the end of a step) cuts the clock, nothing is stored."""

    run_id = None

    def __init__(self, clock: Phases):
        self.clock = clock

    def log(self, metrics, step):
        if step > 0:
            self.clock.cut()
            self.clock.rows[-1]["loss forward"] = (metrics["timing/update"] - self.clock.rows[-1].get("backward", 0.0)
                                                   - self.clock.rows[-1].get("optimizer", 0.0))

    def log_histogram(self, *args):
        pass

    def log_table(self, *args):
        pass


def run_lpreg(n_steps: int, threads: int, job_dir: Path) -> Phases:
    import lpreg.native.trainer as T

    cfg, _, _, _ = policy_and_prompts(n_steps)
    cfg.trainer.steps, cfg.trainer.num_threads = n_steps, threads
    clock = Phases()
    common_wrappers(clock)
    clock.wrap(T, "old_pass", "log-prob")
    next_prompts = T.PromptSampler.next

    def next_timed(self, k):  # the first thing a step does
        clock.begin()
        return next_prompts(self, k)

    T.PromptSampler.next = next_timed
    T.train(cfg, job_dir, NullTracker(clock))
    return clock


def trl_config(n_steps: int, threads: int, out_dir: Path):
    """The ``GRPOConfig`` that makes TRL's update the same as lpreg's (each one is needed for the two updates to match)."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(out_dir), max_steps=2 * n_steps, seed=0, use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, report_to="none", save_strategy="no", eval_strategy="no", disable_tqdm=True,
        logging_steps=10**9, dataloader_num_workers=0, shuffle_dataset=False,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch", weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0,
        per_device_train_batch_size=PROMPTS * GROUP // 2, gradient_accumulation_steps=1, steps_per_generation=2,
        num_iterations=1, num_generations=GROUP, max_completion_length=MAX_RESPONSE, temperature=1.0, top_k=0,
        top_p=1.0, beta=0.0, epsilon=0.2, loss_type="bnpo", use_vllm=False)


def run_trl(n_steps: int, threads: int, out_dir: Path) -> Phases:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from lpreg.native.models import load_pretrained
    from lpreg.tasks import Problem

    torch.set_num_threads(threads)
    _, task, path, problems = policy_and_prompts(n_steps)
    model, tokenizer = load_pretrained(path)
    eos = tokenizer.eos_token_id

    def exact_match(prompts, completions, completion_ids, answer, **kwargs):
        return [task.reward(c, Problem(p, a, task.name), eos in ids)
                for p, c, ids, a in zip(prompts, completions, completion_ids, answer)]

    clock = Phases()
    common_wrappers(clock)
    no_grad = lambda *a, **k: not torch.is_grad_enabled()  # the π_old pass, not the loss forward
    clock.wrap(GRPOTrainer, "_get_per_token_logps_and_entropies", "log-prob", when=no_grad)
    clock.wrap(GRPOTrainer, "compute_loss", "loss forward")

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % 2 == 0:
                clock.cut()

    data = Dataset.from_list([{"prompt": p.prompt, "answer": p.answer} for p in problems])
    trainer = GRPOTrainer(model=model, reward_funcs=exact_match, args=trl_config(n_steps, threads, out_dir),
                          train_dataset=data, processing_class=tokenizer, callbacks=[StepClock()])
    trainer.train()
    return clock


def worker(system: str, n_steps: int, threads: int) -> dict:
    """One run in this process; its step rows (seconds per phase) and the generate shapes."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    with tempfile.TemporaryDirectory() as tmp:
        clock = (run_lpreg if system == "lpreg" else run_trl)(n_steps, threads, Path(tmp))
    for row in clock.rows:
        row["other"] = row["step"] - sum(row.get(p, 0.0) for p in PHASES[:-1])
    return {"system": system, "threads": threads, "rows": clock.rows, "shapes": clock.shape}


# ---- the compute limit -----------------------------------------------------------------------------------------


def model_dims(path: Path) -> dict:
    cfg = json.loads((Path(path) / "config.json").read_text())
    d, inter, layers, heads = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], \
        cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", heads) * d // heads  # width of k and of v
    return {"d": d, "layers": layers, "vocab": cfg["vocab_size"],
            "body": layers * (2 * d * d + 2 * d * kv + 3 * d * inter),  # matmul weights per position: q, o, k, v, MLP
            "mats": [(d, d), (d, kv), (d, kv), (d, d), (d, inter), (d, inter), (inter, d)]}


def step_flops(dims: dict, batch: int, prompt: int, response: int) -> dict[str, float]:
    """FLOPs of one lpreg step (= two TRL optimizer steps) on ``batch`` rows of ``prompt`` + ``response`` positions.

    Per position a forward costs 2·body (the decoder's matmul weights) + 4·layers·d·ctx (attention scores and values
    over a causal context of mean ctx = (prompt + response + 1) / 2); the head (vocab × d weights) runs on response
    positions only. Generation = prefill of the prompt + ``response - 1`` one-position decode steps; the log-prob
    pass and the loss forward each run the full ``prompt + response`` rows once; backward = 2 × forward.
    """
    ctx = (prompt + response + 1) / 2
    per_pos = 2 * dims["body"] + 4 * dims["layers"] * dims["d"] * ctx
    head = 2 * dims["vocab"] * dims["d"] * batch * response
    gen = batch * (prompt + response - 1) * per_pos + head
    fwd = batch * (prompt + response) * per_pos + head
    return {"generate": gen, "train": 4 * fwd, "total": gen + 4 * fwd}


def matmul_rate(dims: dict, rows: int, threads: int, seconds: float = 3.0) -> float:
    """Best fp32 FLOP/s of one decoder layer's matmuls ``[rows, k] @ [k, n]`` (its own shapes) on ``threads``."""
    import torch

    torch.set_num_threads(threads)
    xs = {k: torch.randn(rows, k) for k, _ in dims["mats"]}
    ws = [torch.randn(k, n) for k, n in dims["mats"]]
    flops = sum(2 * rows * w.shape[0] * w.shape[1] for w in ws)
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        for w in ws:
            xs[w.shape[0]] @ w
        best = min(best, time.perf_counter() - t0)
    return flops / best


# ---- the driver --------------------------------------------------------------------------------------------------


def run_one(system: str, threads: int, n_steps: int, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, __file__, "--worker", system, "--threads", str(threads),
                           "--steps", str(n_steps)], capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the {system} run ({threads} threads) failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict], warmup: int) -> dict:
    """Per (system, threads): measured steps (warm-up dropped), min/median s/step, mean s/phase; per pair the ratio
    of medians TRL / lpreg."""
    out: dict = {}
    for run in runs:
        rows = run["rows"][warmup:]
        key = (run["system"], run["threads"])
        entry = out.setdefault(key, {"steps": [], "medians": [], "phases": {p: [] for p in PHASES}, "shapes": []})
        entry["steps"] += [r["step"] for r in rows]
        entry["medians"].append(statistics.median(r["step"] for r in rows))
        for p in PHASES:
            entry["phases"][p] += [r.get(p, 0.0) for r in rows]
        entry["shapes"] += run["shapes"]
    return out


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    try:
        from importlib.metadata import version
        trl = version("trl")
    except Exception:  # noqa: BLE001 - only for the header
        trl = "not installed"
    return f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}, trl {trl}"


def markdown(summary: dict, loads: dict, threads: list[int], warmup: int, pairs: int, flops: dict,
             rates: dict, started: str) -> str:
    lines = [f"Measured {started} on {machine()}; {pairs} interleaved pairs per thread count (lpreg, TRL, lpreg, "
             f"TRL, ...), each run a fresh process, its first {warmup} steps dropped. The machine was shared: "
             "1-minute load average before each pair in the table.", "",
             "| threads | system | steps | min s/step | median s/step | per-pair median ratio TRL / lpreg | load |",
             "|---|---|---|---|---|---|---|"]
    for t in threads:
        a, b = summary[("lpreg", t)], summary[("trl", t)]
        ratios = ", ".join(f"{y / x:.2f}" for x, y in zip(a["medians"], b["medians"]))
        load = ", ".join(f"{v:.1f}" for v in loads[t])
        for name, e in (("lpreg", a), ("TRL", b)):
            lines.append(f"| {t} | {name} | {len(e['steps'])} | {min(e['steps']):.3f} | "
                         f"{statistics.median(e['steps']):.3f} | {ratios if name == 'TRL' else ''} | {load} |")
    lines += ["", "Phases, mean s/step (share of the step):", "",
              "| threads | system | " + " | ".join(PHASES) + " |", "|---|---|" + "---|" * len(PHASES)]
    for t in threads:
        for name in SYSTEMS:
            e = summary[(name, t)]
            total = statistics.fmean(e["steps"])
            cells = [f"{statistics.fmean(e['phases'][p]):.3f} ({statistics.fmean(e['phases'][p]) / total:.0%})"
                     for p in PHASES]
            lines.append(f"| {t} | {'TRL' if name == 'trl' else name} | " + " | ".join(cells) + " |")
    g = flops["total"] / 1e9
    lines += ["", f"Compute limit: one step is {g:.2f} GFLOP ({flops['generate'] / 1e9:.2f} generating, "
              f"{flops['train'] / 1e9:.2f} in the log-prob pass, loss forward and backward; `step_flops`); the "
              f"matmul throughput is the best of 3 s per shape (load average {loads['matmul'][0]:.1f} after it)."]
    for t in threads:
        r_train, r_gen = rates[t]
        floor = flops["generate"] / r_gen + flops["train"] / r_train
        parts = [f"{'TRL' if s == 'trl' else s} {g / statistics.median(summary[(s, t)]['steps']):.1f} GFLOP/s "
                 f"({floor / statistics.median(summary[(s, t)]['steps']):.0%} of the limit)" for s in SYSTEMS]
        lines.append(f"- {t} thread{'s' if t > 1 else ''}: matmuls of the model's shapes reach {r_train / 1e9:.1f} "
                     f"GFLOP/s on training rows and {r_gen / 1e9:.1f} on decode rows, so the step's FLOPs need at "
                     f"least {floor:.3f} s; measured {parts[0]}, {parts[1]}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated")
    ap.add_argument("--pairs", type=int, default=3, help="interleaved lpreg/TRL pairs per thread count")
    ap.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each run")
    ap.add_argument("--steps", type=int, default=8, help="measured steps per run (after the warm-up)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("vs_trl.md")), help="Markdown table file")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run before it counts as hung")
    ap.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, int(args.threads))))
        return
    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit("vs_trl needs trl: pip install -e '.[bench]'")
    threads = [int(t) for t in args.threads.split(",")]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs, loads = [], {t: [] for t in threads}
    for t in threads:
        for i in range(args.pairs):
            loads[t].append(os.getloadavg()[0])
            for system in SYSTEMS:
                run = run_one(system, t, args.warmup + args.steps, args.timeout)
                runs.append(run)
                med = statistics.median(r["step"] for r in run["rows"][args.warmup:])
                print(f"threads {t} pair {i + 1} {system}: median {med:.3f} s/step (load {loads[t][-1]:.1f})",
                      file=sys.stderr)
    summary = summarize(runs, args.warmup)
    _, _, path, _ = policy_and_prompts(1)
    dims = model_dims(path)
    shapes = summary[("lpreg", threads[0])]["shapes"]
    prompt = statistics.fmean(s[0] for s in shapes)
    response = statistics.fmean(s[1] for s in shapes)
    flops = step_flops(dims, PROMPTS * GROUP, prompt, response)
    rows = PROMPTS * GROUP // 2 * round(prompt + response)  # positions of one mini-batch's forward
    rates = {t: (matmul_rate(dims, rows, t), matmul_rate(dims, PROMPTS * GROUP, t)) for t in threads}
    loads["matmul"] = [os.getloadavg()[0]]
    table = markdown(summary, loads, threads, args.warmup, args.pairs, flops, rates, started)
    Path(args.out).write_text(table)
    print(table)


if __name__ == "__main__":
    main()

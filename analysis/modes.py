"""Which answer mode a trained policy picks, problem by problem: greedy decodes of each run's last checkpoint on its
evaluation split, once with the policy's own choice at the decision point and once with the spark forced, grouped by
the length of the answer.

    python analysis/modes.py <multirun or job folder> [more folders] [--out FILE.md]

On the spark task the answer's length separates the problems whose sum carries into a new digit (an answer one digit
longer than the operands) from the rest, which is where the two modes differ. Per run and group: the problems, greedy
accuracy, the share decoded in the spark mode, accuracy within each mode, and accuracy with the spark forced (on the
run's forced set: the first ``task.n_forced`` problems of the split). The decodes run through the run's own rollout
engine at temperature 0, as the held-out evaluation does, so the greedy accuracy over all groups equals the run's last
``eval/<task>/greedy``. Runs of tasks without a decision point or without a checkpoint are listed and skipped.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from functools import partial
from pathlib import Path

from omegaconf import OmegaConf

from analysis.load import job_folders
from lpreg.mdtable import md_table

COLUMNS = ["run", "answer digits", "problems", "greedy", "spark share", "acc | spark", "acc | direct", "spark forced"]


def run_config(job: Path):
    """The run's config object, composed again from the overrides Hydra saved in its folder."""
    from lpreg.harness.config import compose_config

    return compose_config(OmegaConf.to_container(OmegaConf.load(job / ".hydra" / "overrides.yaml")))


def last_checkpoint(job: Path) -> Path | None:
    steps = sorted((job / "checkpoints").glob("step_*"))
    return steps[-1] if steps else None


def mode_rows(job: Path) -> list[list]:
    """The table's rows for one run: one per answer length, then all problems."""
    from lpreg.native.eval import generate_graded
    from lpreg.native.models import load_pretrained
    from lpreg.native.rollout import build_rollout, encode_prompts
    from lpreg.rewards import RewardGrader
    from lpreg.tasks import build_task
    from lpreg.tasks.spark import FORCED

    cfg, ckpt = run_config(job), last_checkpoint(job)
    task = build_task(cfg.task)
    spark = task.decision.token if task.decision else None
    if spark is None or ckpt is None:
        raise LookupError("no decision point" if spark is None else "no checkpoint")
    model, tokenizer = load_pretrained(ckpt)
    sets = {es.source: es.problems for es in task.eval_sets(cfg.eval.split)}
    own = sets[task.name]
    forced = {p.prompt[: -len(spark)]: p for p in sets.get(FORCED, [])}
    longest = max(len(p.prompt) for p in own) + len(spark)
    engine = build_rollout(cfg.rollout, model, tokenizer, str(ckpt), longest + cfg.task.max_response_len, cfg.seed)
    encode = partial(encode_prompts, tokenizer, max_len=cfg.task.max_prompt_len)

    def greedy(problems):  # (rewards, texts), decoded as the held-out evaluation decodes greedy sources
        return generate_graded(engine, grader, encode, problems, [0] * len(problems), cfg.task.max_response_len,
                               0.0, cfg.eval.batch_size)

    with RewardGrader(task, cfg.task) as grader:
        rewards, texts = greedy(own)
        forced_ok = dict(zip(forced, greedy(list(forced.values()))[0]))
    groups = defaultdict(list)
    for p, text, reward in zip(own, texts, rewards):
        groups[len(p.answer)].append((p, text.startswith(spark), reward))
    name = f"{cfg.arm or cfg.regularizer.name} s{cfg.seed}"
    return [row(name, str(k), groups[k], forced_ok) for k in sorted(groups)] + \
        [row(name, "all", [x for k in sorted(groups) for x in groups[k]], forced_ok)]


def row(name: str, label: str, items: list[tuple], forced_ok: dict[str, float]) -> list:
    def mean(xs):
        xs = list(xs)
        return f"{sum(xs) / len(xs):.3f}" if xs else "–"

    return [name, label, len(items), mean(r for _, _, r in items), mean(s for _, s, _ in items),
            mean(r for _, s, r in items if s), mean(r for _, s, r in items if not s),
            mean(forced_ok[p.prompt] for p, _, _ in items if p.prompt in forced_ok)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, help="write the table here too (markdown)")
    args = ap.parse_args(argv)
    rows, skipped = [], []
    jobs = job_folders(args.folders)
    for i, job in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {job}", file=sys.stderr, flush=True)
        try:
            rows += mode_rows(job)
        except LookupError as why:
            skipped.append(f"{job}: {why}")
    table = md_table(COLUMNS, rows)
    print(table)
    for s in skipped:
        print(f"skipped {s}", file=sys.stderr)
    if args.out:
        args.out.write_text(table.rstrip("\n") + "\n")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())

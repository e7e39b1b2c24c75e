"""The run's task as verl's parquet files: the training prompts and the held-out sets, from our shipped JSONL.

One row per problem, in verl's RL dataset layout: ``data_source`` (the problem's source, so verl reports held-out
accuracy per source under the same names as the native trainer), ``prompt`` (one user message holding the task's
prompt text, already in the task's template; ``lpreg/verl/config.py`` makes verl send it verbatim), ``ability``
(the task's name),
``reward_model`` (``{"style": "rule", "ground_truth": <normalized answer>}``) and ``extra_info`` (split, index).
The problems come from the task itself (``lpreg.tasks.build_task``), so ``task.train_file``, ``task.eval_files``,
``task.max_train`` and ``task.max_eval`` mean what they mean for the native trainer.

Files are written to a temporary name and renamed, so an interrupted run never leaves a half-written parquet.
"""

from __future__ import annotations

import os
from pathlib import Path

from lpreg.tasks import build_task


def rows(problems, split: str, ability: str) -> list[dict]:
    return [{"data_source": p.source, "prompt": [{"role": "user", "content": p.prompt}], "ability": ability,
             "reward_model": {"style": "rule", "ground_truth": p.answer},
             "extra_info": {"split": split, "index": i}} for i, p in enumerate(problems)]


def _write(records: list[dict], path: Path) -> None:
    import pandas as pd

    tmp = path.with_name(path.name + ".tmp")
    try:
        pd.DataFrame.from_records(records).to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(task_cfg, out_dir: Path) -> dict[str, Path]:
    """``train.parquet`` and ``val.parquet`` of the task in ``out_dir``; returns their paths."""
    task = build_task(task_cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"train": out_dir / "train.parquet", "val": out_dir / "val.parquet"}
    _write(rows(task.train_problems(), "train", task_cfg.name), paths["train"])
    _write(rows([p for es in task.eval_sets("test") for p in es.problems], "test", task_cfg.name), paths["val"])
    return paths

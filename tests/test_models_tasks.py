"""Tokenizer, tiny model save/load, task rewards and math grading."""

import torch
from conftest import compose_cfg

from lpreg.native.models import build_char_tokenizer, build_tiny_model, load_pretrained
from lpreg.tasks import build_task
from lpreg.tasks.math import grade, last_boxed


def test_tokenizer_round_trip_and_save_load(tmp_path):
    tok = build_char_tokenizer()
    text = "07+45=52"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == text
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.encode(text, add_special_tokens=False) == ids and again.padding_side == "left"


def test_tiny_model_save_load_round_trip(tmp_path):
    cfg = compose_cfg().model
    tok = build_char_tokenizer()
    model = build_tiny_model(cfg, len(tok), seed=0)
    assert 0.4e6 < sum(p.numel() for p in model.parameters()) < 0.7e6
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, tok2 = load_pretrained(tmp_path)
    x = torch.tensor([tok.encode("07+45=", add_special_tokens=False)])
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)


def test_bad_model_path_gives_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="model.path"):
        load_pretrained(tmp_path / "missing")


def test_arithmetic_reward_and_splits():
    task = build_task(compose_cfg().task)
    p = task.train_problems()[0]
    a, b = int(p.prompt[:2]), int(p.prompt[3:5])
    assert p.prompt == f"{a:02d}+{b:02d}=" and p.answer == str(a + b)
    assert task.reward(p.answer, p, finished=True) == 1.0
    assert task.reward(str(a + b + 1), p, finished=True) == 0.0  # wrong
    assert task.reward(p.answer, p, finished=False) == 0.0  # missing end token
    assert task.reward("x+=", p, finished=True) == 0.0  # garbage
    test = task.eval_sets("test")[0].problems
    assert len(test) == 500 and not {q.prompt for q in test} & {q.prompt for q in task.train_problems()}


def test_math_grading():
    assert last_boxed(r"so \boxed{1} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert grade(r"... \boxed{\frac{1}{2}}", "0.5") == 1.0
    assert grade(r"... \boxed{ 3 }", "3") == 1.0
    assert grade(r"the answer is 3", "3") == 0.0  # no box, no score
    assert grade(r"\boxed{4}", "3") == 0.0


def test_math_task_reads_the_shipped_data():
    cfg = compose_cfg(["task=math", "task.max_eval=3", "task.max_train=5"])
    task = build_task(cfg.task)
    sets = {s.source: s for s in task.eval_sets("test")}
    assert set(sets) == {"aime24", "aime25", "math500", "minerva", "olympiadbench"}
    assert sets["aime24"].protocol == "sampled" and sets["aime24"].samples == 16 and sets["math500"].protocol == "greedy"
    p = task.train_problems()[0]
    assert "\\boxed{}" in p.prompt and task.reward(f"\\boxed{{{p.answer}}}", p, True) == 1.0


def test_warmup_builds_once_and_is_cached(tmp_path):
    from lpreg.native.models import ASSETS, tiny_policy_path

    cfg = compose_cfg(["task.warmup_steps=20"])
    task = build_task(cfg.task)
    path = tiny_policy_path(cfg.model, task, cache_dir=tmp_path)
    assert path.parent == tmp_path and (path / "warmup.json").exists()
    mtime = (path / "model.safetensors").stat().st_mtime
    assert tiny_policy_path(cfg.model, task, cache_dir=tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime == mtime  # not rebuilt
    default = compose_cfg()
    assert tiny_policy_path(default.model, build_task(default.task)).parent == ASSETS  # the shipped warm-up

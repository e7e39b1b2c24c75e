"""The spark task, its decision-point metrics, the positive control's loss, and the records of acted-on tokens."""

import json
import math

import pytest
import torch
from conftest import compose_cfg

from lpreg.core.losses import REGULARIZERS, LossInputs
from lpreg.core.losses.control import SparkFloorConfig
from lpreg.core.losses.lpreg import LpRegConfig, selection
from lpreg.core.metrics import decision_metrics
from lpreg.core.reduce import results
from lpreg.native import decision
from lpreg.native.models import build_char_tokenizer, warmup_key
from lpreg.native.rollout import Generation
from lpreg.native.tokenlog import ActedTokens
from lpreg.tasks import build_task
from lpreg.tasks.spark import FORCED, final_answer, longest_response, scratchpad, spark_response


def test_responses_of_both_modes_and_their_reward():
    assert scratchpad(457, 386, 3) == "13,14,08" and spark_response(457, 386, 3) == "?13,14,08:843"
    assert spark_response(999, 999, 3) == "?18,19,19:1998" and longest_response(3) == 15
    assert final_answer("?13,14,08:843") == "843" and final_answer("843") == "843"
    cfg = compose_cfg(["task=spark"]).task
    task = build_task(cfg)
    problem = task.train_problems()[0]
    a, b = (int(x) for x in problem.prompt.rstrip("=").split("+"))
    assert task.reward(str(a + b), problem, True) == 1.0 and task.reward(str(a + b), problem, False) == 0.0
    assert task.reward(spark_response(a, b, cfg.digits), problem, True) == 1.0
    assert task.reward(spark_response(a, b, cfg.digits)[:-1] + "x", problem, True) == 0.0
    assert cfg.max_response_len >= longest_response(cfg.digits)
    assert task.reward("?99,99,99:" + str(a + b), problem, True) == 1.0  # the scratchpad is not graded


def test_splits_forced_set_and_warm_up_share():
    cfg = compose_cfg(["task=spark", "task.spark_unfinished=0"]).task  # every practice demonstration whole
    task = build_task(cfg)
    train = {p.prompt for p in task.train_problems()}
    val, test = ({p.prompt for p in task.eval_sets(s)[0].problems} for s in ("validation", "test"))
    assert len(val) == cfg.n_validation and len(test) == cfg.n_test
    assert not (train & val) and not (train & test) and not (val & test)
    main, forced = task.eval_sets("test")
    assert forced.source == FORCED and forced.diagnostic and len(forced.problems) == cfg.n_forced
    assert all(p.prompt.endswith("=?") for p in forced.problems)
    p = forced.problems[0]
    a, b = (int(x) for x in p.prompt[:-2].split("+"))
    assert task.reward(spark_response(a, b, cfg.digits)[1:], p, True) == 1.0  # a forced response continues the spark
    assert not any(q.endswith("?") for q, _ in task.sft_examples("base"))  # practice only in the seeded stage
    # the ceiling measurement trains on the same problems with the spark forced, graded as the forced set is
    ceiling = build_task(compose_cfg(["task=spark", "task.spark_unfinished=0", "task.train_forced=true"]).task)
    assert [q.prompt for q in ceiling.train_problems()] == [q.prompt + "?" for q in task.train_problems()]
    q = ceiling.train_problems()[0]
    a, b = (int(x) for x in q.prompt[:-2].split("+"))
    assert ceiling.reward(spark_response(a, b, cfg.digits)[1:], q, True) == 1.0
    assert ceiling.reward(str(a + b), q, True) == 0.0  # a forced response is read after the spark
    assert ceiling.sft_examples("seeded") == task.sft_examples("seeded")  # the same warm-up
    demos = task.sft_examples("seeded")
    assert sum(t.startswith("?") for _, t in demos) / len(demos) == pytest.approx(cfg.spark_demos, abs=0.005)
    practice = [(q, t) for q, t in demos if q.endswith("?")]  # the mode after a spark given in the prompt
    assert len(practice) / len(demos) == pytest.approx(cfg.spark_practice, abs=0.005)
    q, t = practice[0]
    a, b = (int(x) for x in q[:-2].split("+"))
    assert t == spark_response(a, b, cfg.digits)[1:]
    unfinished = build_task(compose_cfg(["task=spark", "task.spark_unfinished=0.8"]).task)
    demos = unfinished.sft_examples("seeded")
    practice = [(q, t) for q, t in demos if q.endswith("?")]
    stopped = [(q, t) for q, t in practice if ":" not in t]  # the column sums, then the end: no answer
    assert len(stopped) / len(practice) == pytest.approx(0.8, abs=0.01)
    for q, t in stopped[:50]:
        a, b = (int(x) for x in q[:-2].split("+"))
        assert t == scratchpad(a, b, cfg.digits) and unfinished.reward(t, unfinished._problem(a, b, FORCED), True) == 0
    # each stopped one comes with the answer read off its sums, given in the prompt
    readouts = {q: t for q, t in demos if q.endswith(":")}
    assert len(readouts) == len(stopped)
    for q, t in stopped[:50]:
        a, b = (int(x) for x in q[:-2].split("+"))
        assert readouts[q + t + ":"] == str(a + b)
    with pytest.raises(ValueError, match="task.spark_unfinished=0.8 needs task.spark_mode=columns"):
        build_task(compose_cfg(["task=spark", "task.spark_unfinished=0.8", "task.spark_mode=reversed"]).task)
    none = build_task(compose_cfg(["task=spark", "task.spark_demos=0", "task.spark_practice=0"]).task)
    # the variant without a spark mode never shows the spark
    assert not any("?" in q + t for stage in ("base", "seeded") for q, t in none.sft_examples(stage))
    # the control variant never shows it as a response, but practises its mode behind a spark in the prompt, and
    # shows the direct mode as often as the shipped task does
    def shares(overrides):
        demos = build_task(compose_cfg(["task=spark", *overrides]).task).sft_examples("seeded")
        return [sum(map(f, demos)) / len(demos) for f in (lambda d: d[1].startswith("?"), lambda d: d[0].endswith("?"),
                                                          lambda d: "?" not in d[0] + d[1])]
    (spark, practice, direct), (spark0, practice0, direct0) = shares([]), shares(["task.spark_demos=0"])
    assert spark > 0.005 and spark0 == 0 and practice0 == pytest.approx(practice, abs=0.01)
    assert direct0 == pytest.approx(direct, abs=0.01)


def stage_keys(overrides: list[str]) -> dict[str, str]:
    """The warm-up cache key of each stage of the spark task under ``overrides``."""
    cfg = compose_cfg(["task=spark", *overrides])
    task = build_task(cfg.task)
    phases = [*task.warmup_phases(), ("seeded", cfg.model.seed_steps, cfg.task.warmup_lr)]
    return {p[0]: warmup_key(cfg.model, task, phases[: i + 1], 0) for i, p in enumerate(phases)}


def test_a_warm_up_stage_is_keyed_by_its_own_demonstrations():
    shipped = stage_keys([])
    # a practice-only setting rebuilds the practice and seeded stages, not the base stage it does not change
    for practice_only in ("task.spark_unfinished=0", "task.spark_practice=0.5"):
        changed = stage_keys([practice_only])
        assert changed["base"] == shipped["base"]
        assert changed["practice"] != shipped["practice"] and changed["seeded"] != shipped["seeded"]
    # the control variants show the spark less, so they warm up models of their own from the base stage on
    for control in (["task.spark_demos=0"], ["task.spark_demos=0", "task.spark_practice=0"]):
        assert stage_keys(control)["base"] != shipped["base"]
    assert stage_keys(["task.seed=7"])["base"] != shipped["base"]  # other problems
    assert stage_keys(["task.warmup_lr=1e-3"])["base"] != shipped["base"]  # the phase, not only its data


def test_decision_metrics_of_a_rollout():
    tok = build_char_tokenizer()
    spark = decision.spark_id(build_task(compose_cfg(["task=spark"]).task), tok)
    ids = torch.tensor([[spark, 5, 6], [7, 8, 0], [spark, 9, 0], [4, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 0, 0]], dtype=torch.float)
    gen = Generation(torch.zeros(4, 1, dtype=torch.long), torch.ones(4, 1), ids, mask, torch.ones(4, dtype=torch.bool),
                     ["", "", "", ""])
    flat_logp = torch.full((int(mask.sum()),), -9.0)
    flat_logp[decision.first_positions(mask)] = torch.log(torch.tensor([0.5, 0.1, 0.3, 0.1]))
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    m = decision.rollout_metrics(spark, flat_logp, gen, rewards, torch.tensor([0.5, -0.5, -0.5, 0.5]))
    assert m["spark/prob"] == pytest.approx(0.25) and m["spark/usage"] == 0.5
    assert m["spark/acc_spark"] == 0.5 and m["spark/acc_direct"] == 0.5 and m["spark/neg_adv_frac"] == 0.5
    assert math.isnan(decision_metrics(torch.ones(2), torch.zeros(2), torch.ones(2), torch.ones(2))["spark/acc_spark"])
    assert decision.rollout_metrics(None, flat_logp, gen, rewards, rewards) == {}


def _inputs(spark_logp, grad=True):
    """Two responses of 3 tokens; the control reads ``spark_log_prob`` at position 0."""
    lp = torch.log(torch.tensor([[0.5, 0.9, 0.9], [0.5, 0.9, 0.9]]))
    target = torch.tensor(spark_logp, dtype=torch.float).requires_grad_(grad)
    return LossInputs(lp, lp, torch.tensor([[1.0] * 3, [-1.0] * 3]), torch.ones(2, 3),
                      new={"spark_log_prob": target}), target


def test_the_floor_lifts_the_spark_only_below_it():
    loss = REGULARIZERS.get("spark_floor").loss
    cfg = SparkFloorConfig(floor=0.2, coef=1.0)
    below = math.log(0.05)
    inp, target = _inputs([[below, below, below], [math.log(0.5)] * 3])
    total, m = loss(inp, cfg)
    m = results(m)
    assert m["control/active"] == 1.0  # only response 1's decision point is below the floor
    assert m["loss/reg"] == pytest.approx((math.log(0.2) - below) / 2)  # mean over the 2 responses
    total.backward()
    g = target.grad
    assert g[0, 0] == pytest.approx(-0.5) and g[0, 1:].abs().sum() == 0 and g[1].abs().sum() == 0  # lifts log p up
    with pytest.raises(ValueError, match="task=spark"):
        loss(LossInputs(inp.log_prob, inp.old_log_prob, inp.advantages, inp.response_mask), cfg)
    assert REGULARIZERS.get("spark_floor").control and not REGULARIZERS.get("lpreg").control


def test_acted_token_records_are_the_losss_own_selection():
    torch.manual_seed(0)
    tok = build_char_tokenizer()
    B, R = 6, 5
    lp = torch.log(torch.rand(B, R) * 0.9 + 0.05)
    proxy = lp + torch.where(torch.rand(B, R) < 0.5, 0.3, -0.3)  # half the tokens have π_proxy > π_θ
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0, -1.0])[:, None].expand(B, R)
    mask = torch.ones(B, R)
    cfg = LpRegConfig(rho=0.5)
    inp = LossInputs(lp, lp, adv, mask, old={"proxy_log_prob": proxy})
    _, metrics = REGULARIZERS.get("lpreg").loss(inp, cfg)
    tokens = torch.randint(3, 20, (B, R))
    spark = int(tokens[1, 0])

    class MB:
        rows = slice(0, B)

    rec = ActedTokens(REGULARIZERS.get("lpreg"), cfg, tok, spark, torch.tensor([True, False] * 3), limit=100)
    share = results(rec.observe(inp, MB, tokens, 0))["spark/reg_share"]
    reg = selection(inp, cfg)[1]
    rows = rec.sample(3)  # fewer acted-on tokens than the limit: every one, in rollout order
    assert len(rows) == int(reg.sum()) == results(metrics)["lpreg/regularized"] > 0
    for row, (i, t) in zip(rows, reg.nonzero().tolist()):
        assert row["token"] == tok.decode([int(tokens[i, t])]) and row["position"] == t
        assert row["adv_sign"] == -1 and row["correct"] == (i % 2 == 0)
        assert row["p"] == pytest.approx(lp[i, t].exp().item(), abs=1e-6)
        assert row["p_proxy"] == pytest.approx(proxy[i, t].exp().item(), abs=1e-6) and row["p_proxy"] > row["p"]
    assert share == pytest.approx(float((reg & (tokens == spark)).sum()) / float(reg.sum()))
    rec.limit = 2
    assert len(rec.sample(3)) == 2 and rec.sample(3) == rec.sample(3)  # a seeded sample


def test_modes_analysis_decodes_as_the_runs_own_evaluation(tmp_path):
    """``analysis/modes.py`` on a real (short) spark run: its greedy and forced accuracies over all problems are the
    run's last evaluation, and its groups partition the split."""
    from conftest import FAST, run_cli

    from analysis.modes import main

    # one-digit sums, the spark on 40% of the demonstrations: a policy that uses both modes after a short warm-up
    run_cli([*FAST, "task=spark", "task.digits=1", "task.max_response_len=7", "task.warmup_steps=300",
             "task.practice_steps=100", "task.spark_demos=0.4", "task.spark_unfinished=0", "task.n_test=20",
             "task.n_validation=10", "task.n_forced=10", "model.seed_steps=0", "trainer.steps=2", "eval.samples=0",
             f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path)
    last = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert main([str(tmp_path / "run"), "--out", str(tmp_path / "modes.md")]) == 0
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in (tmp_path / "modes.md").read_text().splitlines()[2:]]
    *groups, total = rows
    assert total[1] == "all" and int(total[2]) == 20 == sum(int(r[2]) for r in groups)
    assert [r[1] for r in groups] == ["1", "2"]  # sums without and with a carry into a second digit
    assert float(total[3]) == pytest.approx(last["eval/spark/greedy"], abs=5e-4)
    assert float(total[7]) == pytest.approx(last["eval/spark_forced/greedy"], abs=5e-4)

"""The mini-Countdown: every enumerated solution verifies, near misses fail, equivalent solutions count once."""

import itertools

import pytest
from conftest import compose_cfg

from lpreg.tasks import build_task
from lpreg.tasks.countdown import canonical, check, parse, prompt, render, solutions, trees

PROBLEMS = [((3, 5, 7), 22), ((2, 3, 4, 6), 24), ((1, 1, 9), 9), ((8, 4, 2), 1)]


@pytest.mark.parametrize(("numbers", "target"), PROBLEMS)
def test_every_enumerated_solution_verifies(numbers, target):
    found = solutions(tuple(sorted(numbers)), target)
    assert found
    for key, text in found.items():
        tree = check(text, numbers, target)
        assert tree is not None and canonical(tree) == key  # the rendering parses back to the same solution
    # the enumeration is complete: brute force over every tree gives the same canonical set
    brute = {canonical(t) for t in trees(tuple(sorted(numbers))) if check(render(t), numbers, target) is not None}
    assert brute == set(found)


@pytest.mark.parametrize("response", [
    "3*5+8",        # a number not given
    "3*5",          # a number missing
    "3*5+7+7",      # a number used twice
    "35+7",         # digits glued into a new number
    "3*5-7",        # wrong value
    "3*(5+7",       # unbalanced
    "3*5+7)",       # trailing parenthesis
    "3 *5+7",       # whitespace
    "7/(5-5)+3",    # division by zero (and wrong numbers)
    "",             # empty
    "3*5+7=22",     # the equation, not the expression
    "(" * 40 + "3*5+7" + ")" * 40,  # longer than any legitimate answer
])
def test_near_misses_fail(response):
    assert check(response, (3, 5, 7), 22) is None


def test_division_by_zero_is_wrong_not_an_error():
    assert check("5/(3-3)*7", (3, 3, 5, 7), 0) is None and parse("5/(3-3)*7") is not None


def test_equivalent_expressions_are_one_solution():
    a, b, c = parse("3*5+7"), parse("7+5*3"), parse("(5*3)+7")
    assert canonical(a) == canonical(b) == canonical(c)
    assert canonical(parse("1-(2-3)")) == canonical(parse("1-2+3")) == canonical(parse("3+1-2"))
    assert canonical(parse("8/(4/2)")) == canonical(parse("8*2/4"))
    assert canonical(parse("3*5+7")) != canonical(parse("3+5*7"))


def test_fewest_parentheses_round_trip():
    for t in itertools.islice(trees((2, 3, 4, 6)), 500):
        assert canonical(parse(render(t))) == canonical(t)


def test_task_splits_rewards_and_breadth():
    cfg = compose_cfg(["task=countdown"]).task
    task = build_task(cfg)
    train = {p.prompt for p in task.train_problems()}
    val = {p.prompt for p in task.eval_sets("validation")[0].problems}
    test = {p.prompt for p in task.eval_sets("test")[0].problems}
    assert len(train) > 1000 and len(val) == cfg.n_validation and len(test) == cfg.n_test
    assert not (train & val) and not (train & test) and not (val & test)
    problem = task.eval_sets("test")[0].problems[0]
    numbers, target = [int(x) for x in problem.prompt.split(":")[0].split(",")], int(problem.answer)
    found = solutions(tuple(sorted(numbers)), target)
    text = next(iter(found.values()))
    assert task.reward(text, problem, True) == 1.0 and task.reward(text, problem, False) == 0.0
    assert task.solution_key(text, problem) in found and task.solution_count(problem) == len(found)
    assert task.solution_key("1+", problem) is None
    for prompt_text, demo in task.sft_examples()[:50]:  # each demonstration is a correct solution
        nums, tgt = prompt_text.rstrip("=").split(":")
        assert check(demo, tuple(int(x) for x in nums.split(",")), int(tgt)) is not None
    assert prompt((3, 5, 7), 22) == "3,5,7:22="


def test_a_problem_space_too_large_to_enumerate_is_refused_before_any_work():
    from lpreg.harness.config import CountdownTaskConfig
    from lpreg.tasks.countdown import Countdown

    with pytest.raises(ValueError, match=r"task.max_number=99 with task.n_numbers=4 gives 4,249,575 sets"):
        Countdown(CountdownTaskConfig(n_numbers=4, max_number=99))


def test_the_enumeration_counts_every_expression_and_finds_known_solutions():
    from lpreg.tasks.countdown import trees

    # orderings x binary tree shapes (Catalan) x operators: 2 x 1 x 4, 6 x 2 x 16, 24 x 5 x 64
    assert [len(list(trees(n))) for n in [(1, 2), (1, 2, 3), (1, 2, 3, 4)]] == [8, 192, 7680]
    # hand-checked: 8/(4/2) = 4 and 8/4/2 = 1 are different solutions, 8/(4/2) and 8*2/4 the same one
    assert check("8/(4/2)", (8, 4, 2), 4) is not None and check("8/4/2", (8, 4, 2), 4) is None
    assert canonical(check("8/(4/2)", (8, 4, 2), 4)) == canonical(check("8*2/4", (8, 4, 2), 4))
    # 6 from 1, 2, 3: a sum, a product, and 2*3/1 (dividing by 1 is a computation of its own; 3/(1/2) is the same one)
    assert set(solutions((1, 2, 3), 6)) == {canonical(check(e, (1, 2, 3), 6)) for e in ["1+2+3", "1*2*3", "2*3/1"]}

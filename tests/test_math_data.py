"""Math data and grading: the shipped files are task=math's defaults, the Hub conversion, gold normalization, grade."""

import fnmatch
import hashlib
import json
import re

import pytest
from conftest import ROOT, compose_cfg

from lpreg.data import MATH_DATA, resolve_path
from lpreg.data import prepare as prep
from lpreg.tasks import build_task
from lpreg.tasks.math import grade, normalize_answer, read_jsonl

SHIPPED = ROOT / "lpreg" / "data" / "math"

# (gold as the benchmark writes it, the model's boxed answer, expected reward); every answer format of the shipped
# benchmarks: AIME integers with leading zeros, fractions, radicals, intervals, tuples, several answers, units,
# e-notation, text, multiple choice, matrices, degrees, currency, complex numbers, equations, expressions.
GRADE_TABLE = [
    ("025", "25", 1.0),  # AIME 2024 leading zero
    ("025", "026", 0.0),
    ("113", "113", 1.0),  # DAPO integer
    ("\\frac{14}{3}", "\\dfrac{14}{3}", 1.0),
    ("\\frac{14}{3}", "4.6667", 0.0),  # rounded to 4 decimals is not the fraction
    ("3\\sqrt{13}", "\\sqrt{117}", 1.0),
    ("\\frac{1}{2 n+2}", "\\frac{1}{2(n+1)}", 1.0),
    ("2n-2", "2(n-1)", 1.0),
    ("\\binom{2n}{n}", "\\frac{(2n)!}{(n!)^2}", 1.0),
    ("(-\\infty, 0]", "(-\\infty,0)", 0.0),  # open vs closed end
    ("(3,4]", "(3, 4]", 1.0),
    ("t(0,4]", "(0,4]", 1.0),  # OlympiadBench interval glued to its variable
    ("(-\\infty, 0) \\cup\\{1\\}.", "(-\\infty,0)\\cup\\{1\\}", 1.0),  # OlympiadBench trailing period
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", 1.0),
    ("(6,31,-1)", "(6,31,1)", 0.0),
    ("69,84", "84, 69", 1.0),  # OlympiadBench several answers, any order
    ("69,84", "69", 0.0),
    ("\\frac{41}{12}", "\\frac{41}{12} \\text{ km}", 1.0),  # OlympiadBench unit kept outside the answer
    ("5.4 \\text{ cents}", "5.4", 1.0),
    ("4.2", "4.2\\%", 1.0),
    ("4.5e33", "4.5 \\times 10^{33}", 1.0),  # Minerva e-notation
    ("4.5e33", "4.5e33", 1.0),
    ("4.5e33", "4.6 \\times 10^{33}", 0.0),
    ("4.5e33", "4.5", 0.0),
    ("1.77e-6", "1.77 \\cdot 10^{-6}", 1.0),
    ("-1./3", "-\\frac{1}{3}", 1.0),  # Minerva number with a bare point
    ("np.arcsin(10/13)", "\\arcsin\\left(\\frac{10}{13}\\right)", 1.0),
    ("x^{\\prime}+\\frac{r}{V} x-r c=0", "x' + \\frac{r x}{V} - r c = 0", 1.0),
    ("\\lambda_{\\text {red}} / \\sqrt{2}", "\\frac{\\lambda_{red}}{\\sqrt{2}}", 1.0),
    ("\\text{Evelyn}", "Evelyn", 1.0),
    ("\\text{Evelyn}", "Bob", 0.0),
    ("\\text{(C)}", "C", 1.0),
    ("\\text{(C)}", "D", 0.0),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}",
     "\\begin{bmatrix} -\\frac{1}{3} \\\\ \\frac{2}{3} \\end{bmatrix}", 1.0),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}", "\\begin{pmatrix} 1/3 \\\\ 2/3 \\end{pmatrix}", 0.0),
    ("90^\\circ", "90", 1.0),
    ("\\$32,\\!348", "32348", 1.0),
    ("6+9i", "9 i + 6", 1.0),
    ("6-5i", "6+5i", 0.0),
    ("y = 2x + 3", "2x+3", 1.0),
    ("", "", 0.0),  # an empty gold and an empty prediction never score
    ("3", "", 0.0),
    ("", "3", 0.0),
]


@pytest.mark.parametrize("gold,output,expected", GRADE_TABLE)
def test_grade_table(gold, output, expected):
    assert grade(f"So the answer is \\boxed{{{output}}}.", gold) == expected
    assert grade(f"So the answer is \\boxed{{{output}}}.", normalize_answer(gold)) == expected  # as loaded


def test_grade_counts_only_the_last_box():
    assert grade("\\boxed{3} no wait, \\boxed{4}", "3") == 0.0
    assert grade("\\boxed{4} no wait, \\boxed{\\frac{3}{1}}", "3") == 1.0
    assert grade("the answer is 3", "3") == 0.0  # no box
    assert grade("\\boxed{3", "3") == 0.0  # unbalanced box
    assert grade("\\boxed{\\boxed{}}", "\\boxed{}") == 0.0


def test_normalize_answer_rewrites_benchmark_notation_and_is_idempotent():
    cases = {"4.5e33": "4.5 \\times 10^{33}", "1.77e-6": "1.77 \\times 10^{-6}", "-1./3": "-1/3",
             "np.arcsin(10/13)": "\\arcsin(10/13)", "(-\\infty, 0) \\cup\\{1\\}.": "(-\\infty, 0) \\cup\\{1\\}",
             "I(0) e^{-\\frac{t}{R C}}\n": "I(0) e^{-\\frac{t}{R C}}", "t(0,4]": "t \\in (0,4]",
             "m_{\\max }=n^{2}-n-1": "m_{max}=n^{2}-n-1", "E_1, E_2": "E_{1}, E_{2}", "y''=0": "y^{\\prime\\prime}=0",
             "\\$18.90": "\\$18.90", "e^{3}": "e^{3}", "3.5": "3.5", "f(x)=2 x": "f(x)=2 x"}
    for raw, want in cases.items():
        assert normalize_answer(raw) == want
        assert normalize_answer(want) == want


def test_every_shipped_e_notation_gold_grades_its_latex_form():
    """The Minerva rows behind issue 11: each e-notation gold accepts ``m \\times 10^{e}`` and itself once loaded."""
    rows = [json.loads(line) for line in (SHIPPED / "minerva.jsonl").read_text().splitlines()]
    enotation = [r["answer"] for r in rows if re.fullmatch(r"-?[\d.]+e-?\d+", r["answer"])]
    assert len(enotation) == 58
    gold_of = {p.answer for p in read_jsonl(SHIPPED / "minerva.jsonl")}
    for raw in enotation:
        mantissa, exponent = raw.split("e")
        gold = normalize_answer(raw)
        assert gold in gold_of
        assert grade(f"\\boxed{{{mantissa} \\times 10^{{{int(exponent)}}}}}", gold) == 1.0, raw
        assert grade(f"\\boxed{{{raw}}}", gold) == 1.0, raw


def test_shipped_data_are_the_defaults_and_match_their_readme():
    cfg = compose_cfg(["task=math", "task.max_eval=2", "task.max_train=3"])
    assert cfg.task.train_file == f"{MATH_DATA}/dapo_math_train_2000.jsonl"
    task = build_task(cfg.task)
    sets = {s.source: s for s in task.eval_sets("test")}
    assert list(sets) == ["aime24", "aime25", "math500", "minerva", "olympiadbench"]
    assert set(cfg.task.sampled_sources) <= set(sets)
    assert sets["aime24"].protocol == "sampled" and sets["aime24"].samples == 16 and sets["math500"].protocol == "greedy"
    assert len(task.train_problems()) == 3 and {p.source for p in task.train_problems()} == {"dapo_math"}
    readme = (SHIPPED / "README.md").read_text()
    listed = dict(re.findall(r"\| `(\w+\.jsonl)` \| [\d,]+ \| \w+ \| \d+ \| `([0-9a-f]{64})` \|", readme))
    assert sorted(listed) == sorted(p.name for p in SHIPPED.glob("*.jsonl"))
    for name, digest in listed.items():
        assert hashlib.sha256((SHIPPED / name).read_bytes()).hexdigest() == digest, name


def test_shipped_files_are_package_data():
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lpreg"]
    assert "data/math/*.jsonl" in globs
    for path in SHIPPED.iterdir():
        rel = str(path.relative_to(ROOT / "lpreg"))
        assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{rel} is not declared as package data"


def test_user_files_by_absolute_and_relative_path(tmp_path, monkeypatch):
    data = tmp_path / "mine"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    (data / "ev.jsonl").write_text(json.dumps({"problem": "2+2?", "answer": "4.", "data_source": "toy"}) + "\n")
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(["task=math", "task.train_file=mine/train.jsonl", f"task.eval_files=[{data / 'ev.jsonl'}]",
                       "task.sampled_sources=[toy]", "task.n_validation=0"])
    task = build_task(cfg.task)
    assert [p.answer for p in task.train_problems()] == ["2"] and task.train_problems()[0].source == "train"
    (evs,) = task.eval_sets("test")
    assert evs.source == "toy" and evs.protocol == "sampled" and evs.problems[0].answer == "4"


def test_missing_or_bad_data_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m lpreg.data prepare"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="python -m lpreg.data prepare"):
        read_jsonl(f"{MATH_DATA}/nope.jsonl")
    with pytest.raises(ValueError, match="pkg://<package>/"):
        resolve_path("pkg://lpreg")
    with pytest.raises(ValueError, match="no installed Python package"):
        resolve_path("pkg://no_such_pkg_xyz/a.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "p", "answer": "1"}) + "\n" + json.dumps({"problem": "q", "answer": " . "}))
    with pytest.raises(ValueError, match=r"bad.jsonl:2: empty 'answer'"):
        read_jsonl(bad)


# ---- python -m lpreg.data prepare, on rows in each Hub dataset's own layout -------------------------------------


def _dapo_row(uuid, problem, answer):
    return {"data_source": "math_dapo", "ability": "MATH", "prompt": [
        {"role": "user", "content": prep.DAPO_PREFIX + problem + prep.DAPO_SUFFIX}],
        "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"}, "extra_info": {"index": uuid}}


HUB_ROWS = {
    "dapo_math": [_dapo_row("u-1", "What is $1+1$?", "2"), _dapo_row("u-2", "Find $k+m$.", "7"),
                  _dapo_row("u-1", "What is $1+1$?", "2")],  # the hosted split repeats each problem
    "aime24": [{"id": 60, "problem": "Every morning Aya ...", "solution": "...", "answer": "204",
                "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_1", "year": "2024"},
               {"id": 61, "problem": "Let $N$ ...", "solution": "...", "answer": "025",
                "url": "https://artofproblemsolving.com/wiki/index.php/2024_AIME_II_Problems/Problem_12", "year": "2024"}],
    "aime25": [{"problem": "Find the sum of all integer bases $b>9$ ...", "answer": "70"}],
    "math500": [{"problem": "Convert the point $(0,3)$ ...", "solution": "...",
                 "answer": "\\left( 3, \\frac{\\pi}{2} \\right)",
                 "subject": "Precalculus", "level": 2, "unique_id": "test/precalculus/807.json"}],
    "minerva": [{"question": "Each of the two Magellan telescopes ...", "answer": "4.5e33"},
                {"question": "A problem without a usable answer", "answer": ""}],
    "olympiadbench": [{"id": 1606, "subfield": "Combinatorics", "context": None, "question": "Find all ...",
                       "solution": ["..."], "final_answer": ["$69$,$84$"], "is_multiple_answer": True, "unit": None,
                       "answer_type": "Numerical", "error": None}],
}


def test_prepare_converts_each_hub_layout(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prep, "load_rows", lambda source: (HUB_ROWS[source.name], len(HUB_ROWS[source.name])))
    assert prep.main(["prepare", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f"task.train_file={tmp_path / 'dapo_math_17k.jsonl'}" in printed and "task.eval_files=[" in printed
    rows = {name: [json.loads(line) for line in (tmp_path / s.filename).read_text().splitlines()]
            for name, s in prep.SOURCES.items()}
    for name, file_rows in rows.items():
        for row in file_rows:
            assert list(row)[:4] == ["id", "problem", "answer", "data_source"] and row["data_source"] == name
    assert [(r["id"], r["problem"], r["answer"]) for r in rows["dapo_math"]] == [
        ("dapo_math-00000", "What is $1+1$?", "2"), ("dapo_math-00001", "Find $k+m$.", "7")]
    assert [r["id"] for r in rows["aime24"]] == ["aime24-I-01", "aime24-II-12"] and rows["aime24"][1]["answer"] == "025"
    assert rows["aime25"][0]["id"] == "aime25-00"
    assert rows["math500"][0]["unique_id"] == "test/precalculus/807.json"
    assert [r["answer"] for r in rows["minerva"]] == ["4.5e33"]  # the empty answer is dropped
    assert "minerva" in printed and re.search(r"minerva\s+1\s+1\s", printed)
    assert rows["olympiadbench"][0]["answer"] == "69,84" and rows["olympiadbench"][0]["id"] == "olympiadbench-1606"
    sums = dict(line.split("  ")[::-1] for line in (tmp_path / "SHA256SUMS").read_text().splitlines())
    for source in prep.SOURCES.values():
        assert sums[source.filename] == hashlib.sha256((tmp_path / source.filename).read_bytes()).hexdigest()
    cfg = compose_cfg(["task=math", f"task.train_file={tmp_path / 'dapo_math_17k.jsonl'}",
                       f"task.eval_files=[{','.join(str(tmp_path / n) for n in ['aime24.jsonl', 'minerva.jsonl'])}]",
                       "task.sampled_sources=[aime24]", "task.n_validation=1"])
    task = build_task(cfg.task)
    assert [s.source for s in task.eval_sets("test")] == ["aime24", "minerva"]
    assert task.eval_sets("test")[1].problems[0].answer == "4.5 \\times 10^{33}"


def test_prepare_refuses_a_dapo_row_without_its_wrapper(tmp_path, monkeypatch):
    row = _dapo_row("u-9", "x", "1")
    row["prompt"][0]["content"] = "Solve: x"
    monkeypatch.setattr(prep, "load_rows", lambda source: ([row], 1))
    with pytest.raises(ValueError, match="instruction wrapper"):
        prep.prepare(tmp_path, ["dapo_math"])
    monkeypatch.setattr(prep, "load_rows", lambda source: ([{"problem": "no question column"}], 1))
    with pytest.raises(ValueError, match="math-ai/minervamath: rows have no column 'question'"):
        prep.prepare(tmp_path, ["minerva"])

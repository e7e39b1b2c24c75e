"""Grade every gold answer of the shipped math data against equivalent forms of itself, before and after normalization.

    python scripts/gold_sweep.py [FILE.jsonl ...]      # default: every file in lpreg/data/math/

For each row's raw ``answer`` g, the predictions are ``\\boxed{v}`` for each applicable rewrite v of g: g itself;
e-notation as ``m \\times 10^{e}`` and ``m \\cdot 10^{e}``; with a trailing period added (or the trailing
punctuation removed); without leading zeros (AIME ``025``); ``\\dfrac`` for ``\\frac``; LaTeX functions for
``np.`` ones; without a bare trailing point (``-1./3``); without stray ``$``; the text of ``\\text{...}``; without the
currency sign and thousands separator (``\\$32,\\!348``); without degree signs; with the row's ``unit`` appended;
primes as apostrophes; unbraced or plain-text subscripts; ``9 i`` for ``9i``; the right-hand side of ``x = ...``;
an interval without its variable (``t(0,4]``); ``bmatrix`` for ``pmatrix``; the letter of a ``\\text{(C)}`` choice;
a number without its ``\\text{ unit}``; ``a \\pm b`` as ``a+b, a-b``; ``0.5`` for ``.5``; ``\\sqrt{2}`` for ``\\sqrt2``;
and sympy's own LaTeX of the parsed (normalized) gold, a form that only math-verify, not string equality, can match.
Golds that math-verify parses to no sympy expression (so that only an identical string can match them) are counted
and listed too.

"before" grades the prediction's box against the raw gold with no normalization (the grader before this sweep);
"after" is ``grade`` against the gold as ``read_jsonl`` loads it (``normalize_answer``). Prints, per file and rewrite,
how many golds fail, then every failing (gold, rewrite) after normalization. math-verify's signal-based timeouts
need the main thread; a full run takes a few minutes on one core.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lpreg.tasks.math import _E_NOTATION, answers_match, grade, last_boxed, normalize_answer  # noqa: E402

DATA = ROOT / "lpreg" / "data" / "math"


def rewrites(gold: str, row: dict) -> dict[str, str]:
    """Forms of ``gold`` a correct model may write, by rewrite name (only the rewrites that change ``gold``)."""
    g = gold.strip()
    out = {"gold itself": gold}
    m = _E_NOTATION.fullmatch(g)
    if m:
        out["e-notation as \\times 10^"] = f"{m.group(1)} \\times 10^{{{int(m.group(2))}}}"
        out["e-notation as \\cdot 10^"] = f"{m.group(1)} \\cdot 10^{{{int(m.group(2))}}}"
    if re.search(r"[.;:]$", g):
        out["without trailing punctuation"] = g.rstrip(".;:").rstrip()
    else:
        out["with a trailing period"] = g + "."
    if re.fullmatch(r"0\d+", g):
        out["without leading zeros"] = str(int(g))
    if "\\frac" in g:
        out["\\dfrac for \\frac"] = g.replace("\\frac", "\\dfrac")
    if "np." in g:
        out["LaTeX for np. functions"] = g.replace("np.", "\\")
    if re.search(r"\d\.(?!\d)", g.rstrip(".")):
        out["without a bare point"] = re.sub(r"(\d)\.(?!\d)", r"\1", g)
    if re.search(r"(?<!\\)\$", g):
        out["without stray $"] = re.sub(r"(?<!\\)\$", " ", g)
    text = re.fullmatch(r"\\text\{([^{}]*)\}", g)
    if text:
        out["plain text"] = text.group(1)
    if "\\$" in g:
        out["without currency sign"] = g.replace("\\$", "").replace(",\\!", "").strip()
    if "\\circ" in g:
        out["without degree sign"] = re.sub(r"\^\{?\\circ\}?", "", g)
    if "^{\\prime}" in g:
        out["apostrophe primes"] = g.replace("^{\\prime}", "'")
    if re.search(r"_\{[A-Za-z0-9]\}", g):
        out["unbraced subscripts"] = re.sub(r"_\{([A-Za-z0-9])\}", r"_\1", g)
    if re.search(r"_\{\s*\\text", g):
        out["plain subscripts"] = re.sub(r"_\{\s*\\text\s*\{([^{}]*)\}\s*\}", r"_{\1}", g)
    if re.search(r"\di\b", g):
        out["spaced imaginary unit"] = re.sub(r"(\d)i\b", r"\1 i", g)
    equation = re.fullmatch(r"[A-Za-z](?:_\{[^{}]*\})?\s*=\s*([^=,]+)", g)
    if equation:
        out["right-hand side only"] = equation.group(1)
    interval = re.fullmatch(r"[A-Za-z]\s*(\([^()\[\]]*\]|\[[^()\[\]]*\))", g)
    if interval:
        out["interval without its variable"] = interval.group(1)
    if "pmatrix" in g:
        out["bmatrix for pmatrix"] = g.replace("pmatrix", "bmatrix")
    choice = re.fullmatch(r"\\text\{\(([A-E])\)\}", g)
    if choice:
        out["choice letter"] = choice.group(1)
    unit_text = re.sub(r"\\(?:text|mbox)\{[^{}]*\}(?:\^\d)?", "", g).strip()
    if unit_text != g and unit_text and not re.fullmatch(r"\\text\{[^{}]*\}", g):
        out["without unit text"] = unit_text
    if "\\pm" in g and "\\{" not in g:
        a, b = (t.strip() for t in g.split("\\pm", 1))
        out["\\pm as two answers"] = f"{a}+{b}, {a}-{b}"
    if re.fullmatch(r"-?\.\d+", g):
        out["zero before the point"] = g.replace(".", "0.", 1)
    if re.search(r"\\sqrt\d", g):
        out["braced \\sqrt argument"] = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", g)
    if row.get("unit"):
        unit = row["unit"].strip("$")
        out["with the unit"] = g + (unit if unit.startswith("^") else f" \\text{{ {unit}}}")
    parsed = _sympy_form(normalize_answer(gold))
    if parsed is not None:
        out["sympy LaTeX of the parsed gold"] = parsed
    return out


def _sympy_form(answer: str) -> str | None:
    """sympy's LaTeX of math-verify's parse of ``answer`` (None when it parses to no expression)."""
    from math_verify import parse
    from sympy import Basic, MatrixBase, latex

    exprs = [e for e in parse(f"${answer}$") if isinstance(e, (Basic, MatrixBase))]
    if not exprs:
        return None
    try:
        return latex(exprs[0])
    except Exception:  # noqa: BLE001 -- some parsed objects (e.g. relational sets) have no LaTeX printer
        return None


def sweep(path: Path) -> tuple[Counter, Counter, Counter, list[tuple[str, str, str]], list[tuple[str, str]]]:
    """(cases, failures before, failures after) per rewrite, the failing cases after normalization, the unparsed golds."""
    cases, before, after, failing = Counter(), Counter(), Counter(), []
    unparsed: list[tuple[str, str]] = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        raw = str(row["answer"])
        loaded = normalize_answer(raw)
        cases["parses to an expression"] += 1
        before["parses to an expression"] += _sympy_form(raw) is None
        if _sympy_form(loaded) is None:
            after["parses to an expression"] += 1
            unparsed.append((row.get("id", "?"), raw))
        for name, form in rewrites(raw, row).items():
            cases[name] += 1
            response = f"The answer is \\boxed{{{form}}}"
            before[name] += answers_match(last_boxed(response), raw) < 1.0
            if grade(response, loaded) < 1.0:
                after[name] += 1
                failing.append((row.get("id", "?"), raw, form))
    return cases, before, after, failing, unparsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="JSONL files (default: every file in lpreg/data/math/)")
    args = parser.parse_args(argv)
    files = args.files or sorted(DATA.glob("*.jsonl"))
    totals = Counter()
    for path in files:
        start = time.perf_counter()
        cases, before, after, failing, unparsed = sweep(path)
        print(f"\n{path.name} ({time.perf_counter() - start:.0f} s): cases, failures before -> after")
        for name in cases:
            print(f"  {name:32s} {cases[name]:5d}  {before[name]:4d} -> {after[name]:4d}")
        for row_id, raw, form in failing:
            print(f"  FAIL {row_id}: gold {raw!r} vs \\boxed{{{form}}}")
        for row_id, raw in unparsed:
            print(f"  UNPARSED {row_id}: gold {raw!r} (only an identical string matches)")
        totals.update({"cases": sum(cases.values()), "before": sum(before.values()), "after": sum(after.values()),
                       "self before": before["gold itself"], "self after": after["gold itself"]})
    print("(sympy's LaTeX printer writes some forms no model would, e.g. \\operatorname{asin}, lower-cased symbols;"
          " failures of that rewrite alone are listed for inspection)")
    print(f"\nall files: {totals['cases']} cases; failing before {totals['before']}, after {totals['after']}; "
          f"gold vs itself failing before {totals['self before']}, after {totals['self after']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Download the full math training set and the five benchmarks from the Hugging Face Hub into lpreg's JSONL schema.

    pip install 'lpreg[data]'
    python -m lpreg.data prepare [--out DIR] [--sources dapo_math aime24 ...]

Sources (Hub dataset id, config, split -> file; the columns each converter reads):

- ``dapo_math``: ``BytedTsinghua-SIA/DAPO-Math-17k``, train (1.79M rows: each problem ~100 times) ->
  ``dapo_math_17k.jsonl``, one row per unique ``extra_info.index`` (17,917 problems), first occurrence kept.
  ``prompt[0].content`` with DAPO's instruction wrapper (``DAPO_PREFIX`` ... ``DAPO_SUFFIX``, quoted in
  ``lpreg/data/math/README.md``) removed; a row without the wrapper is an error. ``answer`` =
  ``reward_model.ground_truth``. No further filtering (the shipped 2,000-problem sample also drops rows with Chinese
  text, control characters and conflicting duplicate texts; see its README).
- ``aime24``: ``HuggingFaceH4/aime_2024``, train (``problem``, ``answer``, ``solution``, ``url``, ``id``).
- ``aime25``: ``yentinglin/aime_2025``, train (``problem``, ``answer``; ``url``, ``id`` when present), the
  upstream of the shipped AIME 2025 file.
- ``math500``: ``HuggingFaceH4/MATH-500``, test (``problem``, ``answer``, ``solution``, ``subject``, ``level``,
  ``unique_id``).
- ``minerva``: ``math-ai/minervamath``, test (``question``, ``answer``): the 272 OCW problems of Lewkowycz et al.
- ``olympiadbench``: ``Hothan/OlympiadBench``, config ``OE_TO_maths_en_COMP``, train (``question``, ``context``,
  ``final_answer`` (a list of strings), ``solution``, ``subfield``, ``answer_type``, ``is_multiple_answer``,
  ``unit``, ``error``, ``id``): the 675 open-ended, text-only English competition problems. ``answer`` = the
  ``final_answer`` strings joined by ``,`` with every ``$`` removed (``$69$,$84$`` -> ``69,84``).

Every output row starts with ``id, problem, answer, data_source`` (``data_source`` = the source name, the names
``task.sampled_sources`` uses) as in the shipped files; answers are written as the source states them and normalized
when loaded (``lpreg.tasks.math.normalize_answer``); rows with an empty answer are dropped and counted. Each file's
row count and sha256 are printed and written to ``SHA256SUMS`` in the output folder (``sha256sum -c`` format).
``datasets.load_dataset`` is called without ``trust_remote_code`` (so, with ``datasets>=3``, never runs a dataset
script); every dataset above is plain parquet/JSON on the Hub.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'
# AoPS wiki URLs of AIME problems: .../2024_AIME_II_Problems/Problem_4
_AIME_URL = re.compile(r"AIME_(I{1,2})_Problems/Problem_(\d+)")


def _column(row: dict, dataset: str, name: str):
    """``row[name]``, or an error that names the dataset and the columns it has."""
    try:
        return row[name]
    except KeyError:
        raise ValueError(f"{dataset}: rows have no column {name!r} (columns: {sorted(row)}); the Hub dataset's layout "
                         "changed, update lpreg/data/prepare.py") from None


def convert_dapo(rows: Iterable[dict], dataset: str = "BytedTsinghua-SIA/DAPO-Math-17k") -> list[dict]:
    """DAPO-Math-17k rows -> one row per unique ``extra_info.index``, the instruction wrapper removed."""
    out, seen = [], set()
    for row in rows:
        uuid = _column(_column(row, dataset, "extra_info"), dataset, "index")
        if uuid in seen:
            continue
        seen.add(uuid)
        content = _column(row, dataset, "prompt")[0]["content"]
        if not (content.startswith(DAPO_PREFIX) and content.endswith(DAPO_SUFFIX)):
            raise ValueError(f"{dataset}: problem {uuid} lacks DAPO's instruction wrapper; its prompt starts "
                             f"{content[:80]!r}. Update DAPO_PREFIX / DAPO_SUFFIX in lpreg/data/prepare.py")
        out.append({"id": f"dapo_math-{len(out):05d}", "problem": content[len(DAPO_PREFIX):-len(DAPO_SUFFIX)],
                    "answer": str(_column(row, dataset, "reward_model")["ground_truth"]), "data_source": "dapo_math",
                    "source_uuid": uuid})
    return out


def convert_aime(rows: Iterable[dict], tag: str, dataset: str) -> list[dict]:
    """AIME rows (``problem``, ``answer``; ``url``, ``id`` optional) -> ids ``<tag>-<I|II>-<nn>`` from the AoPS URL."""
    out = []
    for i, row in enumerate(rows):
        match = _AIME_URL.search(row.get("url") or "")
        row_id = f"{tag}-{match.group(1)}-{int(match.group(2)):02d}" if match else f"{tag}-{i:02d}"
        out.append({"id": row_id, "problem": _column(row, dataset, "problem"),
                    "answer": str(_column(row, dataset, "answer")).strip(), "data_source": tag,
                    "url": row.get("url"), "source_id": row.get("id")})
    return out


def convert_math500(rows: Iterable[dict], dataset: str = "HuggingFaceH4/MATH-500") -> list[dict]:
    """MATH-500 rows -> ids ``math500-<nnn>`` in source order, with solution, subject, level and unique_id."""
    return [{"id": f"math500-{i:03d}", "problem": _column(row, dataset, "problem"),
             "answer": _column(row, dataset, "answer"), "data_source": "math500", "solution": row.get("solution"),
             "subject": row.get("subject"), "level": row.get("level"), "unique_id": row.get("unique_id")}
            for i, row in enumerate(rows)]


def convert_minerva(rows: Iterable[dict], dataset: str = "math-ai/minervamath") -> list[dict]:
    """Minerva Math rows (``question``, ``answer``) -> ids ``minerva-<nnn>`` in source order."""
    return [{"id": f"minerva-{i:03d}", "problem": _column(row, dataset, "question"),
             "answer": str(_column(row, dataset, "answer")), "data_source": "minerva"}
            for i, row in enumerate(rows)]


def convert_olympiadbench(rows: Iterable[dict], dataset: str = "Hothan/OlympiadBench") -> list[dict]:
    """OlympiadBench rows -> ``answer`` = the ``final_answer`` strings joined by ``,``, every ``$`` removed."""
    out = []
    for row in rows:
        finals = _column(row, dataset, "final_answer") or []
        context = (row.get("context") or "").strip()
        question = _column(row, dataset, "question")
        out.append({"id": f"olympiadbench-{_column(row, dataset, 'id')}",
                    "problem": f"{context}\n{question}" if context else question,
                    "answer": ",".join(a.replace("$", "").strip() for a in finals), "data_source": "olympiadbench",
                    "final_answer": finals, "solution": row.get("solution"), "subject": row.get("subfield"),
                    "answer_type": row.get("answer_type"), "is_multiple_answer": row.get("is_multiple_answer"),
                    "unit": row.get("unit"), "error": row.get("error"), "source_id": row.get("id")})
    return out


@dataclass(frozen=True)
class HubSource:
    name: str  # data_source tag (task.sampled_sources names these)
    dataset: str  # Hub dataset id
    config: str | None
    split: str
    filename: str
    convert: Callable[[Iterable[dict]], list[dict]]


SOURCES = {s.name: s for s in [
    HubSource("dapo_math", "BytedTsinghua-SIA/DAPO-Math-17k", None, "train", "dapo_math_17k.jsonl", convert_dapo),
    HubSource("aime24", "HuggingFaceH4/aime_2024", None, "train", "aime24.jsonl",
              lambda rows: convert_aime(rows, "aime24", "HuggingFaceH4/aime_2024")),
    HubSource("aime25", "yentinglin/aime_2025", None, "train", "aime25.jsonl",
              lambda rows: convert_aime(rows, "aime25", "yentinglin/aime_2025")),
    HubSource("math500", "HuggingFaceH4/MATH-500", None, "test", "math500.jsonl", convert_math500),
    HubSource("minerva", "math-ai/minervamath", None, "test", "minerva.jsonl", convert_minerva),
    HubSource("olympiadbench", "Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train", "olympiadbench.jsonl",
              convert_olympiadbench),
]}


def load_rows(source: HubSource) -> tuple[Iterable[dict], int]:
    """The rows of ``source`` from the Hub (``datasets.load_dataset``, no remote code) and how many there are."""
    try:
        import datasets
    except ImportError as err:
        raise ImportError("`python -m lpreg.data prepare` needs the `datasets` library: pip install 'lpreg[data]'") from err
    ds = datasets.load_dataset(source.dataset, source.config, split=source.split)
    return ds, len(ds)


def write_jsonl(rows: list[dict], path: Path) -> str:
    """Write ``rows`` as JSON Lines (UTF-8); returns the file's sha256."""
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def prepare(out: Path, names: Iterable[str]) -> list[tuple[str, Path, int, int, str]]:
    """Download, convert and write each named source into ``out``; (name, file, rows, dropped, sha256) per source.

    Rows whose answer is empty are dropped (``dropped``). ``SHA256SUMS`` in ``out`` lists every file written.
    """
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        source = SOURCES[name]
        rows, total = load_rows(source)
        progress = tqdm(rows, total=total, desc=f"{name} <- {source.dataset}", unit=" rows", mininterval=1.0,
                        file=sys.stderr)
        converted = source.convert(progress)
        kept = [row for row in converted if str(row["answer"]).strip()]
        path = out / source.filename
        results.append((name, path, len(kept), len(converted) - len(kept), write_jsonl(kept, path)))
    sums = out / "SHA256SUMS"
    listed = {} if not sums.exists() else dict(reversed(line.split("  ", 1)) for line in sums.read_text().splitlines())
    listed.update({path.name: digest for _, path, _, _, digest in results})
    sums.write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(listed.items())))
    return results


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lpreg.data", description="lpreg's data commands")
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("prepare", help="download the full DAPO-Math-17k training set and the five benchmarks",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.add_argument("--out", type=Path, default=Path("data/math"), help="output folder (default: data/math)")
    cmd.add_argument("--sources", nargs="+", choices=list(SOURCES), default=list(SOURCES), metavar="NAME",
                     help=f"which sources (default: all of {', '.join(SOURCES)})")
    args = parser.parse_args(argv)
    try:
        results = prepare(args.out, args.sources)
    except (ImportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{'source':14s} {'rows':>6s} {'dropped':>7s}  sha256  file")
    for name, path, count, dropped, digest in results:
        print(f"{name:14s} {count:6d} {dropped:7d}  {digest}  {path}")
    files = {name: str(path) for name, path, *_ in results}
    evals = [files[n] for n in SOURCES if n != "dapo_math" and n in files]
    overrides = ([f"task.train_file={files['dapo_math']}"] if "dapo_math" in files else []) + (
        [f"task.eval_files=[{','.join(evals)}]"] if evals else [])
    print("use them with: python -m lpreg.run task=math " + " ".join(overrides))
    return 0

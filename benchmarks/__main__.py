"""The benchmarks and their commands: ``python -m benchmarks`` lists them, ``python -m benchmarks NAME [ARGS]`` runs one.

Each benchmark is a script beside this file whose module docstring says what it measures; its first line is the
summary listed here. Details, results and the machine they were measured on: ``benchmarks/README.md``.
"""

from __future__ import annotations

import ast
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name -> the command that reproduces the numbers in benchmarks/README.md
COMMANDS = {
    "vs_trl": "python benchmarks/vs_trl.py            # needs pip install -e '.[bench]'",
    "token_path": "python benchmarks/token_path.py --out benchmarks/token_path.md",
    "rewards": "python benchmarks/rewards.py budget | throughput | arithmetic",
}


def summary(name: str) -> str:
    """The first line of the benchmark script's module docstring."""
    doc = ast.get_docstring(ast.parse((HERE / f"{name}.py").read_text())) or ""
    return doc.splitlines()[0] if doc else ""


def listing() -> str:
    return "\n".join(f"{name:<11} {summary(name)}\n{'':<11} {cmd}" for name, cmd in COMMANDS.items())


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print(listing())
        return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.exit(f"unknown benchmark {name!r}; one of: {', '.join(COMMANDS)} (python -m benchmarks lists them)")
    sys.argv = [str(HERE / f"{name}.py"), *rest]
    sys.path.insert(0, str(HERE.parent))
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])

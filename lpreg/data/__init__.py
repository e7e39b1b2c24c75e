"""Data shipped with lpreg and the paths that name it.

``lpreg/data/math/`` holds the paper's five evaluation sets and a 2,000-problem DAPO-Math-17k training sample
(provenance, licenses and sha256 in its README); ``python -m lpreg.data prepare`` downloads the full sets
(``lpreg/data/prepare.py``). A config path that starts with ``pkg://`` names a file inside an installed Python
package (``pkg://lpreg/data/math/aime24.jsonl``), the scheme Hydra uses for config search paths, so the defaults
work from a fresh clone, an editable install and a wheel alike; any other path is a file path (absolute, or
relative to the working directory, which Hydra leaves unchanged: ``hydra.job.chdir=false``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PKG_SCHEME = "pkg://"
# The shipped math data, as config values name it.
MATH_DATA = f"{PKG_SCHEME}lpreg/data/math"
MATH_EVAL_SETS = ("aime24", "aime25", "math500", "minerva", "olympiadbench")


def resolve_path(path: str | Path) -> Path:
    """The file a config value names: ``pkg://<package>/<path inside it>``, or a plain file path."""
    text = str(path)
    if not text.startswith(PKG_SCHEME):
        return Path(text).expanduser()
    package, _, inner = text[len(PKG_SCHEME):].partition("/")
    if not package or not inner:
        raise ValueError(f"{text!r}: a package path is pkg://<package>/<file inside it>, e.g. {MATH_DATA}/aime24.jsonl")
    try:
        root = resources.files(package)
    except ModuleNotFoundError as err:
        raise ValueError(f"{text!r}: no installed Python package {package!r}") from err
    return Path(str(root.joinpath(inner)))

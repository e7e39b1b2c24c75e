"""Markdown and LaTeX tables whose cells are untrusted text (run names, config values, model output).

A cell must not end its row or column, start HTML, a link, an image or a code span, or reach the terminal as a
control sequence (the multirun table is also printed). :func:`md_cell` escapes, in this order: ``\\`` -> ``\\\\``;
``|``, backtick, ``[`` and ``]`` get a backslash; ``&``, ``<``, ``>`` become HTML entities; a line break becomes the
two characters ``\\n``; any other control character becomes ``\\xNN``. ``*`` and ``_`` are left alone (emphasis is
cosmetic, and ``0_lpreg_s0`` stays readable in a terminal). :func:`tex_cell` escapes LaTeX's ten special characters.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

_MD = {"\\": "\\\\", "|": "\\|", "`": "\\`", "[": "\\[", "]": "\\]", "&": "&amp;", "<": "&lt;", ">": "&gt;"}
_TEX = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#", "_": r"\_",
        "%": r"\%", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _control(ch: str) -> str:
    return f"\\x{ord(ch):02x}" if unicodedata.category(ch) == "Cc" else ch


def md_cell(value: Any) -> str:
    """One Markdown table cell: ``None`` -> ``-``, anything else ``str()``-ed and escaped (module docstring)."""
    if value is None:
        return "-"
    text = re.sub(r"\r\n|\r|\n", "\n", str(value))
    text = "".join(_MD.get(ch, ch) for ch in text).replace("\n", "\\n")
    return "".join(_control(ch) for ch in text)


def md_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; every cell (header included) through :func:`md_cell`."""
    lines = ["| " + " | ".join(map(md_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(md_cell, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def tex_cell(value: Any) -> str:
    """One LaTeX table cell: special characters escaped, line breaks and control characters as spaces."""
    text = "".join(_TEX.get(ch, ch) for ch in str(value))
    return "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text)

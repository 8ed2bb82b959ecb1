"""The command blocks of the READMEs, read the way a user copies them: the tests run these very lines."""
from __future__ import annotations

import os
import shlex
from typing import List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def code_block(readme: str, heading: str) -> List[str]:
    """The lines of the first fenced code block after the heading ``heading`` of ``readme`` (a path in the repo)."""
    with open(os.path.join(REPO, readme), encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("#") and ln.lstrip("#").strip() == heading)
    fence = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    end = next(i for i in range(fence + 1, len(lines)) if lines[i].startswith("```"))
    return [ln for ln in lines[fence + 1:end] if ln.strip()]


def generate_examples() -> List[List[str]]:
    """README.md's generate.py examples as argument lists (the interpreter and script left off, comments dropped)."""
    out = []
    for line in code_block("README.md", "Your own videos from the command line"):
        words = shlex.split(line, comments=True)
        assert words[:2] == [".venv/bin/python", "generate.py"], line
        out.append(words[2:])
    return out


def readme_flags() -> List[str]:
    """Every generate.py flag README.md's examples and its options paragraph name."""
    import re

    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index("### Your own videos from the command line")
    ends = [i for i in (text.find("\n## ", start), text.find("\n### ", start + 4)) if i > 0]
    section = text[start:min(ends) if ends else len(text)]              # up to the next heading
    return sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", section)))

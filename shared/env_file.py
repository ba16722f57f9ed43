"""Env files (`KEY=VALUE` lines) as dotenv reads them: the deploy `.env` and the local
stack's `.local/stack.env`.

# comments on their own lines; 'single' quotes kept literal; "double" quotes with \n
turned into line breaks (how a multi-line PEM fits on one line); unquoted values trimmed.
"""

from __future__ import annotations

import re
from pathlib import Path

_LINE_RE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as dotenv reads them: # comments, 'single' quotes kept literal,
    "double" quotes with \\n turned into line breaks, unquoted values trimmed."""
    values: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _LINE_RE.match(line)
        if match is None or line.lstrip().startswith("#"):
            continue
        name, raw = match.group(1), match.group(2).strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            value = raw[1:-1].replace("\\n", "\n").replace('\\"', '"')
        elif len(raw) >= 2 and raw[0] == raw[-1] == "'":
            value = raw[1:-1]
        else:
            value = raw.split(" #", 1)[0].strip()
        values[name] = value
    return values


def format_env_line(name: str, value: str) -> str:
    """One line that `read_env_file` (and dotenv) reads back as `value`."""
    if "\\" in value or '"' in value:
        raise ValueError(f"{name}: a value with a backslash or a double quote has no portable env-file form")
    one_line = value.replace("\n", "\\n")
    return f'{name}="{one_line}"\n'

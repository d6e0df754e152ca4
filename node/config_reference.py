"""The documented reference of every config key, derived from ``config_schema.Config``.

``KEYS`` feeds ``raftmq node --help`` (``config_reference_text``) and the
key table of docs/configuration.md (``config_reference_markdown``), which a
test keeps current.
"""

import textwrap
from dataclasses import MISSING, Field, dataclass, fields
from typing import Any

from raftmq.node.config_schema import RULES, Config
from raftmq.node.config_types import TYPES, ListenAddress

UNSET = "unset"  # how a default of None is documented


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """One config key as documented: every text shown to users comes from here."""

    name: str
    type: str
    default: str
    check: str
    help: str


def _toml_literal(value: object) -> str:
    if value is None:
        return UNSET
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        items = (a.url() if isinstance(a, ListenAddress) else a.spec() for a in value)
        return "[" + ", ".join(f'"{item}"' for item in items) + "]"
    return str(value)


def _default_of(f: Field[Any]) -> object:
    return f.default_factory() if f.default is MISSING else f.default


KEYS: tuple[KeyInfo, ...] = tuple(
    KeyInfo(
        name=f.name,
        type=TYPES[f.type][0],
        default=_toml_literal(_default_of(f)),
        check=RULES[f.name].text() or TYPES[f.type][2],
        help=RULES[f.name].help,
    )
    for f in fields(Config)
)


def _code(default: str) -> str:
    return default if default == UNSET else f"`{default}`"


def config_reference_markdown() -> str:
    """The Markdown table of config keys, as docs/configuration.md shows it."""
    rows = [
        "| key | type | default | allowed | meaning |",
        "|---|---|---|---|---|",
        *(f"| `{k.name}` | {k.type} | {_code(k.default)} | {k.check} | {k.help} |" for k in KEYS),
    ]
    return "\n".join(rows) + "\n"


def config_reference_text(width: int = 79) -> str:
    """The same reference for terminal help: one key per paragraph."""
    lines: list[str] = []
    for k in KEYS:
        lines.append(f"  {k.name} = {k.default}")
        text = f"{k.help} [{k.type}: {k.check}]"
        lines.extend(textwrap.wrap(text, width, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(lines)

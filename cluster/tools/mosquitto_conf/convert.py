"""A Mosquitto config in, raftmq TOML and the remarks about what could not be kept out.

The TOML says above each key which Mosquitto line(s) it came from, so the
result can be reviewed line by line against the original. It is checked
with raftmq's own loader before it is returned: a conversion raftmq would
refuse is an error here, not at the node's start.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields

import tomli_w

from raftmq.node.config import Config, ConfigError, load_config

from .mapping import Mapping, Setting
from .reader import ConfigSource, MosquittoConfigError, read_config
from .walk import Remark, walk

KEY_ORDER = [f.name for f in fields(Config)]


@dataclass(frozen=True, slots=True)
class Conversion:
    toml: str
    remarks: list[Remark]
    """One per directive raftmq cannot honour as written, in the order of the lines."""


def convert(path: str, source: ConfigSource) -> Conversion:
    """Convert the Mosquitto config ``path``; MosquittoConfigError if Mosquitto would refuse it."""
    lines = read_config(path, source)
    mapping = Mapping(walk(lines))
    mapping.build()
    toml = to_toml(path, mapping.settings)
    try:
        load_config(overrides=tomllib.loads(toml), origin=f"the config converted from {path}")
    except ConfigError as exc:
        raise MosquittoConfigError(str(exc)) from None
    order = {line: index for index, line in enumerate(lines)}
    remarks = sorted(mapping.remarks, key=lambda remark: order[remark.line])
    return Conversion(toml, remarks)


def to_toml(path: str, settings: list[Setting]) -> str:
    """The settings as TOML, in the order of raftmq's key reference; the last of a key wins."""
    final = {setting.key: setting for setting in settings}
    parts = [
        f"# raftmq config converted from {path} by `raftmq config from-mosquitto`.\n"
        "# Directives raftmq cannot honour as written were reported on stderr.\n"
    ]
    for key in sorted(final, key=KEY_ORDER.index):
        setting = final[key]
        comments = [f"# {value.line.where}: {value.line.text}" for value in setting.sources]
        if not setting.sources:
            comments.append("# not in the Mosquitto config; what Mosquitto does without it")
        if setting.note:
            comments.append(f"# ({setting.note})")
        parts.append("\n".join(comments) + "\n" + tomli_w.dumps({key: setting.value}))
    return "\n".join(parts)

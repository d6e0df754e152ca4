"""Node configuration: the TOML file and command-line overrides, loaded into a ``Config``.

This module is the configuration's public face and does the loading. The
keys and their checks are in ``config_schema``, the value types of keys in
``config_types``, and the documented key reference in ``config_reference``.
"""

import os
import tomllib
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from raftmq.node.config_checks import check_config
from raftmq.node.config_reference import KEYS, config_reference_text
from raftmq.node.config_schema import Config, default_config, parse_table
from raftmq.node.config_types import (
    DEFAULT_LISTEN,
    NODE_ID_ALLOWED,
    NODE_ID_PATTERN,
    TLS_SCHEMES,
    ConfigError,
    ListenAddress,
    PeerAddress,
    parse_listen,
)

__all__ = [
    "DEFAULT_LISTEN",
    "KEYS",
    "NODE_ID_ALLOWED",
    "NODE_ID_PATTERN",
    "TLS_SCHEMES",
    "Config",
    "ConfigError",
    "ListenAddress",
    "config_reference_text",
    "config_table",
    "default_config",
    "load_config",
    "parse_listen",
]

OVERRIDES_ORIGIN = "command line"


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    where = os.fspath(path)
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        reason = f"[Errno {exc.errno}] {exc.strerror}" if exc.strerror else str(exc)
        raise ConfigError(f"{where}: cannot read file: {reason}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{where}: invalid TOML: not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, object] | None = None,
    *,
    origin: str = OVERRIDES_ORIGIN,
) -> Config:
    """Read the TOML file (if any), then apply overrides, which win key by key.

    Both are validated completely: a bad file stays an error even where a flag
    replaces the bad value, so the file is fixed rather than silently masked.
    ``origin`` names where the overrides came from in error messages (the
    command line, unless a caller such as the pytest plugin says otherwise).
    """
    values: dict[str, object] = {}
    if path is not None:
        values.update(parse_table(_read_toml(path), os.fspath(path)))
    if overrides:
        values.update(parse_table(overrides, origin))
    config = Config(**values)
    check_config(config, os.fspath(path) if path is not None else origin)
    return config


def config_table(config: Config) -> dict[str, object]:
    """Every key of ``config`` as the raw value a TOML file would hold.

    A Config built or changed in code (``config.max_inflight = -5``) skipped
    the loader's checks; ``load_config(overrides=config_table(config))`` runs
    exactly the checks a file gets, with the same messages.
    """
    table: dict[str, object] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, list):
            value = [_raw_item(item) for item in value]
        table[f.name] = value
    return table


def _raw_item(item: object) -> object:
    """A list item as written in TOML; anything else is left for the key's check to refuse."""
    if isinstance(item, ListenAddress):
        return item.url()
    if isinstance(item, PeerAddress):
        return item.spec()
    return item

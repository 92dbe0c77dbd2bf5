"""Per-instance configuration files (/etc/sdfs/NAME.toml for the systemd unit).

The keys are the long command-line options of `sdfs mount`, with dashes or
underscores, plus `store` and `mountpoint`; a flag given on the command line
wins over the file. Unknown keys and wrong types are refused, because a typo
in a service's configuration should stop the service, not be ignored.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from .errors import SdfsError


class ConfigError(SdfsError):
    """The configuration file cannot be used."""

    exit_code = 2  # like a usage error: the invocation is wrong


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if action.dest not in ("help", "config", "run")}


def load(path: Path, parser: argparse.ArgumentParser) -> dict:
    """Defaults for ``parser`` from the TOML file at ``path``."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"cannot read configuration {path}: {error.strerror or error}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"configuration {path} is not valid TOML: {error}") from None
    options = _options(parser)
    defaults = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        action = options.get(dest)
        if action is None:
            known = ", ".join(sorted(name.replace("_", "-") for name in options))
            raise ConfigError(f"configuration {path}: unknown key {key!r}; known keys: {known}")
        defaults[dest] = _typed(path, key, value, action)
    return defaults


def _typed(path: Path, key: str, value, action: argparse.Action):
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"configuration {path}: {key} must be true or false, not {value!r}")
        return value
    if isinstance(value, (dict, list, bool)):
        raise ConfigError(f"configuration {path}: {key} must be a single value, not {value!r}")
    convert = action.type or str
    try:
        converted = convert(str(value)) if convert is not str else str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"configuration {path}: {key} = {value!r} is not a valid {getattr(convert, '__name__', 'value')}") from None
    if action.choices is not None and converted not in action.choices:
        raise ConfigError(f"configuration {path}: {key} must be one of {', '.join(map(str, action.choices))}, not {value!r}")
    return converted

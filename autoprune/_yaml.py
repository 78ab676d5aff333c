"""Safe YAML reading shared by configs, policies and search spaces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from autoprune.errors import ConfigError


def read_yaml_mapping(path: str | Path, error_cls: type[Exception] = ConfigError) -> dict[str, Any]:
    """Read a YAML file with ``yaml.safe_load`` and require a mapping at the top.

    Raises ``error_cls`` (a :class:`~autoprune.errors.AutopruneError`) naming the file
    for a missing file, malformed YAML or a top level that is not a mapping.
    """
    p = Path(path)
    if p.is_dir():
        raise error_cls(f"{p}: is a folder; give the YAML file")
    if not p.is_file():
        raise error_cls(f"{p}: file not found; check the path (relative paths start at the current directory)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error_cls(f"{p}: malformed YAML{where}: {problem}; fix the syntax and retry") from None
    except UnicodeDecodeError:
        raise error_cls(f"{p}: not a UTF-8 text file; expected YAML") from None
    if data is None:
        raise error_cls(f"{p}: the file is empty; expected a YAML mapping")
    if not isinstance(data, dict):
        raise error_cls(f"{p}: expected a YAML mapping (key: value) at the top level, got {type(data).__name__}")
    return data

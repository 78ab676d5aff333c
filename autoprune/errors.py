"""Errors a user can act on.

Every error autoprune raises on bad input derives from :class:`AutopruneError`.
The CLI prints such an error as one line (what is wrong, where, how to fix it)
and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AutopruneError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code = 2


class ConfigError(AutopruneError):
    """A run configuration or search space file is invalid."""


class PolicyError(AutopruneError):
    """A pruning policy is invalid or does not fit the model."""


class ModelError(AutopruneError):
    """The model cannot be loaded or its architecture is not supported."""


class DataError(AutopruneError):
    """The dataset cannot be loaded or does not have the expected shape."""


class StudyError(AutopruneError):
    """A study is missing, locked by another driver, or its storage is unusable."""


class TrialFailed(AutopruneError):
    """A trial failed for a reason worth recording (NaN loss, out of memory)."""


def format_validation_error(exc: "Exception", source: str) -> str:
    """Turn a pydantic ``ValidationError`` into one readable line per problem.

    Example:
        >>> from pydantic import BaseModel, ValidationError
        >>> class M(BaseModel):
        ...     x: int
        >>> try:
        ...     M(x="a")
        ... except ValidationError as e:
        ...     print(format_validation_error(e, "cfg.yaml"))
        cfg.yaml: field 'x': Input should be a valid integer, unable to parse string as an integer
    """
    lines = []
    for err in exc.errors():  # type: ignore[attr-defined]
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
        msg = err.get("msg", "invalid value")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        where = f"field '{loc}'" if loc else "top level"
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)

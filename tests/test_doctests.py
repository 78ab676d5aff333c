"""The runnable examples in the package's docstrings run and print what they say (doctest)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import autoprune


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(autoprune.__path__, "autoprune."):
        if info.name.endswith("__main__"):  # importing it would run the CLI
            continue
        mod = importlib.import_module(info.name)
        if any(t.examples for t in doctest.DocTestFinder().find(mod)):
            names.append(info.name)
    return names


MODULES = _modules_with_examples()


def test_the_package_has_docstring_examples():
    assert len(MODULES) >= 10, MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    res = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted > 0 and res.failed == 0, f"{name}: {res.failed} of {res.attempted} examples failed"

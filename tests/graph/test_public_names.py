"""Every public name of the graph's modules -- what ``__all__`` offers a user, and the
public methods and properties of its classes -- has a docstring and type annotations
(``help()`` and an editor are where a newcomer meets the API first)."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest

MODULES = [
    "dtp.graph",
    "dtp.graph.values",
    "dtp.graph.sea",
    "dtp.graph.rules",
    "dtp.graph.namespace",
    "dtp.graph.sync",
]
GUN = "dtp.graph.gun"  # the gun extra (websockets)


def _function_gaps(where: str, function: Any, method: bool) -> list[str]:
    gaps = []
    signature = inspect.signature(function)
    parameters = list(signature.parameters.values())[1 if method else 0 :]
    gaps += [
        f"{where}: parameter {p.name} has no type"
        for p in parameters
        if p.annotation is inspect.Parameter.empty
    ]
    if signature.return_annotation is inspect.Signature.empty:
        gaps.append(f"{where}: no return type")
    return gaps


def _class_gaps(where: str, cls: type) -> list[str]:
    gaps = []
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or issubclass(cls, BaseException):
            continue
        owner = next((k for k in cls.__mro__ if name in vars(k)), cls)
        if not owner.__module__.startswith("dtp."):
            continue  # inherited from the standard library
        raw = vars(owner)[name]
        if isinstance(raw, property):
            if not (raw.__doc__ or "").strip():
                gaps.append(f"{where}.{name}: no docstring")
            if raw.fget is not None:
                gaps += _function_gaps(f"{where}.{name}", raw.fget, method=True)
        elif inspect.isfunction(raw) or isinstance(raw, staticmethod | classmethod):
            function = raw.__func__ if isinstance(raw, staticmethod | classmethod) else raw
            if not (inspect.getdoc(member) or "").strip():
                gaps.append(f"{where}.{name}: no docstring")
            gaps += _function_gaps(
                f"{where}.{name}", function, method=not isinstance(raw, staticmethod)
            )
    return gaps


@pytest.mark.parametrize("module_name", [*MODULES, GUN])
def test_public_names_have_docstrings_and_types(module_name: str) -> None:
    if module_name == GUN:
        pytest.importorskip("websockets")
    module = importlib.import_module(module_name)
    assert (module.__doc__ or "").strip(), f"{module_name}: no docstring"
    gaps = []
    for name in module.__all__:
        obj = getattr(module, name)
        where = f"{module_name}.{name}"
        if inspect.isclass(obj):
            if not (inspect.getdoc(obj) or "").strip():
                gaps.append(f"{where}: no docstring")
            gaps += _class_gaps(where, obj)
        elif inspect.isfunction(obj):
            if not (inspect.getdoc(obj) or "").strip():
                gaps.append(f"{where}: no docstring")
            gaps += _function_gaps(where, obj, method=False)
    assert not gaps, "\n".join(gaps)

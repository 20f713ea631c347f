"""Dataclass configs whose field docstrings become CLI help.

A config is a plain dataclass; the string literal under each field is its
documentation. `field_docs` reads those strings from the source, and
`command` turns the dataclass into a typer command with one ``--option`` per field.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from typing import Any, Callable, Sequence


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` for a dataclass whose fields are followed by string literals."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def command(
    cls: type,
    run: Callable[..., Any],
    doc: str | None = None,
    extra: Sequence[inspect.Parameter] = (),
) -> Callable[..., Any]:
    """A function typer can register: its options are ``cls``'s fields, its help their docstrings.

    ``extra`` adds options that are not settings of the config (e.g. ``--remote``: where the model runs);
    they reach ``run`` as keyword arguments: ``run(cls(**fields), **extras)``.
    """
    import typer

    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=typer.Option(default, help=docs.get(f.name, "")),
                annotation=hints[f.name],
            )
        )
    names = {p.name for p in params}
    clash = [p.name for p in extra if p.name in names]
    if clash:
        raise TypeError(f"Extra options {clash} clash with fields of {cls.__name__}.")
    extra_names = [p.name for p in extra]
    params += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in extra]

    def wrapper(**kwargs: Any) -> Any:
        extras = {name: kwargs.pop(name) for name in extra_names}
        return run(cls(**kwargs), **extras)

    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__doc__ = doc or cls.__doc__
    wrapper.__name__ = cls.__name__
    return wrapper


def option(name: str, annotation: Any, default: Any, *flags: str, help: str = "") -> inspect.Parameter:
    """An extra option for `command`: ``option("remote", bool, False, "--remote", help=...)``."""
    import typer

    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=typer.Option(default, *flags, help=help), annotation=annotation
    )

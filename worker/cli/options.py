"""Command-line options made from settings fields, and the one-line way every verb fails.

A verb's options are its settings object's fields (`options_from`): the flag is the field's name
(`--max-wait-ms` for `max_wait_ms`) unless the field names another in `json_schema_extra`
(`{"flag": "--redis"}`), the help line is the field's description, choices come from
`json_schema_extra["choices"]`.  Every option defaults to None, so only the flags given
override the environment (`VECQ_*`) and the field defaults.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import click
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> None:
    """One line on stderr, then exit (2: a usage error no restart can fix)."""
    click.echo(f"vecq: {message}", err=True)
    raise SystemExit(code)


def settings_or_fail(cls: type[BaseModel], given: dict[str, object]) -> Any:
    """`cls(**given)`, or the first validation error as one line naming the option."""
    from vecq.producer.contract import one_line

    try:
        return cls(**given)
    except ValidationError as exc:
        fail(one_line(exc, unnamed="settings"))


def given(flags: dict[str, object]) -> dict[str, object]:
    """The options the user gave (click passes None for the others)."""
    return {k: v for k, v in flags.items() if v is not None}


def options_from(cls: type[BaseModel], *, skip: Iterable[str] = ()) -> Callable[[F], F]:
    """A decorator adding one click option per field of `cls` (but `skip`), in field order."""
    fields = [(name, info) for name, info in cls.model_fields.items() if name not in set(skip)]

    def decorate(command: F) -> F:
        for name, info in reversed(fields):
            command = _option(name, info)(command)
        return command

    return decorate


def flag_of(name: str, info: FieldInfo) -> str:
    """The flag(s) of a field: `--field-name`, or what its `json_schema_extra` names."""
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return str(extra.get("flag") or "--" + name.replace("_", "-"))


def _option(name: str, info: FieldInfo) -> Callable[[F], F]:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    flag, kind = flag_of(name, info), _inner(info.annotation)
    help_text = info.description or ""
    if kind is bool:
        decls = flag if "/" in flag else f"{flag}/--no-{flag[2:]}"
        return click.option(decls, name, default=None, help=help_text)
    choices = extra.get("choices")
    if choices is not None:
        click_type: Any = click.Choice([str(c) for c in choices])  # type: ignore[union-attr]
    elif get_origin(kind) is Literal:
        click_type = click.Choice([str(a) for a in get_args(kind)])
    elif kind is Path:
        click_type = click.Path(path_type=Path)
    elif kind in (int, float):
        click_type = kind
    else:
        click_type = str  # tuples (lanes) parse from a comma list in the field's validator
    return click.option(
        flag, name, type=click_type, default=None, required=info.is_required(), help=help_text
    )


def _inner(annotation: Any) -> Any:
    """`X` of `X | None` (and of `Annotated[X, ...]`)."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _inner(args[0]) if len(args) == 1 else annotation
    if hasattr(annotation, "__metadata__"):
        return _inner(annotation.__origin__)
    return annotation


def to_args(cls: type[BaseModel], values: dict[str, object], *, skip: Iterable[str] = ()) -> list[str]:
    """The flags that give `values` to a command whose options `options_from(cls)` made (what a
    supervisor passes on to its children)."""
    args: list[str] = []
    for name, value in values.items():
        info = cls.model_fields.get(name)
        if info is None or name in set(skip) or value is None:
            continue
        on, _, off = flag_of(name, info).partition("/")
        if _inner(info.annotation) is bool:
            args.append(on if value else off or f"--no-{on[2:]}")
        elif isinstance(value, (tuple, list)):
            args += [on, ",".join(str(v) for v in value)]
        else:
            args += [on, str(value)]
    return args

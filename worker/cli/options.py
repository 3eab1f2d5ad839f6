"""Command-line options made from settings fields, and the one-line way every verb fails.

A verb's options are its settings object's fields (`options_from`): the flag is the field's name
(`--max-wait-ms` for `max_wait_ms`) unless the field names another in `json_schema_extra`
(`{"flag": "--redis"}`), the help line is the field's description, choices come from
`json_schema_extra["choices"]`, and a number's range from the field's bounds (`ge`, `le`, `gt`,
`lt`), so click refuses `--chunk-size 0` before anything runs.  Every option defaults to None, so
only the flags given override the environment (`VECQ_*`) and the field defaults.

Every error a verb shows is one line on stderr, `vecq: ...`: its own failures (`fail`), and
click's usage errors too (`OneLineCommand`), which click would print as a usage block, a hint
and the error.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import annotated_types
import click
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> None:
    """One line on stderr, then exit (2: a usage error no restart can fix)."""
    click.echo(f"vecq: {message}", err=True)
    raise SystemExit(code)


class OneLineError(click.ClickException):
    """A usage error shown as vecq shows every error: one line, exit 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"vecq: {self.format_message()}", err=True, file=file)


class OneLineCommand(click.Command):
    """A click command whose usage errors (a missing file, a bad number, an unknown option) are
    one line naming the option, not click's usage block: `vecq: Invalid value for
    '--chunk-size': 0 is not in the range 1<=x<=4096.`"""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise OneLineError(exc.format_message()) from None


def command(**kwargs: Any) -> Callable[[F], click.Command]:
    """`click.command` of a `OneLineCommand`: every verb is made with it."""
    return click.command(cls=OneLineCommand, **kwargs)  # type: ignore[return-value]


def settings_or_fail(cls: type[BaseModel], given: dict[str, object]) -> Any:
    """`cls(**given)`, or the first validation error as one line naming the flag (or, for a
    value from the environment, the `VECQ_*` variable) the user set, not the field."""
    try:
        return cls(**given)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        field = err["loc"][0] if err["loc"] else None
        if not isinstance(field, str) or field not in cls.model_fields:
            fail(msg)  # a check across fields names its flags itself
        if field in given or not isinstance(cls.model_config.get("env_prefix"), str):
            where = flag_of(field, cls.model_fields[str(field)]).partition("/")[0]
        else:
            where = f"{cls.model_config['env_prefix']}{str(field).upper()}"
        fail(f"{where}: {msg} (got {err['input']!r})")


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
        click_type = _ranged(kind, info)
    else:
        click_type = str  # tuples (lanes) parse from a comma list in the field's validator
    return click.option(
        flag, name, type=click_type, default=None, required=info.is_required(), help=help_text
    )


def _ranged(kind: type, info: FieldInfo) -> Any:
    """`int`/`float`, or click's range type when the field has bounds (`ge=1` -> `IntRange(1)`)."""
    bounds: dict[str, Any] = {}
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            bounds["min"] = m.ge
        elif isinstance(m, annotated_types.Gt):
            bounds.update(min=m.gt, min_open=True)
        elif isinstance(m, annotated_types.Le):
            bounds["max"] = m.le
        elif isinstance(m, annotated_types.Lt):
            bounds.update(max=m.lt, max_open=True)
    if not bounds:
        return kind
    return click.IntRange(**bounds) if kind is int else click.FloatRange(**bounds)


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

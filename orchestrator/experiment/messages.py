"""A spec's mistakes in the house's words: one line, 'field.path: problem' (SpecError), pydantic's included.

The corpus of bad specs (tests/bad_specs) pins these words; pydantic's own wording ("Input
should be a valid integer") may change between releases, and is translated here only.
A rule of a section reports its own place below the section with ``rule(at, message)``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError


class SpecError(ValueError):
    """A spec that cannot run; the message names the field and the problem."""


def rule(at: str, message: str) -> PydanticCustomError:
    """A broken rule of a section, reported at ``at`` below the section (e.g. ``runs[0].modes``)."""
    return PydanticCustomError("rule", message.replace("{", "{{").replace("}", "}}"), {"at": at})


# fields whose bad value is "unknown X"
_NOUNS = {"dataset": "dataset", "network": "network", "modes": "mode", "test_rules": "test rule"}


def _path(loc: tuple, at: str = "") -> str:
    text = ""
    for i, step in enumerate(loc):
        text += f"[{step}]" if isinstance(step, int) and i else (f".{step}" if text else str(step))
    if at:
        text += at if at.startswith("[") or not text else f".{at}"
    return text


@lru_cache(maxsize=8)
def _schema(model: type) -> dict:
    return TypeAdapter(model).json_schema()


def _allowed_keys(model: type, loc: tuple) -> list[str]:
    """The keys ``model``'s schema allows where ``loc`` points (best effort: [] if the walk is lost)."""
    schema = root = _schema(model)
    for step in loc:
        while True:
            if "$ref" in schema:
                schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
            elif "anyOf" in schema:
                schema = next((s for s in schema["anyOf"] if s.get("type") != "null"), {})
            else:
                break
        schema = schema.get("items", {}) if isinstance(step, int) else schema.get("properties", {}).get(step, {})
    while "$ref" in schema or "anyOf" in schema:
        schema = (root["$defs"][schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in schema
                  else next((s for s in schema["anyOf"] if s.get("type") != "null"), {}))
    return sorted(schema.get("properties", {}))


def _got(value: Any) -> str:
    return "a boolean" if isinstance(value, bool) else f"{type(value).__name__} {value!r}"[:120]


def _problem(e: dict, loc: tuple, model: type) -> str:
    kind, value, ctx = e["type"], e.get("input"), e.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        allowed = _allowed_keys(model, loc[:-1])
        return f"unknown key (allowed: {', '.join(allowed)})" if allowed else "unknown key"
    if kind in ("model_type", "model_attributes_type", "dict_type", "dataclass_type"):
        return f"must be a mapping, got {type(value).__name__}"
    if kind in ("list_type", "tuple_type"):
        return f"must be list, got {type(value).__name__}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be int, got {_got(value)}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, got {_got(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be bool, got {_got(value)}"
    if kind == "string_type":
        return f"must be str, got {_got(value)}"
    if kind == "literal_error":
        choices = ctx.get("expected", "").replace("'", "")
        if not isinstance(value, str):
            return f"must be str, got {_got(value)}"
        noun = _NOUNS.get(next((s for s in reversed(loc) if isinstance(s, str)), ""))
        if noun:
            return f"unknown {noun} {value!r} (known: {choices.replace(' or ', ', ')})"
        return f"must be {choices}, got {value!r}"
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length", ctx.get("max_length"))
        return f"must hold {'at least' if kind == 'too_short' else 'at most'} {bound} items, got {ctx.get('actual_length')}"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", e["msg"]))
    return e["msg"]


def one_line(error: ValidationError, model: type, where: str = "") -> str:
    """The first error of validating ``model`` as 'field.path: problem'; ``where`` prefixes the path
    of a config validated inside a section."""
    e = error.errors(include_url=False)[0]
    loc = tuple(e["loc"])
    path = _path(loc, (e.get("ctx") or {}).get("at", ""))
    if where:
        path = f"{where}.{path}" if path and not path.startswith("[") else where + path
    return f"{path or 'spec'}: {' '.join(_problem(e, loc, model).split())}"

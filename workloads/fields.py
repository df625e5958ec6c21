"""Typed, bounded fields shared by every config (networks, recipes, specs): one home per bound.

pydantic checks types and bounds; the bounds also land in the JSON schema (``unravel schema``).
Types are strict (a boolean is not a count, "3" is not a number) because a spec is written by
hand and a silent coercion hides a typo. A bound is broken with one message shape,
"must be between LOW and HIGH, got VALUE", which the spec module turns into its one-line errors.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import ConfigDict, Strict
from pydantic_core import PydanticCustomError, core_schema


def _number(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


@dataclass(frozen=True)
class Between:
    """Annotated metadata: LOW <= value <= HIGH (finite), in the schema as minimum/maximum."""

    low: float
    high: float

    def check(self, value: Any) -> Any:
        finite = not isinstance(value, float) or math.isfinite(value)
        if not finite or not self.low <= value <= self.high:
            kind = "a number " if isinstance(self.low, float) or isinstance(self.high, float) else ""
            raise PydanticCustomError("between", "must be {kind}between {low} and {high}, got {value}",
                                      {"kind": kind, "low": _number(self.low), "high": _number(self.high),
                                       "value": value})
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema, handler) -> dict:
        js = handler(schema)
        js.update(minimum=self.low, maximum=self.high)
        return js


def count(low: int, high: int):
    """A whole number in [low, high]."""
    return Annotated[int, Strict(), Between(low, high)]


def number(low: float, high: float):
    """A finite real number in [low, high] (a whole number is accepted too)."""
    return Annotated[float, Strict(), Between(float(low), float(high))]


def _whole_above_one(value: float) -> float:
    if value > 1 and value != int(value):
        raise PydanticCustomError("whole", "above 1 must be a whole number, got {value}", {"value": value})
    return value


class _WholeAboveOne:
    def __get_pydantic_core_schema__(self, source: Any, handler) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(_whole_above_one, handler(source))


# a resource request: Ray splits one CPU or GPU, not two and a half
Amount = Annotated[float, Strict(), Between(0.0, 10_000.0), _WholeAboveOne()]
Flag = Annotated[bool, Strict()]
Text = Annotated[str, Strict()]

# configs written by hand: unknown keys are mistakes; models frozen so they hash and key caches
# (dataclasses get frozen=True from their decorator)
FORBID = ConfigDict(extra="forbid")
STRICT = ConfigDict(extra="forbid", frozen=True)


class JsonConfig:
    """A config dataclass that is stored as JSON beside every checkpoint and result row."""

    _noun = "config"   # names the config in the unknown-field message

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict):
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown {cls._noun} field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

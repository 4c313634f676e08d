"""Rules for settings read from flags and YAML files: each says what it accepts and checks one value.

A settings group is a table {name: rule}; `check_settings` walks it. Each refusal is one line:
the setting's name, what it accepts, and the value received. Numbers must be finite; a boolean
is not an integer (YAML's `true` is not 1); an integer setting takes no float (8.0) or string
("8"). A number setting takes an integer, a float, or a string that spells a float: YAML 1.1
reads `1e-6` (no dot) as the string "1e-6", and a learning rate written so means that number.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

__all__ = [
    "Integer", "Number", "Flag", "Choice", "Text", "TextList", "Integers", "NumberRange",
    "check_settings", "shown",
]

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 6
_REPR.maxlevel = 2


def shown(value: Any, typed: bool = False) -> str:
    """A received value, short and on one line: "0", "nan", "'abc'"; `typed` adds its type
    ("float 2.5", "bool True"), for a value of the wrong kind."""
    if value is None:
        return "null"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        # repr() of a huge integer is long (and refused past 4300 digits).
        text = f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
        return ("int " if typed else "") + text
    text = _REPR.repr(value)
    return f"{type(value).__name__} {text}" if typed else text


class Rule:
    """What a setting accepts. `convert` returns the value as the program uses it, or None when
    the value is of the right kind but out of range; `fits` says whether the kind is right."""

    optional = False

    def accepted(self) -> str:
        raise NotImplementedError

    def fits(self, value) -> bool:
        raise NotImplementedError

    def convert(self, value):
        return value

    def check(self, name: str, value):
        if value is None and self.optional:
            return None
        accepted = self.accepted() + (" (or null)" if self.optional else "")
        if value is None or not self.fits(value):
            raise TypeError(f"{name}: expected {accepted}, got {self.describe(value, typed=True)}")
        converted = self.convert(value)
        if converted is None:
            raise ValueError(f"{name}: expected {accepted}, got {self.describe(value)}")
        return converted

    def describe(self, value, typed: bool = False) -> str:
        return shown(value, typed)


def _bound(value: float | int) -> str:
    if isinstance(value, int) and value >= 10**6 and math.log10(value).is_integer():
        return f"10**{round(math.log10(value))}"
    if isinstance(value, int) and value == 2**32 - 1:
        return "2**32 - 1"
    return repr(value) if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Integer(Rule):
    low: int
    high: int
    optional: bool = False

    def accepted(self) -> str:
        return f"an integer from {_bound(self.low)} to {_bound(self.high)}"

    def fits(self, value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    def convert(self, value):
        return value if self.low <= value <= self.high else None


@dataclass(frozen=True)
class Number(Rule):
    low: float
    high: float
    low_open: bool = False
    optional: bool = False

    def accepted(self) -> str:
        return f"a finite number {'>' if self.low_open else '>='} {_bound(self.low)} and <= {_bound(self.high)}"

    def fits(self, value) -> bool:
        return _number(value) is not None

    def convert(self, value):
        number = _number(value)
        if not math.isfinite(number):
            return None
        if number < self.low or (self.low_open and number == self.low) or number > self.high:
            return None
        return value if isinstance(value, (int, float)) else number


def _number(value) -> float | None:
    """A real number from an int, a float or a string spelling a float; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:  # past float's range: a "huge" number, refused as out of range
            return math.inf
    return value if isinstance(value, float) else None


@dataclass(frozen=True)
class Flag(Rule):
    def accepted(self) -> str:
        return "true or false"

    def fits(self, value) -> bool:
        return isinstance(value, bool)


@dataclass(frozen=True)
class Choice(Rule):
    options: tuple[str, ...]
    optional: bool = False

    def accepted(self) -> str:
        return "one of " + ", ".join(self.options)

    def fits(self, value) -> bool:
        return isinstance(value, str)

    def convert(self, value):
        return value if value in self.options else None


@dataclass(frozen=True)
class Text(Rule):
    """A non-empty string (a path, a model id); `secret` keeps the value out of the message."""

    optional: bool = False
    secret: bool = False

    def accepted(self) -> str:
        return "a non-empty string"

    def fits(self, value) -> bool:
        return isinstance(value, str)

    def convert(self, value):
        return value if value.strip() else None

    def describe(self, value, typed: bool = False) -> str:
        if self.secret and value is not None:
            return f"a {type(value).__name__} (not shown)" if typed else "a blank string"
        return shown(value, typed)


@dataclass(frozen=True)
class TextList(Rule):
    min_length: int = 0

    def accepted(self) -> str:
        return f"a list of at least {self.min_length} non-empty strings" if self.min_length else "a list of strings"

    def fits(self, value) -> bool:
        return isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)

    def convert(self, value):
        if len(value) < self.min_length or not all(item.strip() for item in value):
            return None
        return tuple(value)


@dataclass(frozen=True)
class Integers(Rule):
    """A list of integers each from `low` to `high` (and a multiple of `multiple`), of 1 to `max_length` items."""

    low: int
    high: int
    max_length: int
    multiple: int = 1

    def accepted(self) -> str:
        each = f"an integer from {self.low} to {self.high}" + (f", a multiple of {self.multiple}" if self.multiple > 1 else "")
        return f"a list of 1 to {self.max_length} items, each {each}"

    def fits(self, value) -> bool:
        return isinstance(value, (list, tuple)) and all(Integer(self.low, self.high).fits(v) for v in value)

    def convert(self, value):
        if not 1 <= len(value) <= self.max_length:
            return None
        if any(not self.low <= v <= self.high or v % self.multiple for v in value):
            return None
        return list(value)


@dataclass(frozen=True)
class NumberRange(Rule):
    """A [low, high] pair of finite numbers with low <= high, both within the rule's bounds."""

    low: float
    high: float
    low_open: bool = False

    def accepted(self) -> str:
        return f"a pair [low, high] with {_bound(self.low)} {'<' if self.low_open else '<='} low <= high <= {_bound(self.high)}"

    def fits(self, value) -> bool:
        return isinstance(value, (list, tuple)) and all(_number(v) is not None for v in value)

    def convert(self, value):
        if len(value) != 2:
            return None
        bounds = Number(self.low, self.high, self.low_open)
        pair = [bounds.convert(v) for v in value]
        if None in pair or float(pair[0]) > float(pair[1]):
            return None
        return pair


def check_settings(
    values: Mapping[str, Any], rules: Mapping[str, Rule], name_of: Callable[[str], str] = str
) -> dict[str, Any]:
    """Each of `values` checked by its rule (keys without one are left to the caller);
    returns the converted values. `name_of` spells a key as the user gave it (a flag, say)."""
    return {key: rules[key].check(name_of(key), value) if key in rules else value for key, value in values.items()}

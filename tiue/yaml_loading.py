"""Reading settings files (`tiue train --config`, `tiue world train --config`) safely and fast.

Plain YAML only (mappings, lists, strings, numbers, booleans): no tag builds a Python object,
as with yaml.safe_load. On top of that, a document may not expand past MAX_NODES values once
its aliases are followed (nested anchors make a few lines stand for billions of values, and
merge keys, `<<: [*a, *a]`, make the loader itself copy them), may not refer to itself, nor
nest past MAX_DEPTH; a file may not exceed MAX_BYTES; and a mapping may not give one key
twice. Every refusal is one line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["load_settings_file", "load_settings_text", "SettingsFileError", "MAX_BYTES", "MAX_NODES", "MAX_DEPTH"]

# A settings file is a few kilobytes; these bounds leave room for long prompt lists.
MAX_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 64


class SettingsFileError(ValueError):
    """A settings file that cannot be read as plain, bounded YAML (one line, naming it)."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that measures the composed document before building anything from it."""

    _depth = 0

    def compose_node(self, parent, index):
        # The composer recurses once per level: stop at MAX_DEPTH, long before Python's limit.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nests deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: Node) -> None:
    """Count the values the document stands for, each alias as a full copy of its anchor.

    Sizes are memoised per node, so the count costs one visit per written node however large
    the expansion is; an alias back into a node still being counted is a cycle."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        if depth > MAX_DEPTH:
            raise _problem(f"nests deeper than {MAX_DEPTH} levels", node)
        children = _children(node)
        if key not in open_nodes:
            _check_keys_once(node)
            open_nodes.add(key)
            stack.append((node, depth))
            for child in children:
                if id(child) in open_nodes:
                    raise _problem("an alias refers to a value that contains it (a cycle)", child)
                if id(child) not in sizes:
                    stack.append((child, depth + 1))
            continue
        open_nodes.discard(key)
        sizes[key] = 1 + sum(sizes[id(child)] for child in children)
        if sizes[key] > MAX_NODES:
            raise _problem(f"expands to more than {MAX_NODES} values once its aliases are followed", node)


def _check_keys_once(node: Node) -> None:
    # Checked on the written document, before merge keys (`<<`) copy keys in: an explicit key
    # may still override a merged one.
    if not isinstance(node, MappingNode):
        return
    seen = set()
    for key_node, _ in node.value:
        if isinstance(key_node, ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            if (key_node.tag, key_node.value) in seen:
                raise _problem(f"key {key_node.value!r} given twice (keep one)", key_node)
            seen.add((key_node.tag, key_node.value))


def _problem(text: str, node: Node) -> yaml.YAMLError:
    return yaml.composer.ComposerError(None, None, text, node.start_mark)


def _one_line(error: yaml.YAMLError) -> str:
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"line {mark.line + 1}: {problem}" if mark is not None else problem


def load_settings_text(text: str, where: str) -> Any:
    """The value a YAML text spells, bounded as above; `where` names it in errors."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        problem = _one_line(error)
        if "could not determine a constructor" in problem:
            problem += " (plain YAML only: mappings, lists, strings, numbers, true/false; no tags)"
        raise SettingsFileError(f"{where}: not valid settings YAML: {problem}") from None
    except RecursionError:  # the composer recurses once per level, before our depth check sees the node
        raise SettingsFileError(f"{where}: not valid settings YAML: nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as error:  # e.g. an integer of more digits than Python converts
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SettingsFileError(f"{where}: not valid settings YAML: {detail}") from None


def load_settings_file(path: str | Path, flag: str = "--config") -> dict[str, Any]:
    """A settings file's mapping (an empty file is an empty mapping); errors name `flag` and the file."""
    path = Path(path)
    if not path.is_file():
        raise SettingsFileError(f"{flag}: no such file: {path}")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise SettingsFileError(f"{flag}: {path} is {size} bytes; a settings file may hold at most {MAX_BYTES}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise SettingsFileError(f"{flag}: {path} is not UTF-8 text (byte {error.start})") from None
    data = load_settings_text(text, f"{flag} {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a single value ({type(data).__name__})"
        raise SettingsFileError(f"{flag}: {path} must hold a mapping of settings (key: value lines), got {kind}")
    return data

"""YAML loading that remembers where every value came from.

Config errors must name ``file:line``; PyYAML's composed node tree carries the
marks, so we build plain Python data from it ourselves and keep a map from the
path of each value (a tuple of keys and indices) to its 1-based line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(Exception):
    """A user-facing configuration problem, printed as one line."""

    def __init__(self, path: str | Path, line: int | None, field_path: str, problem: str, allowed: str | None = None):
        self.path = str(path)
        self.line = line
        self.field_path = field_path
        self.problem = problem
        self.allowed = allowed
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        msg = f"{where}: {self.field_path or '<document>'}: {self.problem}"
        if self.allowed:
            msg += f" (allowed: {self.allowed})"
        return msg


@dataclass
class Located:
    """Data loaded from one YAML document plus the line of every value."""

    path: str
    data: Any
    lines: dict[tuple, int] = field(default_factory=dict)
    text: str = ""

    def line_of(self, loc: tuple) -> int | None:
        """Line of ``loc`` or of its closest ancestor that has one."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), 1)


def _build(loader: yaml.SafeLoader, node: yaml.Node, loc: tuple, lines: dict, path: str) -> Any:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        loader.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise ConfigError(path, key_node.start_mark.line + 1, _dotted(loc), "mapping keys must be scalars")
            if key in out:
                raise ConfigError(path, key_node.start_mark.line + 1, _dotted(loc + (key,)), "duplicate key")
            out[key] = _build(loader, value_node, loc + (key,), lines, path)
            # A key's own line is where the user typed it; prefer it over the value's.
            lines[loc + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, loc + (i,), lines, path) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _dotted(loc: tuple) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts)


dotted = _dotted


def load_located(path: str | Path, text: str | None = None) -> Located:
    """Parse one YAML file into :class:`Located`; syntax errors become ConfigError."""
    path = str(path)
    if text is None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(path, None, "", "file not found") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(path, None, "", f"not UTF-8 text ({exc.reason})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[tuple, int] = {}
        data = {} if node is None else _build(loader, node, (), lines, path)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(path, line, "", f"YAML syntax error: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, None, "", f"YAML error: {exc}") from None
    finally:
        loader.dispose()
    return Located(path=path, data=data, lines=lines, text=text)

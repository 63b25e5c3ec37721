"""YAML loading that remembers where every value came from, and survives hostile input.

Config errors must name ``file:line``; PyYAML's composed node tree carries the
marks, so we build plain Python data from it ourselves and keep a map from the
path of each value (a tuple of keys and indices) to its 1-based line.

Building the data ourselves is also where hostile input is stopped: a config
file is small, so everything about it is bounded (file size, nesting depth,
alias uses, values and characters after aliases are expanded) and every
failure, PyYAML's or Python's, becomes one :class:`ConfigError` with a line.
Merge keys (``<<: *anchor``) are resolved here too, with the same budget, so
that a many-node lab file can share one transport block.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: a configuration file larger than this is refused (typical files are < 10 KiB; PyYAML's
#: pure-Python parser needs up to ~1 s per 64 KiB of dense flow lists, and `validate` must stay < 2 s)
MAX_FILE_BYTES = 64 * 1024
#: nesting of collections, in the text and after aliases and merges are followed
MAX_DEPTH = 64
#: alias uses followed while building (an alias inside expanded content counts again)
MAX_ALIASES = 4096
#: values (scalars and collections) in the built document, aliases expanded
MAX_VALUES = 200_000
#: characters of strings and keys in the built document, aliases expanded
MAX_CHARS = 4 * 1024 * 1024

_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
# C0 controls but tab/newline/CR, DEL, C1 controls and lone surrogates (not encodable as UTF-8)
_BAD_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_BREAKS = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


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
        return _one_line(msg)


def _one_line(s: str, limit: int = 1000) -> str:
    """Escape breaks and controls (a hostile key or path must not forge extra lines) and cap the length."""
    s = _BAD_CHAR.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}",
                      s.replace("\r", "\\r").replace("\n", "\\n"))
    return s if len(s) <= limit else s[:limit - 3] + "..."


def short_repr(v: Any, limit: int = 60) -> str:
    """``repr`` for error messages, cut to ``limit`` characters."""
    r = repr(v)
    return r if len(r) <= limit else r[:limit - 3] + "..."


@dataclass
class Located:
    """Data loaded from one YAML document plus the line of every value."""

    path: str
    data: Any
    lines: dict[tuple, int] = field(default_factory=dict)
    text: str = ""
    #: source character span (start, end) of every scalar value, for redacting the text in place
    spans: dict[tuple, tuple[int, int]] = field(default_factory=dict)

    def line_of(self, loc: tuple) -> int | None:
        """Line of ``loc`` or of its closest ancestor that has one."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), 1)


class _Alias(yaml.Node):
    """An alias use: the anchored node plus where the alias itself was written.

    PyYAML's composer returns the anchored node itself, losing the alias's
    position and making recursive anchors into cycles; the wrapper keeps both
    visible to the builder.
    """

    id = "alias"

    def __init__(self, target: yaml.Node, mark: Any):
        super().__init__(target.tag, target, mark, mark)


class _Stop(Exception):
    """A limit was hit or a value is unusable: becomes a ConfigError at ``line``.

    ``budget`` errors (size, depth) are moved to the outermost alias being
    expanded: that is the line whose expansion is too big, not a line inside
    the anchor.
    """

    def __init__(self, line: int | None, problem: str, loc: tuple = (), budget: bool = False):
        self.line, self.problem, self.loc, self.budget = line, problem, loc, budget


class _Loader(yaml.SafeLoader):
    """SafeLoader whose composer is depth-capped (it recurses) and keeps alias positions."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            return _Alias(super().compose_node(parent, index), mark)
        if self._depth >= MAX_DEPTH:
            raise _Stop(self.peek_event().start_mark.line + 1, f"nested deeper than {MAX_DEPTH} levels")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Builder:
    """Plain data from a node graph, within the budget; records lines and scalar spans."""

    def __init__(self, loader: _Loader):
        self.loader = loader
        self.lines: dict[tuple, int] = {}
        self.spans: dict[tuple, tuple[int, int]] = {}
        self.aliases = 0
        self.values = 0
        self.chars = 0
        self.depth = 0
        self.alias_depth = 0
        self.active: set[int] = set()  # ids of collections being built: reaching one again is a cycle

    def _charge(self, node: yaml.Node, n_chars: int = 0) -> None:
        self.values += 1
        self.chars += n_chars
        if self.values > MAX_VALUES:
            raise _Stop(_line(node), f"more than {MAX_VALUES} values once aliases are expanded", budget=True)
        if self.chars > MAX_CHARS:
            raise _Stop(_line(node), f"more than {MAX_CHARS} characters once aliases are expanded", budget=True)

    def build(self, node: yaml.Node, loc: tuple, lines: dict, spans: dict) -> Any:
        if isinstance(node, _Alias):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _Stop(_line(node), f"more than {MAX_ALIASES} alias uses once aliases are expanded", loc,
                            budget=True)
            target = node.value
            if id(target) in self.active:
                raise _Stop(_line(node), "alias refers to a collection that contains it (recursive anchor)", loc)
            self.alias_depth += 1
            try:
                value = self.build(target, loc, lines, spans)
            except _Stop as exc:
                if exc.budget and self.alias_depth == 1:
                    exc.line, exc.loc = _line(node), loc
                raise
            finally:
                self.alias_depth -= 1
            lines[loc] = _line(node)  # an error about the value as a whole points at the alias
            return value
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _Stop(_line(node), f"nested deeper than {MAX_DEPTH} levels (aliases and merges included)", loc,
                            budget=True)
            lines[loc] = _line(node)
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, loc, lines, spans)
            if isinstance(node, yaml.SequenceNode):
                self._charge(node)
                self.active.add(id(node))
                try:
                    out = []
                    for i, item in enumerate(node.value):
                        out.append(self.build(item, loc + (i,), lines, spans))
                    return out
                finally:
                    self.active.discard(id(node))
            value = self.scalar(node, loc)
            spans[loc] = (node.start_mark.index, node.end_mark.index)
            return value
        finally:
            self.depth -= 1

    def scalar(self, node: yaml.Node, loc: tuple) -> Any:
        if node.tag == _TIMESTAMP_TAG:
            value: Any = node.value  # a date-looking string stays a string: no field here is a date
        else:
            try:
                value = self.loader.construct_object(node, deep=True)
            except yaml.YAMLError:
                raise
            except Exception as exc:  # e.g. an int beyond 4300 digits, `!!bool maybe`: one value, one message
                raise _Stop(_line(node), f"unusable value ({_first_line(exc)})", loc) from None
        if isinstance(value, str):
            bad = _BAD_CHAR.search(value)
            if bad:
                raise _Stop(_line(node), f"control character U+{ord(bad.group()):04X} in a string "
                                         "(allowed: printable text, tab, newline)", loc)
        self._charge(node, len(value) if isinstance(value, (str, bytes)) else 0)
        return value

    def _key(self, key_node: yaml.Node, loc: tuple) -> Any:
        target = key_node.value if isinstance(key_node, _Alias) else key_node
        if not isinstance(target, yaml.ScalarNode):
            raise _Stop(_line(key_node), "mapping keys must be scalars", loc)
        key = self.scalar(target, loc)
        if isinstance(key, float) and not math.isfinite(key):
            raise _Stop(_line(key_node), "mapping keys must be finite", loc)
        if not isinstance(key, (str, int, float, bool)):
            raise _Stop(_line(key_node), "mapping keys must be strings or numbers", loc)
        return key

    def _mapping(self, node: yaml.MappingNode, loc: tuple, lines: dict, spans: dict) -> dict:
        self._charge(node)
        self.active.add(id(node))
        try:
            out: dict = {}
            merged: dict = {}
            merged_lines: dict[tuple, int] = {}
            merged_spans: dict[tuple, tuple[int, int]] = {}
            merge_seen = False
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG and not isinstance(key_node, _Alias):
                    if merge_seen:
                        raise _Stop(_line(key_node), "duplicate key", loc + ("<<",))
                    merge_seen = True
                    self._merge(value_node, loc, merged, merged_lines, merged_spans)
                    continue
                key = self._key(key_node, loc)
                if key in out:
                    raise _Stop(_line(key_node), "duplicate key", loc + (key,))
                out[key] = self.build(value_node, loc + (key,), lines, spans)
                # A key's own line is where the user typed it; prefer it over the value's.
                lines[loc + (key,)] = _line(key_node)
            if merged:
                n = len(loc)
                for p, ln in merged_lines.items():
                    if len(p) > n and p[n] not in out:
                        lines[p] = ln
                for p, sp in merged_spans.items():
                    if len(p) > n and p[n] not in out:
                        spans[p] = sp
                out = {**{k: v for k, v in merged.items() if k not in out}, **out}
            return out
        finally:
            self.active.discard(id(node))

    def _merge(self, value_node: yaml.Node, loc: tuple, merged: dict, mlines: dict, mspans: dict) -> None:
        """``<<: *a`` or ``<<: [*a, *b]``: keys not yet present are taken, the first source winning."""
        target = value_node.value if isinstance(value_node, _Alias) else value_node
        sources = [value_node] if isinstance(target, yaml.MappingNode) else None
        if sources is None and isinstance(target, yaml.SequenceNode) and not isinstance(value_node, _Alias):
            sources = list(target.value)
        if not sources or not all(isinstance(s.value if isinstance(s, _Alias) else s, yaml.MappingNode)
                                  for s in sources):
            raise _Stop(_line(value_node), "a merge key '<<' takes a mapping or a list of mappings "
                                           "(e.g. <<: *anchor or <<: [*a, *b])", loc + ("<<",))
        for src in sources:
            slines: dict[tuple, int] = {}
            sspans: dict[tuple, tuple[int, int]] = {}
            data = self.build(src, loc, slines, sspans)
            n = len(loc)
            for k, v in data.items():
                if k in merged:
                    continue
                merged[k] = v
            for p, ln in slines.items():
                if len(p) > n and p not in mlines:
                    mlines[p] = ln
            for p, sp in sspans.items():
                if len(p) > n and p not in mspans:
                    mspans[p] = sp


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _first_line(exc: BaseException) -> str:
    s = str(exc).strip().splitlines()
    return s[0] if s else type(exc).__name__


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


def _dotted(loc: tuple) -> str:
    """``nodes.edge.transport``; a key that is not a plain name is shown quoted: ``nodes['../x']``."""
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int) and not isinstance(p, bool):
            parts.append(f"[{p}]")
        elif isinstance(p, str) and _PLAIN_KEY.match(p):
            parts.append(("." if parts else "") + p)
        else:
            parts.append(f"[{short_repr(p)}]")
    return "".join(parts)


dotted = _dotted


def line_at(text: str, index: int) -> int:
    """1-based line of character ``index``, counting breaks the way PyYAML's marks do."""
    return len(_BREAKS.findall(text, 0, max(0, min(index, len(text))))) + 1


def read_config_bytes(path: str | Path) -> bytes:
    """The file's bytes, refusing what is not a small regular file (a FIFO would block, /dev/zero never ends)."""
    p = str(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise ConfigError(p, None, "", "file not found") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(p, None, "", f"cannot read ({_first_line(exc)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(p, None, "", "not a regular file")
    try:
        with open(p, "rb") as f:
            return f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(p, None, "", f"cannot read ({exc.strerror or _first_line(exc)})") from None


def decode_config(path: str, data: bytes) -> str:
    """UTF-8 (an optional BOM is dropped); the first bad byte is reported with its line."""
    if len(data) > MAX_FILE_BYTES:
        line = line_at(data[:MAX_FILE_BYTES].decode("utf-8", "replace"), MAX_FILE_BYTES)
        raise ConfigError(path, line, "", f"file larger than {MAX_FILE_BYTES // 1024} KiB")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = line_at(data[:exc.start].decode("utf-8", "replace"), exc.start)
        raise ConfigError(path, line, "", f"not UTF-8 text (byte 0x{data[exc.start]:02x}: {exc.reason})") from None


_cache: tuple[tuple[str, str], Located] | None = None


def load_located(path: str | Path, text: str | bytes | None = None) -> Located:
    """Parse one YAML file (or ``text`` standing for it) into :class:`Located`.

    Every problem, including limits, becomes a ConfigError. The last good
    parse is kept, so ``validate`` (kind detection, then loading) parses once.
    """
    global _cache
    path = str(path)
    if text is None:
        text = read_config_bytes(path)
    if isinstance(text, (bytes, bytearray)):
        text = decode_config(path, bytes(text))
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(path, line_at(text, MAX_FILE_BYTES), "", f"file larger than {MAX_FILE_BYTES // 1024} KiB")
    if _cache is not None and _cache[0] == (path, text):
        return _cache[1]
    src = _parse(path, text)
    _cache = ((path, text), src)
    return src


def _parse(path: str, text: str) -> Located:
    loader = None
    try:
        loader = _Loader(text)  # the reader checks for unprintable characters right here
        node = loader.get_single_node()
        b = _Builder(loader)
        data = {} if node is None else b.build(node, (), b.lines, b.spans)
    except _Stop as exc:
        raise ConfigError(path, exc.line or 1, dotted(exc.loc), exc.problem) from None
    except yaml.reader.ReaderError as exc:
        ch = exc.character
        what = f"U+{ch:04X}" if isinstance(ch, int) else repr(ch)
        raise ConfigError(path, line_at(text, exc.position), "",
                          f"control character {what} is not allowed in YAML") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        what = (exc.problem or exc.context or "invalid YAML").strip().splitlines()
        raise ConfigError(path, line, "", f"YAML syntax error: {what[0] if what else 'invalid YAML'}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, 1, "", f"YAML error: {_first_line(exc)}") from None
    except RecursionError:  # belt and braces: the depth caps keep recursion far below the limit
        raise ConfigError(path, 1, "", f"nested deeper than {MAX_DEPTH} levels") from None
    finally:
        if loader is not None:
            loader.dispose()
    return Located(path=path, data=data, lines=b.lines, text=text, spans=b.spans)

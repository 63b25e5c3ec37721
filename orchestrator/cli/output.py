"""The command line's output convention, shared by every sub-command.

* ``--json`` is a switch: the command's result goes to stdout as one JSON
  document (sorted keys, NaN/inf as null, paths and other objects as strings)
  and *nothing else* goes to stdout; progress and notes go to stderr.
* ``--output PATH`` / ``-o PATH`` takes a path: where the command writes its
  product (a file, or a directory for ``report`` and ``eval-codecs``). It never
  changes what goes to stdout.
* No option is sometimes a switch and sometimes a file.
* Exit status is unchanged by either: 0 ok, 1 a run failed or a regression,
  2 bad input (one line on stderr, also with ``--json``).

Typical use::

    add_json_flag(p); add_output(p)
    ...
    emit(args, {"run_dir": ..., "state": ...}, lambda d: con.print(table))
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

JSON_HELP = "print the result as JSON on stdout (nothing else goes to stdout)"


def add_json_flag(parser, help: str | None = None) -> None:
    """``--json``: a switch, the result as JSON on stdout."""
    parser.add_argument("--json", action="store_true", help=help or JSON_HELP)


def add_output(parser, help: str | None = None, metavar: str = "FILE", short: bool = True,
               dest: str = "output", aliases: tuple[str, ...] = (), required: bool = False) -> None:
    """``--output PATH`` (and ``-o`` unless ``short`` is false): where the result is written."""
    flags = ["--output", *aliases] + (["-o"] if short else [])
    parser.add_argument(*flags, dest=dest, default=None, metavar=metavar, required=required,
                        help=help or "also write the result to this file (JSON; stdout is unchanged)")


def wants_json(args) -> bool:
    return getattr(args, "json", False) is True


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types: NaN/inf become null, numpy scalars and arrays their values, paths strings."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item"):
        try:
            return to_jsonable(obj.item())
        except (TypeError, ValueError):
            pass
    return str(obj)


def dumps(data: Any) -> str:
    return json.dumps(to_jsonable(data), indent=1, sort_keys=True, allow_nan=False, default=str)


def write_json(path: str | Path, data: Any) -> Path:
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(dumps(data) + "\n", encoding="utf-8")
    return p


def emit(args, data: Any, render: Callable[[Any], None] | None = None) -> None:
    """The result: JSON on stdout with ``--json``, else ``render(data)`` (rich tables, plain lines)."""
    if wants_json(args):
        sys.stdout.write(dumps(data) + "\n")
        sys.stdout.flush()
    elif render is not None:
        render(data)


def console(args):
    """A console for human output: stderr when ``--json`` keeps stdout for the JSON document."""
    from hilbed.orchestrator.ui import make_console
    return make_console(stderr=wants_json(args))


def note(args, message: str) -> None:
    """A line for people: stdout normally, stderr with ``--json``."""
    print(message, file=sys.stderr if wants_json(args) else sys.stdout)


def deprecated(message: str) -> None:
    print(f"hilbed: deprecated: {message}", file=sys.stderr)

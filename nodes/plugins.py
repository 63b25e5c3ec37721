"""Plug-in modules: code outside hilbed that registers codecs, link kinds or roles.

A plug-in is a module that registers what it adds when imported (for
example ``@register_link_kind`` on a class, or ``register_role(...)``). The
modules named in ``HILBED_PLUGINS`` (comma-separated) are imported by the
controller's CLI and by every agent before it serves, so a kind's client and
edge sides exist where they run; the controller passes the variable on to
the agents it starts. A plug-in that fails to import is reported with its
name and does not stop the others from loading.
"""

from __future__ import annotations

import importlib
import os
import traceback
from dataclasses import dataclass

ENV = "HILBED_PLUGINS"


@dataclass(frozen=True)
class PluginLoad:
    module: str
    ok: bool
    error: str = ""


_loaded: dict[str, PluginLoad] = {}


def plugin_modules(value: str | None = None) -> list[str]:
    raw = os.environ.get(ENV, "") if value is None else value
    return [m.strip() for m in raw.split(",") if m.strip()]


def load_plugins(value: str | None = None) -> list[PluginLoad]:
    """Import each named module once; returns what happened to each (errors as one line)."""
    out = []
    for name in plugin_modules(value):
        if name not in _loaded:
            try:
                importlib.import_module(name)
                _loaded[name] = PluginLoad(name, True)
            except Exception as exc:  # a broken plug-in must not take the others down
                last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
                where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
                _loaded[name] = PluginLoad(name, False, f"{type(exc).__name__}: {exc}{where}")
        out.append(_loaded[name])
    return out

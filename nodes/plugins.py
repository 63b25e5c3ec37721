"""Plug-ins: code outside hilbed that registers codecs, models, link kinds, roles or datasets.

Two ways in, both loaded by :func:`load_plugins` (the controller's CLI and
every agent call it before they serve, once per process):

- modules named in ``HILBED_PLUGINS`` (comma-separated), imported; the
  controller passes the variable on to the agents it starts;
- entry points of installed packages in the groups of :data:`GROUPS`
  (``importlib.metadata``), so ``pip install`` adds a codec or a model
  without editing hilbed or setting a variable. An entry point names a
  module (it registers when imported), a class (a ``Codec`` subclass in
  ``hilbed.codecs``, a ``LinkKind`` subclass in ``hilbed.link_kinds``: it is
  registered) or a function (called without arguments: it registers).

A plug-in that fails is reported in one line with its module and, for an
entry point, its distribution and version; the others still load.
``HILBED_NO_ENTRY_POINTS=1`` skips the entry points (for isolating a bug).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import traceback
from dataclasses import dataclass

ENV = "HILBED_PLUGINS"
NO_EP_ENV = "HILBED_NO_ENTRY_POINTS"

#: entry-point group -> what its entries add
GROUPS: dict[str, str] = {
    "hilbed.codecs": "codec",
    "hilbed.models": "model",
    "hilbed.link_kinds": "link kind",
    "hilbed.roles": "role",
    "hilbed.datasets": "dataset",
}

#: registries whose new names are reported as what a plug-in registered: label -> (module, dict attribute)
_REGISTRIES = (
    ("codec", "hilbed.nodes.codecs", "CODECS"),
    ("model", "hilbed.nodes.workload.model_specs", "MODEL_PREFIXES"),
    ("dataset", "hilbed.nodes.workload.dataset_specs", "DATASET_PREFIXES"),
    ("link kind", "hilbed.nodes.link.registry", "LINK_KINDS"),
    ("role", "hilbed.orchestrator.roles", "ROLES"),
)


@dataclass(frozen=True)
class PluginLoad:
    """What happened to one plug-in; ``group`` is empty for a HILBED_PLUGINS module."""

    module: str
    ok: bool
    error: str = ""
    group: str = ""
    name: str = ""
    dist: str = ""
    version: str = ""
    registered: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        return f"{self.dist} {self.version}".strip() if self.group else f"${ENV}"


_loaded: dict[str, PluginLoad] = {}
_entry_loads: list[PluginLoad] | None = None


def plugin_modules(value: str | None = None) -> list[str]:
    raw = os.environ.get(ENV, "") if value is None else value
    return [m.strip() for m in raw.split(",") if m.strip()]


def _snapshot() -> dict[str, set[str]]:
    """Names in each registry now; light registries are imported first so their built-ins are not counted."""
    for _, mod, _ in _REGISTRIES[:4]:
        if mod not in sys.modules:
            try:
                importlib.import_module(mod)
            except ImportError:  # a node without Pillow has no codecs to extend
                pass
    out = {}
    for label, mod, attr in _REGISTRIES:
        m = sys.modules.get(mod)
        if m is not None:
            out[label] = set(getattr(m, attr, {}) or {})
    return out


def _added(before: dict[str, set[str]]) -> tuple[str, ...]:
    after = _snapshot()
    return tuple(f"{label} {n}" for label, names in after.items() if label in before
                 for n in sorted(names - before[label]))


def _one_line(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" ({tb[0].filename}:{tb[0].lineno})" if tb else ""
    msg = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {msg}{where}"


def _apply(group: str, obj) -> None:
    """Register what an entry point's object is (see the module docstring)."""
    if inspect.ismodule(obj):
        return
    if isinstance(obj, type):
        if group == "hilbed.codecs":
            from hilbed.nodes.codecs import register_codec
            register_codec(obj)
            return
        if group == "hilbed.link_kinds":
            from hilbed.nodes.link.registry import register_link_kind
            register_link_kind(obj)
            return
        raise TypeError(f"a class in {group} is not registered by hilbed; name a module or a register function")
    if callable(obj):
        obj()
        return
    raise TypeError(f"{type(obj).__name__} object: name a module, a class or a register function")


def _entry_points() -> list:
    from importlib.metadata import entry_points
    every = entry_points()  # one scan of the installed distributions, then a cheap select per group
    seen, out = set(), []
    for group in GROUPS:
        for ep in every.select(group=group):
            dist = getattr(ep, "dist", None)
            key = (group, ep.name, ep.value, dist.metadata["Name"] if dist else "")
            if key not in seen:
                seen.add(key)
                out.append(ep)
    return out


def load_entry_points() -> list[PluginLoad]:
    """Load every installed entry point of :data:`GROUPS` once per process."""
    global _entry_loads
    if _entry_loads is not None:
        return _entry_loads
    loads = []
    try:
        eps = _entry_points()
    except Exception as exc:  # broken metadata of one distribution must not stop hilbed
        eps = []
        loads.append(PluginLoad("importlib.metadata", False, f"entry points unreadable: {_one_line(exc)}"))
    for ep in eps:
        dist = getattr(ep, "dist", None)
        dname = dist.metadata["Name"] if dist is not None else "?"
        version = dist.version if dist is not None else ""
        before = _snapshot()
        try:
            _apply(ep.group, ep.load())
            loads.append(PluginLoad(ep.value, True, "", ep.group, ep.name, dname, version, _added(before)))
        except Exception as exc:  # a broken plug-in must not take the others down
            err = f"package {dname} {version}, entry point {ep.group} {ep.name} = {ep.value}: {_one_line(exc)}"
            loads.append(PluginLoad(ep.value, False, err, ep.group, ep.name, dname, version, _added(before)))
    _entry_loads = loads
    return loads


def load_plugins(value: str | None = None, entry_points: bool | None = None) -> list[PluginLoad]:
    """Import each HILBED_PLUGINS module once, then the installed entry points once; errors as one line.

    ``entry_points=None`` follows ``HILBED_NO_ENTRY_POINTS`` (set: skip them).
    """
    out = []
    for name in plugin_modules(value):
        if name not in _loaded:
            before = _snapshot()
            try:
                importlib.import_module(name)
                _loaded[name] = PluginLoad(name, True, registered=_added(before))
            except Exception as exc:  # a broken plug-in must not take the others down
                _loaded[name] = PluginLoad(name, False, _one_line(exc), registered=_added(before))
        out.append(_loaded[name])
    if entry_points is None:
        entry_points = os.environ.get(NO_EP_ENV, "") in ("", "0")
    if entry_points:
        out.extend(load_entry_points())
    return out

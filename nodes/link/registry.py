"""Link kinds by name: the built-in ones (imported on first use) and any registered later.

Adding a kind: subclass :class:`~hilbed.nodes.link.kind.LinkKind` in one
module and decorate it with :func:`register_link_kind` (a plug-in module
named in ``HILBED_PLUGINS`` is imported by the controller and every agent).
"""

from __future__ import annotations

import importlib

from hilbed.nodes.link.kind import LinkKind

#: built-in kinds, imported on first use so a light client never imports what it does not run
BUILTIN_KINDS: dict[str, str] = {
    "direct": "hilbed.nodes.link.kinds.direct:DirectKind",
    "trace": "hilbed.nodes.link.kinds.trace:TraceKind",
    "tc": "hilbed.nodes.link.kinds.tc:TcKind",
    "radio": "hilbed.nodes.link.kinds.radio:RadioKind",
    "shared-uplink": "hilbed.nodes.link.kinds.shared_uplink:SharedUplinkKind",
}
LINK_KINDS: dict[str, type[LinkKind]] = {}


def register_link_kind(cls: type[LinkKind]) -> type[LinkKind]:
    """Class decorator: make ``cls`` the kind named ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a link kind needs a name")
    known = LINK_KINDS.get(cls.name)
    if (known is not None and known is not cls) or (cls.name in BUILTIN_KINDS and
                                                    not BUILTIN_KINDS[cls.name].startswith(cls.__module__ + ":")):
        raise ValueError(f"link kind {cls.name!r} exists already")
    LINK_KINDS[cls.name] = cls
    return cls


def unregister_link_kind(name: str) -> None:
    if name not in BUILTIN_KINDS:
        LINK_KINDS.pop(name, None)


def link_kind_class(name: str) -> type[LinkKind]:
    if name not in LINK_KINDS and name in BUILTIN_KINDS:
        mod, cls = BUILTIN_KINDS[name].split(":")
        LINK_KINDS[name] = getattr(importlib.import_module(mod), cls)
    try:
        return LINK_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown link kind {name!r} (allowed: {', '.join(link_kind_names())})") from None


def link_kind(name: str) -> LinkKind:
    """A new instance of the kind named ``name`` (ValueError naming the allowed kinds otherwise)."""
    return link_kind_class(name)()


def link_kind_names() -> tuple[str, ...]:
    return tuple(dict.fromkeys([*BUILTIN_KINDS, *LINK_KINDS]))

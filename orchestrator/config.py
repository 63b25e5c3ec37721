"""Validated models of ``testbed.yaml`` and scenario YAML.

Every model forbids unknown keys; :func:`load_testbed` and
:func:`load_scenario` turn the first validation problem into a
:class:`~hilbed.orchestrator.yamlsrc.ConfigError` that names ``file:line``, the field
and what is allowed, so the CLI can print one line and exit 2.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hilbed.nodes.codecs import CodecParamsError, all_codec_names, explicit_params, validate_codec_params
from hilbed.orchestrator.roles import ROLES
from hilbed.orchestrator.yamlsrc import ConfigError, Located, dotted, load_located

LINK_KINDS = ("direct", "trace", "tc", "radio")
DEFAULT_JAMMING_LEVELS = ("none", "light", "heavy")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)


# ----------------------------------------------------------------- testbed ---

class LocalTransportCfg(Strict):
    kind: Literal["local"] = "local"
    python: str | None = Field(None, description="interpreter for agents; default: the controller's own")


_JUMP = re.compile(r"^(?:[^@\s:]+@)?(?:\[[0-9A-Fa-f:.]+\]|[^@\s:\[\]]+)(?::\d{1,5})?$")


class SSHTransportCfg(Strict):
    kind: Literal["ssh"]
    host: str
    user: str | None = Field(None, description="login user; default: the controller's user")
    port: int = Field(22, ge=1, le=65535)
    key_file: str | None = Field(None, description="private key; default: ssh-agent and ~/.ssh/id_*")
    proxy_jump: str | None = Field(None, description="gateway as [user@]host[:port] (user defaults to `user`)")
    known_hosts: str | None = Field(None, description="host keys to check against; default ~/.ssh/known_hosts")
    accept_new_host_keys: bool = Field(False, description="record an unknown host key on first use (never a changed one)")
    keepalive_s: float = Field(15.0, gt=0, description="keepalive interval; 3 unanswered drop the connection")
    python: str = Field("python3", description="the node's interpreter; provisioning makes <workdir>/venv from it")
    workdir: str = Field("~/.hilbed", description="where provisioning puts the venv, wheels, assets and marker")
    sudo: bool = False
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for this node's agents")

    @field_validator("proxy_jump")
    @classmethod
    def _jump(cls, v: str | None) -> str | None:
        if v is not None and not _JUMP.match(v.strip()):
            raise ValueError(f"bad proxy_jump {v!r} (allowed: [user@]host[:port])")
        return v


TransportCfg = Annotated[Union[LocalTransportCfg, SSHTransportCfg], Field(discriminator="kind")]


class RadioCfg(Strict):
    protocol: Literal["spinel", "wuart"]
    port: str = Field(..., description="anything pyserial opens: /dev/serial/by-id/..., socket://h:p, rfc2217://h:p, "
                      "or 'emulated' on the embedded testbed")
    baud: int | None = Field(None, gt=0, description="default: 1000000 for spinel (USB CDC), 230400 for wuart")
    rtscts: bool | None = Field(None, description="default: off for spinel, on for wuart")
    channel: int = Field(15, ge=11, le=26)
    tx_power_dbm: int = Field(0, ge=-40, le=8)
    pan_id: int = Field(0xABCD, ge=0, le=0xFFFF)


class NodeCfg(Strict):
    roles: list[str] = Field(..., min_length=1, description="node roles (see hilbed.orchestrator.roles)")
    transport: TransportCfg = Field(default_factory=LocalTransportCfg)
    address: str = Field("127.0.0.1", description="address other nodes use to reach this node")
    edge_port: int = Field(0, ge=0, le=65535, description="edge TCP port; 0 = any free port")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    interface: str | None = Field(None, description="network interface for tc shaping")
    radio: RadioCfg | None = None
    jammer_target: str | None = Field(None, description="host running `iperf3 -s` across the Wi-Fi; default loopback")
    description: str = ""

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, v: list[str]) -> list[str]:
        for r in v:
            if r not in ROLES:
                raise ValueError(f"unknown role {r!r} (allowed: {', '.join(ROLES)})")
        return v


class TestbedCfg(Strict):
    name: str
    description: str = ""
    results_dir: str = "runs"
    nodes: dict[str, NodeCfg] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _roles(self) -> "TestbedCfg":
        edges = [n for n, c in self.nodes.items() if "edge" in c.roles]
        if len(edges) != 1:
            raise ValueError(f"exactly one node must have role 'edge' (found {len(edges)}: {', '.join(edges) or 'none'})")
        if not any("client" in c.roles for c in self.nodes.values()):
            raise ValueError("at least one node must have role 'client'")
        return self

    def nodes_with(self, role: str) -> list[str]:
        return [n for n, c in self.nodes.items() if role in c.roles]

    @property
    def edge(self) -> str:
        return self.nodes_with("edge")[0]

    @property
    def clients(self) -> list[str]:
        return self.nodes_with("client")

    @property
    def jammers(self) -> list[str]:
        return self.nodes_with("jammer")


# ---------------------------------------------------------------- scenario ---

class WorkloadCfg(Strict):
    dataset: str = Field("synthetic", description="'synthetic' or 'imagefolder:PATH'")
    model: str = Field("synthetic-cnn", description="'synthetic-cnn' or 'cifar-resnet:PATH'")
    images_per_trial: int = Field(20, ge=1, le=1_000_000)
    image_size: int = Field(32, ge=8, le=1024)
    seed: int = 0

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        if v == "synthetic" or v.startswith("imagefolder:"):
            return v
        raise ValueError("unknown dataset (allowed: synthetic, imagefolder:PATH)")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if v == "synthetic-cnn" or v.startswith("cifar-resnet:"):
            return v
        raise ValueError("unknown model (allowed: synthetic-cnn, cifar-resnet:PATH)")


class StreamCfg(Strict):
    period_ms: float = Field(..., gt=0, description="image inter-arrival time; the default deadline")


class CodecCfg(Strict):
    codec: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @field_validator("codec")
    @classmethod
    def _known(cls, v: str) -> str:
        names = all_codec_names()
        if v not in names:
            raise ValueError(f"unknown codec {v!r} (allowed: {', '.join(sorted(names))})")
        return v

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        shown = explicit_params(self.codec, self.params) if self.codec in all_codec_names() else self.params
        if not shown:
            return self.codec
        return self.codec + "(" + ",".join(f"{k}={v}" for k, v in sorted(shown.items())) + ")"


class LinkCfg(Strict):
    kind: Literal["direct", "trace", "tc", "radio"]
    rate_kbps: float | None = Field(None, gt=0, description="constant uplink rate")
    trace: str | None = Field(None, description="uplink trace file (CSV t_ms,kbps or Mahimahi), relative to the scenario")
    downlink_rate_kbps: float | None = Field(None, gt=0)
    downlink_trace: str | None = None
    delay_ms: float = Field(0.0, ge=0, le=60_000, description="one-way propagation delay")
    loss: float = Field(0.0, ge=0, lt=1, description="IID packet loss probability")
    queue_bytes: int | None = Field(None, gt=0, description="drop-tail queue limit; default: unbounded")
    packet_bytes: int = Field(1024, ge=16, le=65_000, description="link packet (MTU) size")
    opportunity_bytes: int = Field(1504, ge=1, description="bytes per Mahimahi delivery opportunity")
    loop: bool = True
    tc_discipline: Literal["htb", "tbf"] = "htb"

    @model_validator(mode="after")
    def _shape(self) -> "LinkCfg":
        if self.kind in ("trace", "tc") and self.rate_kbps is None and self.trace is None:
            raise ValueError(f"a '{self.kind}' link needs rate_kbps or trace")
        if self.rate_kbps is not None and self.trace is not None:
            raise ValueError("give rate_kbps or trace, not both")
        return self


class JammingStepCfg(Strict):
    at_s: float = Field(..., ge=0, description="seconds from the condition's start")
    level: str


class ConditionCfg(Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.+-]+$")
    link: LinkCfg
    jamming: str = "none"
    jamming_schedule: list[JammingStepCfg] | None = Field(None, min_length=1,
                                                          description="levels over time; overrides jamming")
    deadline_ms: float | None = Field(None, gt=0)


class JammingLevelCfg(Strict):
    bitrate_mbps: float = Field(..., ge=0)
    packet_bytes: int = Field(1400, ge=16, le=65_000)
    streams: int = Field(1, ge=1, le=64)
    on_ms: float | None = Field(None, gt=0)
    off_ms: float | None = Field(None, ge=0)


class ThresholdsCfg(Strict):
    top1_drop_points: float = 1.0
    p95_latency_increase_pct: float = 10.0
    miss_rate_increase_points: float = 2.0


class ScenarioCfg(Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.+-]+$")
    description: str = ""
    workload: WorkloadCfg = Field(default_factory=WorkloadCfg)
    stream: StreamCfg
    codecs: list[CodecCfg] = Field(..., min_length=1)
    conditions: list[ConditionCfg] = Field(..., min_length=1)
    repetitions: int = Field(1, ge=1, le=1000)
    jamming_levels: dict[str, JammingLevelCfg] = Field(default_factory=dict)
    thresholds: ThresholdsCfg = Field(default_factory=ThresholdsCfg)

    @model_validator(mode="after")
    def _unique(self) -> "ScenarioCfg":
        seen: set[str] = set()
        for c in self.conditions:
            if c.name in seen:
                raise ValueError(f"duplicate condition name {c.name!r}")
            seen.add(c.name)
        labels = [c.display for c in self.codecs]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ValueError(f"codec variants must differ (duplicate: {', '.join(sorted(dup))})")
        return self

    def deadline_ms(self, cond: ConditionCfg) -> float:
        return cond.deadline_ms if cond.deadline_ms is not None else self.stream.period_ms


# ------------------------------------------------------- error reporting ---

def _unwrap(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _unwrap(typing.get_args(tp)[0])
    return tp


def _child(tp: Any, part: Any) -> Any:
    """Annotation reached from ``tp`` by one step of a pydantic error loc."""
    tp = _unwrap(tp)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        members = [m for m in (_unwrap(a) for a in typing.get_args(tp)) if m is not type(None)]
        for m in members:
            if isinstance(m, type) and issubclass(m, BaseModel):
                kind = m.model_fields.get("kind")
                if kind is not None and typing.get_args(kind.annotation) == (part,):
                    return m  # discriminator tag consumed this step
        if len(members) == 1:
            return _child(members[0], part)
        return None
    if origin in (list, tuple, set):
        return typing.get_args(tp)[0] if isinstance(part, int) else None
    if origin is dict:
        return typing.get_args(tp)[1]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        f = tp.model_fields.get(part) if isinstance(part, str) else None
        return f.annotation if f else None
    return None


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    tp: Any = root
    for part in loc:
        nxt = _child(tp, part)
        if nxt is None:
            return None
        tp = nxt
    tp = _unwrap(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        ms = [m for m in typing.get_args(tp) if m is not type(None)]
        tp = ms[0] if len(ms) == 1 else tp
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _clean_loc(root: type[BaseModel], loc: tuple) -> tuple:
    """Drop pydantic's discriminator tags and validator names from a loc."""
    out: list = []
    tp: Any = root
    for part in loc:
        if isinstance(part, str) and ("[" in part or part.startswith("function-")):
            continue
        nxt = _child(tp, part)
        u = _unwrap(tp)
        is_tag = (typing.get_origin(u) in (Union, types.UnionType) and isinstance(nxt, type)
                  and issubclass(nxt, BaseModel) and "kind" in nxt.model_fields
                  and typing.get_args(nxt.model_fields["kind"].annotation) == (part,))
        if not is_tag:
            out.append(part)
        tp = nxt if nxt is not None else Any
    return tuple(out)


_QUOTED = re.compile(r"'([^']*)'")


def _error_to_config_error(src: Located, root: type[BaseModel], err: dict) -> ConfigError:
    loc = tuple(err.get("loc", ()))
    clean = _clean_loc(root, loc)
    etype = err.get("type", "")
    ctx = err.get("ctx") or {}
    msg = err.get("msg", "invalid value")
    allowed = None
    if etype == "extra_forbidden":
        parent = _model_at(root, loc[:-1])
        problem = "unknown field"
        if parent is not None:
            allowed = ", ".join(parent.model_fields)
    elif etype == "missing":
        problem = "required field is missing"
    elif etype in ("literal_error", "enum"):
        problem = f"invalid value {err.get('input')!r}"
        allowed = ", ".join(_QUOTED.findall(str(ctx.get("expected", "")))) or str(ctx.get("expected"))
    elif etype in ("union_tag_invalid", "union_tag_not_found"):
        problem = "invalid or missing 'kind'"
        allowed = ", ".join(_QUOTED.findall(str(ctx.get("expected_tags", ""))))
    elif etype == "value_error":
        text = str(ctx.get("error", msg))
        m = re.match(r"^(.*) \(allowed: (.*)\)$", text)
        problem, allowed = (m.group(1), m.group(2)) if m else (text, None)
    else:
        problem = msg
        if "input" in err and not isinstance(err["input"], (dict, list)):
            problem += f", got {err['input']!r}"
    return ConfigError(src.path, src.line_of(clean), dotted(clean), problem, allowed)


def _validate(src: Located, model: type[BaseModel]) -> Any:
    if not isinstance(src.data, dict):
        raise ConfigError(src.path, 1, "", "the document must be a mapping of keys to values")
    try:
        return model.model_validate(src.data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = min(errors, key=lambda e: src.line_of(_clean_loc(model, tuple(e.get("loc", ())))) or 0)
        raise _error_to_config_error(src, model, first) from None


def load_testbed(path: str | Path, text: str | None = None) -> TestbedCfg:
    src = load_located(path, text)
    return _validate(src, TestbedCfg)


def load_scenario(path: str | Path, text: str | None = None) -> ScenarioCfg:
    src = load_located(path, text)
    cfg: ScenarioCfg = _validate(src, ScenarioCfg)
    for i, c in enumerate(cfg.codecs):
        try:
            c.params = validate_codec_params(c.codec, c.params)
        except CodecParamsError as exc:
            loc = ("codecs", i, "params") + ((exc.key,) if exc.key else ())
            raise ConfigError(src.path, src.line_of(loc), dotted(loc), exc.problem, exc.allowed) from None
    levels = set(DEFAULT_JAMMING_LEVELS) | set(cfg.jamming_levels)
    for i, cond in enumerate(cfg.conditions):
        if cond.jamming not in levels:
            loc = ("conditions", i, "jamming")
            raise ConfigError(src.path, src.line_of(loc), dotted(loc), f"unknown jamming level {cond.jamming!r}",
                              ", ".join(sorted(levels)))
        for j, step in enumerate(cond.jamming_schedule or []):
            if step.level not in levels:
                loc = ("conditions", i, "jamming_schedule", j, "level")
                raise ConfigError(src.path, src.line_of(loc), dotted(loc), f"unknown jamming level {step.level!r}",
                                  ", ".join(sorted(levels)))
    base = Path(src.path).parent
    for i, cond in enumerate(cfg.conditions):
        for attr in ("trace", "downlink_trace"):
            rel = getattr(cond.link, attr)
            if rel is None:
                continue
            p = (base / rel) if not Path(rel).is_absolute() else Path(rel)
            if not p.exists():
                loc = ("conditions", i, "link", attr)
                raise ConfigError(src.path, src.line_of(loc), dotted(loc), f"trace file not found: {p}")
            setattr(cond.link, attr, str(p.resolve()))
    return cfg


def detect_kind(path: str | Path) -> str:
    """'testbed' or 'scenario', from the top-level keys."""
    src = load_located(path)
    if isinstance(src.data, dict) and "nodes" in src.data:
        return "testbed"
    return "scenario"

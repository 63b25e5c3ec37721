"""Validated models of ``testbed.yaml`` and scenario YAML.

Every model forbids unknown keys; :func:`load_testbed` and
:func:`load_scenario` turn the first validation problem into a
:class:`~hilbed.orchestrator.yamlsrc.ConfigError` that names ``file:line``, the field
and what is allowed, so the CLI can print one line and exit 2.

Validation is the only gate between a YAML file and processes, paths and
timers on the nodes, so what passes it must be safe to use as is: numbers
are finite and bounded (``inf`` would overflow a timer or make iperf3
unlimited), strings that become file names or command words are
identifiers, ``env`` keys are variable names, and the plan's size is capped.
SSH ``env`` values are secrets (tokens): :func:`redact`,
:func:`redact_text`, :func:`redact_config_text` and :func:`secret_values`
keep them out of manifests and logs.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shlex
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from hilbed.nodes.codecs import CodecParamsError, all_codec_names, explicit_params, validate_codec_params
from hilbed.nodes.link.registry import link_kind_class, link_kind_names
from hilbed.nodes.workload.dataset_specs import check_dataset_spec
from hilbed.nodes.workload.model_specs import check_model_spec
from hilbed.orchestrator.roles import ROLES
from hilbed.orchestrator.yamlsrc import ConfigError, Located, dotted, load_located, short_repr

DEFAULT_JAMMING_LEVELS = ("none", "light", "heavy")


# ------------------------------------------------------------ limits ---
# Upper bounds (docs/config.md lists them); each keeps a value inside what
# the runner, the client's timers, iperf3 and the plan can actually handle.
MAX_NODES = 128
MAX_CLIENTS = 64                       # clients streaming at once in one condition
MAX_CODECS = 64
MAX_CONDITIONS = 256
MAX_JAMMING_LEVELS = 32
MAX_SCHEDULE_STEPS = 1000
MAX_REPETITIONS = 1000
MAX_IMAGES_PER_TRIAL = 100_000
MAX_TRIALS = 10_000                    # codecs x conditions x repetitions
MAX_IMAGES_PER_CLIENT = 1_000_000      # trials x images_per_trial (about 14 h at a 50 ms period)
MAX_PLAN_IMAGES = 2_000_000            # ... x clients: what one plan holds in memory
MAX_PERIOD_MS = 60_000.0               # also for deadlines and jamming on/off phases
MAX_DELAY_MS = 2_000.0                 # one way: the round trip must fit the client's 10 s result wait
MIN_RATE_KBPS, MAX_RATE_KBPS = 0.1, 10_000_000.0
MAX_JAMMING_MBPS = 10_000.0
MAX_SCHEDULE_S = 86_400.0
MAX_SEED = 2**31 - 1                   # seed + client index must stay a valid seed everywhere
MAX_ENV = 64
MAX_TEXT = 4096                        # any free text or path
SECRET_MARK = "***"

IDENT_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
IDENT_ALLOWED = "letters, digits, '.', '_', '-'; starting with a letter or digit; at most 64 characters"
_IDENT = re.compile(IDENT_RE)
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_IFACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,14}$")
_HOST = re.compile(r"^(?![-.])[A-Za-z0-9._:%\[\]-]{1,253}$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}$")


def _ident(v: str) -> str:
    """Names become file names (logs, run directories) and words on command lines: no '/', no '..', no options."""
    if not _IDENT.match(v):
        raise ValueError(f"invalid name {short_repr(v)} (allowed: {IDENT_ALLOWED})")
    return v


def _env_key(v: str) -> str:
    """``env K=V`` on the node: a key like ``--split-string=...`` would be an option of env itself."""
    if not _ENV_KEY.match(v):
        raise ValueError(f"invalid environment variable name {short_repr(v)} "
                         "(allowed: letters, digits, '_', not starting with a digit, at most 128 characters)")
    return v


def _host(v: str) -> str:
    if not _HOST.match(v):
        raise ValueError(f"invalid host {short_repr(v)} (allowed: a host name, IPv4 or IPv6 address)")
    return v


def _user(v: str) -> str:
    if not _USER.match(v):
        raise ValueError(f"invalid user name {short_repr(v)} (allowed: letters, digits, '.', '_', '-', '@'; "
                         "not starting with '-' or '.'; at most 64 characters)")
    return v


def _iface(v: str) -> str:
    if not _IFACE.match(v):
        raise ValueError(f"invalid interface name {short_repr(v)} (allowed: letters, digits, '.', '_', '-'; "
                         "starting with a letter or digit; at most 15 characters)")
    return v


def _no_option(v: str) -> str:
    """Paths and programs end up as command words: one starting with '-' would read as an option."""
    if not v or v.startswith("-") or v != v.strip():
        raise ValueError(f"invalid value {short_repr(v)} (allowed: a non-empty path or name, not starting with '-', "
                         "no leading or trailing spaces)")
    return v


Ident = Annotated[str, AfterValidator(_ident)]
EnvKey = Annotated[str, AfterValidator(_env_key)]
Host = Annotated[str, StringConstraints(max_length=253), AfterValidator(_host)]
UserName = Annotated[str, AfterValidator(_user)]
Iface = Annotated[str, AfterValidator(_iface)]
PathStr = Annotated[str, StringConstraints(max_length=MAX_TEXT), AfterValidator(_no_option)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]


class Strict(BaseModel):
    # allow_inf_nan=False: every float of every model is finite
    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True, allow_inf_nan=False)


# ----------------------------------------------------------------- testbed ---

class LocalTransportCfg(Strict):
    kind: Literal["local"] = "local"
    python: PathStr | None = Field(None, description="interpreter for agents; default: the controller's own")


_JUMP = re.compile(r"^(?:[^@\s:\-][^@\s:]*@)?(?:\[[0-9A-Fa-f:.]+\]|[^@\s:\[\]\-][^@\s:\[\]]*)(?::\d{1,5})?$")


class SSHTransportCfg(Strict):
    kind: Literal["ssh"]
    host: Host
    user: UserName | None = Field(None, description="login user; default: the controller's user")
    port: int = Field(22, ge=1, le=65535)
    key_file: PathStr | None = Field(None, description="private key; default: ssh-agent and ~/.ssh/id_*")
    proxy_jump: str | None = Field(None, max_length=512,
                                   description="gateway as [user@]host[:port] (user defaults to `user`)")
    known_hosts: PathStr | None = Field(None, description="host keys to check against; default ~/.ssh/known_hosts")
    accept_new_host_keys: bool = Field(False, description="record an unknown host key on first use (never a changed one)")
    keepalive_s: float = Field(15.0, ge=0.1, le=3600, description="keepalive interval; 3 unanswered drop the connection")
    python: PathStr = Field("python3", description="the node's interpreter; provisioning makes <workdir>/venv from it")
    workdir: PathStr = Field("~/.hilbed", description="where provisioning puts the venv, wheels, assets and marker")
    sudo: bool = False
    env: dict[EnvKey, Text] = Field(default_factory=dict, max_length=MAX_ENV, repr=False,
                                    description="extra environment for this node's agents; values are secrets")

    @field_validator("proxy_jump")
    @classmethod
    def _jump(cls, v: str | None) -> str | None:
        if v is not None and not _JUMP.match(v.strip()):
            raise ValueError(f"bad proxy_jump {v!r} (allowed: [user@]host[:port])")
        return v


TransportCfg = Annotated[Union[LocalTransportCfg, SSHTransportCfg], Field(discriminator="kind")]


class RadioCfg(Strict):
    protocol: Literal["spinel", "wuart"]
    port: PathStr = Field(..., description="anything pyserial opens: /dev/serial/by-id/..., socket://h:p, "
                          "rfc2217://h:p, or 'emulated' on the embedded testbed")
    baud: int | None = Field(None, gt=0, le=20_000_000,
                             description="default: 1000000 for spinel (USB CDC), 230400 for wuart")
    rtscts: bool | None = Field(None, description="default: off for spinel, on for wuart")
    channel: int = Field(15, ge=11, le=26)
    tx_power_dbm: int = Field(0, ge=-40, le=8)
    pan_id: int = Field(0xABCD, ge=0, le=0xFFFF)
    board: Literal["dongle", "dk"] | None = Field(None, description="nRF52840 Dongle (USB DFU bootloader) or DK "
                                                   "(J-Link OB); `hilbed flash` picks its tool from it (default: "
                                                   "from the /dev/serial/by-id name)")
    firmware: Text | None = Field(None, description="the firmware identity this radio must report (Spinel NCP "
                                  "version, or the Wireless UART firmware's version string); `hilbed check` fails "
                                  "when it reports another")


class PowerCfg(BaseModel):
    """A client's power meter (nodes/power; docs/energy.md): the settings go to the meter as they are."""
    model_config = ConfigDict(extra="allow")
    meter: Literal["emulated", "ina219", "ina226", "ppk2", "none"] = "none"
    radio: dict | None = Field(None, description="a second meter on the radio's supply, e.g. {kind: ppk2, port: ...}")


class NodeCfg(Strict):
    roles: list[str] = Field(..., min_length=1, max_length=16, description="node roles (see hilbed.orchestrator.roles)")
    transport: TransportCfg = Field(default_factory=LocalTransportCfg)
    address: Host = Field("127.0.0.1", description="address other nodes use to reach this node")
    edge_port: int = Field(0, ge=0, le=65535, description="edge TCP port; 0 = any free port")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    interface: Iface | None = Field(None, description="network interface for tc shaping")
    radio: RadioCfg | None = None
    power: PowerCfg | None = Field(None, description="energy per image: the client's power meter")
    jammer_target: Host | None = Field(None, description="host running `iperf3 -s` across the Wi-Fi; default loopback")
    description: Text = ""

    @field_validator("roles")
    @classmethod
    def _known_roles(cls, v: list[str]) -> list[str]:
        for r in v:
            if r not in ROLES:
                raise ValueError(f"unknown role {short_repr(r)} (allowed: {', '.join(ROLES)})")
        return v


class TestbedCfg(Strict):
    name: Ident
    description: Text = ""
    results_dir: PathStr = "runs"
    nodes: dict[Ident, NodeCfg] = Field(..., min_length=1, max_length=MAX_NODES)

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
    dataset: Text = Field("synthetic", description="synthetic, cifar10:SPLIT (a catalog name), imagefolder:PATH "
                          "or a plug-in's")
    model: Text = Field("synthetic-cnn", description="a model spec: synthetic-cnn, cifar-resnet:NAME|PATH, "
                        "torchscript:PATH, onnx:PATH, torchvision:NAME[@FILE], module:PKG.MOD:CALLABLE or a plug-in's")
    images_per_trial: int = Field(20, ge=1, le=MAX_IMAGES_PER_TRIAL)
    image_size: int = Field(32, ge=8, le=1024)
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return check_dataset_spec(v)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return check_model_spec(v)


class StreamCfg(Strict):
    period_ms: float = Field(..., gt=0, le=MAX_PERIOD_MS, description="image inter-arrival time; the default deadline")


class CodecCfg(Strict):
    codec: str = Field(..., max_length=64)
    params: dict[str, Any] = Field(default_factory=dict)
    label: Ident | None = None

    @field_validator("codec")
    @classmethod
    def _known(cls, v: str) -> str:
        names = all_codec_names()
        if v not in names:
            raise ValueError(f"unknown codec {short_repr(v)} (allowed: {', '.join(sorted(names))})")
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
    kind: str = Field(..., description="a registered link kind (hilbed.nodes.link.registry)")
    rate_kbps: float | None = Field(None, ge=MIN_RATE_KBPS, le=MAX_RATE_KBPS, description="constant uplink rate")
    trace: PathStr | None = Field(None, description="uplink trace file (CSV t_ms,kbps or Mahimahi), "
                                  "relative to the scenario")
    downlink_rate_kbps: float | None = Field(None, ge=MIN_RATE_KBPS, le=MAX_RATE_KBPS)
    downlink_trace: PathStr | None = None
    delay_ms: float = Field(0.0, ge=0, le=MAX_DELAY_MS, description="one-way propagation delay")
    loss: float = Field(0.0, ge=0, lt=1, description="IID packet loss probability")
    queue_bytes: int | None = Field(None, gt=0, le=1_000_000_000, description="drop-tail queue limit; default: unbounded")
    packet_bytes: int = Field(1024, ge=16, le=65_000, description="link packet (MTU) size")
    opportunity_bytes: int = Field(1504, ge=1, le=1_000_000, description="bytes per Mahimahi delivery opportunity")
    loop: bool = True
    tc_discipline: Literal["htb", "tbf"] = "htb"
    accounting: Literal["payload", "frame"] = Field(
        "payload", description="bytes a shaped link charges: payload only, or whole frames as Mahimahi does "
                               "(+56 B per TCP segment: tun 4 + IPv4 20 + TCP 32)")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in link_kind_names():
            raise ValueError(f"unknown link kind {v!r} (allowed: {', '.join(link_kind_names())})")
        return v

    @model_validator(mode="after")
    def _shape(self) -> "LinkCfg":
        if link_kind_class(self.kind).needs_rate and self.rate_kbps is None and self.trace is None:
            raise ValueError(f"a '{self.kind}' link needs rate_kbps or trace")
        if self.rate_kbps is not None and self.trace is not None:
            raise ValueError("give rate_kbps or trace, not both")
        return self


class JammingStepCfg(Strict):
    at_s: float = Field(..., ge=0, le=MAX_SCHEDULE_S, description="seconds from the condition's start")
    level: Ident


class ConditionCfg(Strict):
    name: Ident
    link: LinkCfg
    jamming: Ident = "none"
    jamming_schedule: list[JammingStepCfg] | None = Field(None, min_length=1, max_length=MAX_SCHEDULE_STEPS,
                                                          description="levels over time; overrides jamming")
    deadline_ms: float | None = Field(None, gt=0, le=MAX_PERIOD_MS)
    clients: int | None = Field(None, ge=1, le=MAX_CLIENTS, description="clients streaming at once (the first N "
                                "client nodes); default: the scenario's clients, else every client of the testbed")
    bench_group: Ident | None = Field(None, description="run on several testbeds (`hilbed run --testbed A "
                                      "--testbed B`): conditions with the same bench_group run on the same "
                                      "testbed, one after another (comparisons that need the same hardware); "
                                      "not part of the trial ids")


class EdgeCfg(Strict):
    """How the edge infers: dynamic batching across clients (docs/scale.md)."""
    max_batch: int = Field(1, ge=1, le=256, description="images inferred together at most; 1 = one at a time")
    max_wait_ms: float = Field(2.0, ge=0, le=1000, description="longest a decoded image waits for its batch to fill "
                               "(never past the earliest deadline in the batch)")
    amp: bool = Field(False, description="automatic mixed precision (float16) on CUDA; ignored on CPU")


class JammingLevelCfg(Strict):
    bitrate_mbps: float = Field(..., ge=0, le=MAX_JAMMING_MBPS)
    packet_bytes: int = Field(1400, ge=16, le=65_000)
    streams: int = Field(1, ge=1, le=64)
    on_ms: float | None = Field(None, gt=0, le=MAX_PERIOD_MS)
    off_ms: float | None = Field(None, ge=0, le=MAX_PERIOD_MS)

    @model_validator(mode="after")
    def _phases(self) -> "JammingLevelCfg":
        if self.off_ms and not self.on_ms:
            raise ValueError("off_ms needs on_ms")
        return self


class ThresholdsCfg(Strict):
    top1_drop_points: float = Field(1.0, ge=0, le=100)
    p95_latency_increase_pct: float = Field(10.0, ge=0, le=1_000_000)
    miss_rate_increase_points: float = Field(2.0, ge=0, le=100)


class ScenarioCfg(Strict):
    name: Ident
    description: Text = ""
    workload: WorkloadCfg = Field(default_factory=WorkloadCfg)
    stream: StreamCfg
    codecs: list[CodecCfg] = Field(..., min_length=1, max_length=MAX_CODECS)
    conditions: list[ConditionCfg] = Field(..., min_length=1, max_length=MAX_CONDITIONS)
    repetitions: int = Field(1, ge=1, le=MAX_REPETITIONS)
    clients: int | None = Field(None, ge=1, le=MAX_CLIENTS, description="clients streaming at once in every "
                                "condition (a condition's own clients: wins); on the embedded testbed missing "
                                "local clients are created (client-2, client-3, ...)")
    edge: EdgeCfg = Field(default_factory=EdgeCfg)
    jamming_levels: dict[Ident, JammingLevelCfg] = Field(default_factory=dict, max_length=MAX_JAMMING_LEVELS)
    thresholds: ThresholdsCfg = Field(default_factory=ThresholdsCfg)

    #: the parsed file, so checks after validation (make_plan) can still name file:line
    _source: Located | None = PrivateAttr(default=None)

    @property
    def n_trials(self) -> int:
        return len(self.codecs) * len(self.conditions) * self.repetitions

    def deadline_ms(self, cond: ConditionCfg) -> float:
        return cond.deadline_ms if cond.deadline_ms is not None else self.stream.period_ms

    def n_clients(self, cond: ConditionCfg, testbed: "TestbedCfg") -> int:
        """Clients streaming in ``cond``: its own ``clients``, else the scenario's, else all of the testbed's."""
        if cond.clients is not None:
            return cond.clients
        return self.clients if self.clients is not None else len(testbed.clients)

    @property
    def max_clients(self) -> int | None:
        asked = [c.clients for c in self.conditions if c.clients is not None] + (
            [self.clients] if self.clients is not None else [])
        return max(asked) if asked else None


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


def _is_dict(tp: Any) -> bool:
    u = _unwrap(tp)
    if typing.get_origin(u) in (Union, types.UnionType):
        ms = [m for m in typing.get_args(u) if m is not type(None)]
        u = _unwrap(ms[0]) if len(ms) == 1 else u
    return typing.get_origin(u) is dict


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
        # a dict key is the user's (a node named 'a[b' stays); elsewhere '[key]', 'function-after[...]' are pydantic's
        if isinstance(part, str) and (part == "[key]" or (not _is_dict(tp) and
                                                          ("[" in part or part.startswith("function-")))):
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
        problem = f"invalid value {short_repr(err.get('input'))}"
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
            problem += f", got {short_repr(err['input'])}"
    return ConfigError(src.path, src.line_of(clean), dotted(clean), problem, allowed)


def _validate(src: Located, model: type[BaseModel]) -> Any:
    if not isinstance(src.data, dict):
        raise ConfigError(src.path, 1, "", "the document must be a mapping of keys to values")
    # top-level `x-...` keys are extension fields: a place for anchors (`x-ssh: &ssh {...}`), otherwise ignored
    data = {k: v for k, v in src.data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = min(errors, key=lambda e: src.line_of(_clean_loc(model, tuple(e.get("loc", ())))) or 0)
        raise _error_to_config_error(src, model, first) from None


def _fail(src: Located, loc: tuple, problem: str, allowed: str | None = None) -> ConfigError:
    return ConfigError(src.path, src.line_of(loc), dotted(loc), problem, allowed)


def load_testbed(path: str | Path, text: str | bytes | None = None) -> TestbedCfg:
    src = load_located(path, text)
    return _validate(src, TestbedCfg)


def _check_param_value(src: Located, v: Any, loc: tuple, depth: int = 0) -> None:
    """Codec params reach the codec, the trial id (JSON) and the manifest: JSON-like, finite, string keys."""
    if isinstance(v, float) and not math.isfinite(v):
        raise _fail(src, loc, "numbers must be finite", "a finite number")
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise _fail(src, loc + (k,), f"parameter names must be strings, got {short_repr(k)}")
            _check_param_value(src, x, loc + (k,), depth + 1)
    elif isinstance(v, list):
        for j, x in enumerate(v):
            _check_param_value(src, x, loc + (j,), depth + 1)
    elif v is not None and not isinstance(v, (str, int, float, bool)):
        raise _fail(src, loc, f"unsupported value {short_repr(v)}", "strings, numbers, true/false, lists, mappings")


def load_scenario(path: str | Path, text: str | bytes | None = None) -> ScenarioCfg:
    src = load_located(path, text)
    cfg: ScenarioCfg = _validate(src, ScenarioCfg)
    cfg._source = src
    for i, c in enumerate(cfg.codecs):
        _check_param_value(src, c.params, ("codecs", i, "params"))
        try:
            c.params = validate_codec_params(c.codec, c.params)
        except CodecParamsError as exc:
            loc = ("codecs", i, "params") + ((exc.key,) if exc.key else ())
            raise ConfigError(src.path, src.line_of(loc), dotted(loc), exc.problem, exc.allowed) from None
        except (ValueError, TypeError, OverflowError, ArithmeticError) as exc:  # e.g. int(1e400) in a range check
            raise _fail(src, ("codecs", i, "params"), f"invalid parameters ({str(exc).splitlines()[0][:200]})") \
                from None
    _check_unique(src, cfg)
    _check_size(src, cfg)
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
            loc = ("conditions", i, "link", attr)
            try:
                p = (base / rel) if not Path(rel).is_absolute() else Path(rel)
                found = p.is_file()
                resolved = str(p.resolve()) if found else ""
            except (OSError, ValueError, RuntimeError) as exc:  # name too long, symlink loop...
                raise _fail(src, loc, f"unusable trace path ({str(exc).splitlines()[0][:200]})") from None
            if not found:
                raise _fail(src, loc, f"trace file not found: {short_repr(str(p), 200)[1:-1]}")
            setattr(cond.link, attr, resolved)
    return cfg


def _check_unique(src: Located, cfg: ScenarioCfg) -> None:
    """Two entries that would make the same trial (or the same row in a report) name both lines.

    The trial id hashes codec + explicit params + condition + repetition, not
    the label, so two labels on one codec+params are the same trial twice.
    """
    seen: dict[str, int] = {}
    for i, cond in enumerate(cfg.conditions):
        if cond.name in seen:
            first = seen[cond.name]
            raise _fail(src, ("conditions", i, "name"), f"duplicate condition name {cond.name!r} "
                        f"(first: conditions[{first}] at line {src.line_of(('conditions', first, 'name'))})")
        seen[cond.name] = i
    variants: dict[tuple[str, str], int] = {}
    shown: dict[str, int] = {}
    for i, c in enumerate(cfg.codecs):
        key = (c.codec, repr(sorted(explicit_params(c.codec, c.params).items())))
        if key in variants:
            first = variants[key]
            raise _fail(src, ("codecs", i), f"same codec and parameters as codecs[{first}] at line "
                        f"{src.line_of(('codecs', first))}; a label does not make a different variant")
        variants[key] = i
        name = c.display
        if name in shown:
            first = shown[name]
            raise _fail(src, ("codecs", i, "label") if c.label else ("codecs", i),
                        f"codec variant name {name!r} is also the name of codecs[{first}] at line "
                        f"{src.line_of(('codecs', first))}")
        shown[name] = i


def _check_size(src: Located, cfg: ScenarioCfg) -> None:
    """The plan is built in memory and every image is a record: cap trials and images per client."""
    trials = cfg.n_trials
    reps_loc = ("repetitions",) if "repetitions" in src.data else ("conditions",)
    if trials > MAX_TRIALS:
        raise _fail(src, reps_loc, f"{len(cfg.codecs)} codecs x {len(cfg.conditions)} conditions x "
                    f"{cfg.repetitions} repetitions = {trials} trials", f"at most {MAX_TRIALS} trials")
    per_client = trials * cfg.workload.images_per_trial
    if per_client > MAX_IMAGES_PER_CLIENT:
        wl = src.data.get("workload")
        loc = ("workload", "images_per_trial") if isinstance(wl, dict) and "images_per_trial" in wl else reps_loc
        raise _fail(src, loc, f"{trials} trials x {cfg.workload.images_per_trial} images = {per_client} images "
                    "per client", f"at most {MAX_IMAGES_PER_CLIENT} images per client")


def detect_kind(path: str | Path) -> str:
    """'testbed' or 'scenario', from the top-level keys."""
    src = load_located(path)
    if isinstance(src.data, dict) and "nodes" in src.data:
        return "testbed"
    return "scenario"


# ----------------------------------------------------------------- secrets ---
# SSH `env` values are secret (API tokens are what people put there): the
# parsed config, the raw YAML text kept in manifest.json and log text all go
# through these before they are written.

#: secrets shorter than this are not searched for in free text (a "1" would blank every digit of a log)
MIN_SECRET_CHARS = 4


def secret_values(testbed: TestbedCfg) -> set[str]:
    """Every secret string of a loaded testbed: the values of its nodes' SSH ``env``."""
    out: set[str] = set()
    for node in testbed.nodes.values():
        for v in (getattr(node.transport, "env", None) or {}).values():
            if v:
                out.add(v)
    return out


def _spellings(secret: str) -> set[str]:
    """How a secret shows up in text: as is, JSON-escaped (events.jsonl) and shell-quoted (command lines)."""
    out = {secret, json.dumps(secret)[1:-1], shlex.quote(secret)}
    out.add(json.dumps(shlex.quote(secret))[1:-1])
    return out


def redact_text(text: str, secrets: typing.Iterable[str]) -> str:
    """``text`` with every occurrence of a secret (of at least MIN_SECRET_CHARS) replaced by ``***``.

    The secret's JSON-escaped and shell-quoted spellings are replaced too.
    """
    cands = {sp for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS for sp in _spellings(s)}
    found = sorted({s for s in cands if s in text}, key=len, reverse=True)
    if not found:
        return text
    return re.sub("|".join(re.escape(s) for s in found), SECRET_MARK, text)


def redact(obj: Any, secrets: typing.Iterable[str] = ()) -> Any:
    """A deep copy of ``obj`` with secrets replaced by ``***``.

    ``obj`` is a config model (dumped to JSON-like data first) or plain data
    (a ``model_dump``, a whole manifest). Every value of a mapping under a key
    named ``env`` is replaced whatever its length; strings elsewhere go
    through :func:`redact_text` with ``secrets``.
    """
    secrets = [s for s in secrets if isinstance(s, str)]
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")

    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            out = {}
            for k, v in x.items():
                kk = redact_text(k, secrets) if isinstance(k, str) else k
                if k == "env" and isinstance(v, dict):
                    out[kk] = {ek: SECRET_MARK for ek in v}
                else:
                    out[kk] = walk(v)
            return out
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x] if isinstance(x, list) else tuple(walk(v) for v in x)
        if isinstance(x, str):
            return redact_text(x, secrets)
        return copy.deepcopy(x)

    return walk(obj)


def _env_value_spans(src: Located) -> list[tuple[int, int]]:
    spans = set()
    for loc, span in src.spans.items():
        if len(loc) == 5 and loc[0] == "nodes" and loc[2] == "transport" and loc[3] == "env":
            spans.add(span)
    return sorted(spans)


def redact_config_text(text: str, path: str | Path = "<testbed>") -> str:
    """A testbed's YAML text with its ``env`` values replaced by ``'***'`` in place.

    The result is still a valid testbed (comments, layout and lines kept), so
    it can be stored in the manifest and shown; values that anchors, aliases
    or merge keys share are replaced where they are written. Any other
    occurrence of a secret (a comment, another field) is replaced as text.
    """
    try:
        src = load_located(path, text)
        tb = _validate(src, TestbedCfg)
    except ConfigError:
        return text  # not a loadable testbed: nothing was read from it as a secret
    out = text
    for start, end in reversed(_env_value_spans(src)):
        chunk = out[start:end]
        tail = len(chunk) - len(chunk.rstrip())  # a block scalar's span ends with the line breaks after it
        out = out[:start] + "'" + SECRET_MARK + "'" + chunk[len(chunk) - tail:] + out[end:]
    return redact_text(out, secret_values(tb))


def recover_config_text(path: str | Path, redacted: str) -> str | None:
    """The current text of ``path`` if redacting it gives ``redacted`` (so ``resume`` can get the real secrets back)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return text if redact_config_text(text, path) == redacted else None

"""Scenario x testbed -> an ordered list of trials with stable ids.

A trial is one codec variant under one condition in one repetition; it plays
``images_per_trial`` images on every client. Its id hashes exactly the things
that define it (scenario name, codec + params, the condition, the repetition),
so reordering the YAML or adding a codec keeps old ids, and ``resume`` can tell
what is finished.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from hilbed.nodes.codecs import explicit_params
from hilbed.orchestrator.config import MAX_PLAN_IMAGES, MAX_TRIALS, CodecCfg, ConditionCfg, ScenarioCfg, TestbedCfg
from hilbed.orchestrator.yamlsrc import ConfigError, dotted

PER_TRIAL_OVERHEAD_S = 0.05  # start margin + round trips: ~31 ms measured by benchmarks/run_overhead.py


def trial_id(scenario: str, codec: CodecCfg, cond: ConditionCfg, deadline_ms: float, repetition: int) -> str:
    key = {
        "scenario": scenario,
        "codec": codec.codec,
        "params": explicit_params(codec.codec, codec.params),
        # a condition without ``clients`` keeps the id it had before the field existed (resume of older runs);
        # bench_group only says where a condition runs, not what it measures: never part of the id
        "condition": cond.model_dump(mode="json", exclude={"bench_group"} | (set() if cond.clients is not None
                                                                              else {"clients"}))
        | {"deadline_ms": deadline_ms},
        "repetition": repetition,
    }
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Trial:
    id: str
    index: int
    codec: CodecCfg
    condition: ConditionCfg
    repetition: int
    deadline_ms: float
    image_indices: dict[str, tuple[int, ...]]  # per client node (the condition's clients only)

    @property
    def n_images(self) -> int:
        return sum(len(v) for v in self.image_indices.values())


@dataclass
class Plan:
    scenario: ScenarioCfg
    testbed: TestbedCfg
    trials: list[Trial]

    @property
    def n_images(self) -> int:
        return sum(t.n_images for t in self.trials)

    def estimated_s(self) -> float:
        per = self.scenario.stream.period_ms / 1000.0
        n = self.scenario.workload.images_per_trial
        return sum(n * per + PER_TRIAL_OVERHEAD_S for _ in self.trials)

    def by_condition(self) -> list[tuple[ConditionCfg, list[Trial]]]:
        out: list[tuple[ConditionCfg, list[Trial]]] = []
        for t in self.trials:
            if not out or out[-1][0].name != t.condition.name:
                out.append((t.condition, []))
            out[-1][1].append(t)
        return out


def make_plan(scenario: ScenarioCfg, testbed: TestbedCfg) -> Plan:
    """Order: condition -> repetition -> codec, so codecs are interleaved in time.

    Within a repetition every codec sees the same images (paired comparison);
    each client gets its own slice of indices. A condition streams from its
    first ``scenario.n_clients(cond, testbed)`` client nodes.
    """
    n = scenario.workload.images_per_trial
    per_rep = len(scenario.codecs) * scenario.repetitions
    n_trials = len(scenario.conditions) * per_rep
    n_images = sum(per_rep * n * scenario.n_clients(c, testbed) for c in scenario.conditions)
    if n_trials > MAX_TRIALS or n_images > MAX_PLAN_IMAGES:
        raise _plan_error(scenario, ("workload", "images_per_trial"),
                          f"the plan has {n_trials} trials x {n} images x their clients = {n_images} images",
                          f"at most {MAX_TRIALS} trials and {MAX_PLAN_IMAGES} images in all")
    trials: list[Trial] = []
    for i, cond in enumerate(scenario.conditions):
        dl = scenario.deadline_ms(cond)
        want = scenario.n_clients(cond, testbed)
        if want > len(testbed.clients):
            loc = ("conditions", i, "clients") if cond.clients is not None else ("clients",)
            raise _plan_error(scenario, loc, f"condition {cond.name} streams from {want} clients but the testbed "
                              f"{testbed.name} has {len(testbed.clients)}",
                              "at most the testbed's client nodes (a lab testbed lists each client; the embedded "
                              "one creates local clients)")
        clients = testbed.clients[:want]
        for rep in range(scenario.repetitions):
            for codec in scenario.codecs:
                idx = {c: tuple(range((rep * len(clients) + k) * n, (rep * len(clients) + k + 1) * n))
                       for k, c in enumerate(clients)}
                tid = trial_id(scenario.name, codec, cond, dl, rep)
                trials.append(Trial(tid, len(trials), codec, cond, rep, dl, idx))
    first: dict[str, Trial] = {}
    for t in trials:
        if t.id in first:  # load_scenario rejects duplicates; this guards scenarios built in code
            o = first[t.id]
            kind, items, mine = (("codecs", scenario.codecs, t.codec) if t.codec is not o.codec
                                 else ("conditions", scenario.conditions, t.condition))
            i = next(k for k, x in enumerate(items) if x is mine)
            raise _plan_error(scenario, (kind, i), f"makes the same trials as {o.codec.display} under "
                              f"{o.condition.name} (trial id {t.id})")
        first[t.id] = t
    return Plan(scenario, testbed, trials)


def _plan_error(scenario: ScenarioCfg, loc: tuple, problem: str, allowed: str | None = None) -> ConfigError:
    """A ConfigError naming the scenario file (and line) when the scenario was loaded from one."""
    src = getattr(scenario, "_source", None)
    if src is None:
        return ConfigError(f"<scenario {scenario.name}>", None, dotted(loc), problem, allowed)
    return ConfigError(src.path, src.line_of(loc), dotted(loc), problem, allowed)

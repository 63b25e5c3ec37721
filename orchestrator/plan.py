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

from hilbed.orchestrator.config import CodecCfg, ConditionCfg, ScenarioCfg, TestbedCfg

PER_TRIAL_OVERHEAD_S = 0.05  # start margin + round trips: ~31 ms measured by benchmarks/run_overhead.py


def trial_id(scenario: str, codec: CodecCfg, cond: ConditionCfg, deadline_ms: float, repetition: int) -> str:
    key = {
        "scenario": scenario,
        "codec": codec.codec,
        "params": explicit_params(codec.codec, codec.params),
        "condition": cond.model_dump(mode="json") | {"deadline_ms": deadline_ms},
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
    image_indices: dict[str, tuple[int, ...]]  # per client node

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
    each client gets its own slice of indices.
    """
    clients = testbed.clients
    n = scenario.workload.images_per_trial
    trials: list[Trial] = []
    for cond in scenario.conditions:
        dl = scenario.deadline_ms(cond)
        for rep in range(scenario.repetitions):
            for codec in scenario.codecs:
                idx = {c: tuple(range((rep * len(clients) + k) * n, (rep * len(clients) + k + 1) * n))
                       for k, c in enumerate(clients)}
                tid = trial_id(scenario.name, codec, cond, dl, rep)
                trials.append(Trial(tid, len(trials), codec, cond, rep, dl, idx))
    ids = [t.id for t in trials]
    assert len(set(ids)) == len(ids), "trial ids must be unique"
    return Plan(scenario, testbed, trials)

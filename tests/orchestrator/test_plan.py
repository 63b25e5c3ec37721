from __future__ import annotations

import textwrap

from hilbed.orchestrator.config import load_scenario, load_testbed
from hilbed.orchestrator.plan import make_plan

SC = """\
name: p
workload: {images_per_trial: 5}
stream: {period_ms: 100}
codecs:
  - {codec: jpeg, params: {quality: 10}}
  - {codec: jpeg, params: {quality: 90}}
  - {codec: png}
conditions:
  - {name: a, link: {kind: trace, rate_kbps: 250}}
  - {name: b, link: {kind: direct}, deadline_ms: 50}
repetitions: 2
"""

TB2 = """\
name: two
nodes:
  c1: {roles: [client]}
  c2: {roles: [client]}
  e: {roles: [edge]}
"""


def _plan(tmp_path, sc_text=SC, tb_text=TB2):
    (tmp_path / "s.yaml").write_text(textwrap.dedent(sc_text))
    (tmp_path / "t.yaml").write_text(textwrap.dedent(tb_text))
    return make_plan(load_scenario(tmp_path / "s.yaml"), load_testbed(tmp_path / "t.yaml"))


def test_expansion_counts_and_order(tmp_path):
    plan = _plan(tmp_path)
    assert len(plan.trials) == 3 * 2 * 2
    assert plan.n_images == 12 * 5 * 2  # two clients
    # condition -> repetition -> codec
    assert [t.condition.name for t in plan.trials[:6]] == ["a"] * 6
    assert [t.repetition for t in plan.trials[:6]] == [0, 0, 0, 1, 1, 1]
    assert [t.codec.display for t in plan.trials[:3]] == ["jpeg(quality=10)", "jpeg(quality=90)", "png"]
    assert plan.trials[6].deadline_ms == 50 and plan.trials[0].deadline_ms == 100


def test_images_paired_across_codecs_and_disjoint_across_clients(tmp_path):
    plan = _plan(tmp_path)
    t0, t1 = plan.trials[0], plan.trials[1]
    assert t0.image_indices == t1.image_indices  # same images for every codec in a repetition
    assert set(t0.image_indices["c1"]).isdisjoint(t0.image_indices["c2"])
    rep1 = plan.trials[3]
    assert set(rep1.image_indices["c1"]).isdisjoint(t0.image_indices["c1"])


def test_ids_stable_under_reordering_and_sensitive_to_content(tmp_path):
    ids = {(t.codec.display, t.condition.name, t.repetition): t.id for t in _plan(tmp_path).trials}
    # reorder codecs and conditions: same ids
    reordered = SC.replace("  - {codec: jpeg, params: {quality: 10}}\n  - {codec: jpeg, params: {quality: 90}}\n",
                           "  - {codec: jpeg, params: {quality: 90}}\n  - {codec: jpeg, params: {quality: 10}}\n")
    (tmp_path / "r").mkdir()
    ids2 = {(t.codec.display, t.condition.name, t.repetition): t.id for t in _plan(tmp_path / "r", reordered).trials}
    assert ids == ids2
    # a changed parameter or condition changes the id
    (tmp_path / "c").mkdir()
    changed = SC.replace("rate_kbps: 250", "rate_kbps: 100")
    ids3 = {(t.codec.display, t.condition.name, t.repetition): t.id for t in _plan(tmp_path / "c", changed).trials}
    assert all(ids3[k] != ids[k] for k in ids if k[1] == "a")
    assert all(ids3[k] == ids[k] for k in ids if k[1] == "b")
    assert len(set(ids.values())) == len(ids)


def test_ids_ignore_parameters_left_at_their_defaults(tmp_path):
    """Spelling out a default (or a codec gaining a new defaulted parameter) keeps the ids."""
    base = {(t.codec.codec, t.condition.name, t.repetition): t.id for t in _plan(tmp_path).trials
            if t.codec.codec == "png"}
    (tmp_path / "d").mkdir()
    spelled = SC.replace("  - {codec: png}", "  - {codec: png, params: {compress_level: 9}}")
    again = {(t.codec.codec, t.condition.name, t.repetition): t.id for t in _plan(tmp_path / "d", spelled).trials
             if t.codec.codec == "png"}
    assert base == again

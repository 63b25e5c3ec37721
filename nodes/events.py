"""Event kinds: what agents send the controller, and what a run writes to ``events.jsonl``.

One enum each instead of strings spread over the agents, the runner and
analysis; both are ``str`` enums, so they serialise as their value.
"""

from __future__ import annotations

from enum import Enum


class AgentEvent(str, Enum):
    """``{"event": ...}`` lines an agent writes on its channel (besides replies)."""

    READY = "ready"                    # the agent is up and takes ops
    RECORD = "record"                  # one image's raw record (client)
    PROGRESS = "progress"              # a long op's progress (edge: training the default model)
    JAMMER_LOAD = "jammer_load"        # a 1 s measurement window of the jammer's load
    JAMMER_STOPPED = "jammer_stopped"  # the jammer stopped by itself (watchdog, iperf3 exit)


class RunEvent(str, Enum):
    """``kind`` of a line in a run's ``events.jsonl``."""

    PREFLIGHT = "preflight"
    RESUMED = "resumed"
    FAILED = "failed"
    TRIAL_DONE = "trial_done"
    CODEC_WARMED = "codec_warmed"          # the edge built a trial's codec before its stream (load time)
    STRAY_RECORD = "stray_record"          # a record for no trial of this run
    AGENT_EVENT = "agent_event"            # an agent's event, kept as sent
    INCIDENT = "incident"                  # a node dropped during a trial
    TRIAL_INTERRUPTED = "trial_interrupted"
    TRIAL_CLIENTS_STOPPED = "trial_clients_stopped"
    MEDIUM_RELAY = "medium_relay"
    NODE_FILE_NOT_FETCHED = "node_file_not_fetched"
    BENCH_PART_STARTED = "bench_part_started"
    BENCH_PART_FINISHED = "bench_part_finished"
    BENCH_PART_RETRIED = "bench_part_retried"
    TRIAL_RECOVERED = "trial_recovered"
    RECONNECT_RETRY = "reconnect_retry"
    RECONNECT_FAILED = "reconnect_failed"
    RECOVERED = "recovered"
    LINK_APPLIED = "link_applied"          # facts a link kind verified after applying a condition
    LINK_STATS = "link_stats"              # a client's link statistics when it closed
    TC_APPLIED = "tc_applied"
    TC_REMOVED = "tc_removed"
    TC_REMOVE_FAILED = "tc_remove_failed"
    JAMMER_LEVEL = "jammer_level"          # the level set and its first measurement
    JAMMER_STOPPED = "jammer_stopped"      # the controller stopped the jammer at the condition's end
    JAMMER_LAPSED = "jammer_lapsed"        # a heartbeat found the jammer idle (watchdog, crash) during jamming
    JAMMER_REARMED = "jammer_rearmed"
    JAMMER_REARM_FAILED = "jammer_rearm_failed"
    LEASE_LOST = "lease_lost"              # another controller took a node over (forced, or the lease ran out)
    POWER_BASELINE = "power_baseline"      # a client's idle power before a condition's trials
    TRIALS_DAMAGED = "trials_damaged"      # resume skipped lines of trials.jsonl that are not records
    INPUTS_CHANGED = "inputs_changed"      # resume found changed inputs and was told to go on
    INPUTS_UNVERIFIED = "inputs_unverified"  # resume of a run that recorded no input hashes
    STALE_LOCK_REPLACED = "stale_lock_replaced"  # the run directory's lock was left by a dead process


#: kinds a plug-in (link kind, role) may add to events.jsonl besides RunEvent
EXTRA_RUN_EVENTS: set[str] = set()


def run_event_kind(kind: str | RunEvent) -> str:
    """The value to write; unknown kinds are a programming error (register plug-in kinds in EXTRA_RUN_EVENTS)."""
    value = kind.value if isinstance(kind, RunEvent) else str(kind)
    if value not in _RUN_EVENT_VALUES and value not in EXTRA_RUN_EVENTS:
        raise ValueError(f"unknown run event kind {value!r} (add it to hilbed.nodes.events.RunEvent)")
    return value


_RUN_EVENT_VALUES = {e.value for e in RunEvent}

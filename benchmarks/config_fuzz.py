#!/usr/bin/env python3
"""Mutation fuzzing of the config loader: only one-line ConfigErrors may escape, nothing may hang.

Mutates the shipped YAML (testbed.yaml, scenarios/*.yaml,
examples/lab-testbed.yaml) with byte flips, deletions, duplicated and
re-indented lines, inserted anchors/aliases/merge keys, control characters,
extreme numbers, deep nesting and non-UTF-8 bytes, and loads every case
in-process under a per-case time limit (SIGALRM). A scenario that loads is
also planned on the embedded testbed; a testbed that loads is also redacted.
Prints JSON counts:

    python benchmarks/config_fuzz.py --cases 10000 [--seed 1] [--limit-s 2]

``tests/orchestrator/test_config_fuzz.py`` runs the same engine on fewer cases.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def seed_files(repo: Path = REPO) -> list[tuple[Path, bytes]]:
    files = [repo / "testbed.yaml", repo / "examples" / "lab-testbed.yaml", *sorted((repo / "scenarios").glob("*.yaml"))]
    return [(p, p.read_bytes()) for p in files if p.is_file()]


# ------------------------------------------------------------- mutations ---

_CONTROL = [b"\x00", b"\x01", b"\x07", b"\x1b", b"\x7f", b"\x85", b"\x0c", b"\t", b"\r"]
_EXTREME = [b".inf", b"-.inf", b".nan", b"-1", b"0", b"1e999", b"1e300", b"99999999999999999999999", b"1" * 5000,
            b"-0", b"0x7fffffff", b"0b1", b"2001-13-45", b"~", b"''", b"!!bool maybe", b"!!int x", b"!!binary ???",
            b"!!python/object:os.system ls", b"\"\\ud800\"", b"\"\\0\"", b"=", b"[]", b"{}", b"*undefined", b"<<"]
_SNIPPETS = [
    b"a0: &a0 [x, x, x, x, x, x, x, x]\na1: &a1 [*a0, *a0, *a0, *a0, *a0, *a0, *a0, *a0]\n"
    b"a2: &a2 [*a1, *a1, *a1, *a1, *a1, *a1, *a1, *a1]\na3: &a3 [*a2, *a2, *a2, *a2, *a2, *a2, *a2, *a2]\n"
    b"a4: [*a3, *a3, *a3, *a3, *a3, *a3, *a3, *a3]\n",
    # the "billion laughs" (10^9 strings from 1 KiB) and the same through merge keys
    b"".join(b"b%d: &b%d [" % (i, i) + b", ".join([b"*b%d" % (i - 1) if i else b"lol"] * 10) + b"]\n"
             for i in range(10)),
    b"".join(b"m%d: &m%d {" % (i, i) + (b"<<: [" + b", ".join([b"*m%d" % (i - 1)] * 10) + b"], " if i else b"")
             + b"k%d: 1}\n" % i for i in range(9)),
    b"loop: &l [*l]\n", b"m: &m {<<: *m}\n", b"deep: " + b"[" * 300 + b"]" * 300 + b"\n",
    b"deep: " + b"{a: " * 100 + b"1" + b"}" * 100 + b"\n", b"x-base: &base {kind: ssh, host: h}\n",
    b"? [a, b]\n: c\n", b"--- \n", b"...\n", b"%YAML 1.1\n---\n", b"!!set {a, b}\n", b"key: !!omap [a: 1]\n",
    b"<<: {name: merged}\n", b"<<: [*undefined]\n", b"s: &s \"" + b"x" * 4000 + b"\"\nt: [" + b"*s, " * 60 + b"*s]\n",
    b"\xef\xbb\xbf", b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80",
]


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True) or [b""]


def mutate_once(rng: random.Random, data: bytes) -> bytes:
    op = rng.randrange(14)
    n = len(data)
    if op == 0 and n:                                     # byte flips
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(n)
            b[i] = rng.randrange(256) if rng.random() < 0.5 else b[i] ^ (1 << rng.randrange(8))
        return bytes(b)
    if op == 1 and n:                                     # delete a range
        i = rng.randrange(n)
        return data[:i] + data[i + rng.randint(1, 40):]
    lines = _lines(data)
    k = rng.randrange(len(lines))
    if op == 2:                                           # duplicate a line (possibly elsewhere)
        lines.insert(rng.randrange(len(lines) + 1), lines[k])
    elif op == 3:                                         # delete a line
        del lines[k]
    elif op == 4:                                         # change indentation
        ln = lines[k]
        if rng.random() < 0.5:
            lines[k] = b" " * rng.choice((1, 2, 4, 7)) + ln
        else:
            lines[k] = ln.lstrip(b" ")[:len(ln)] if rng.random() < 0.5 else ln[min(2, len(ln)):]
    elif op == 5:                                         # swap two lines
        j = rng.randrange(len(lines))
        lines[k], lines[j] = lines[j], lines[k]
    elif op == 6:                                         # anchor on one value, alias on another
        name = f"z{rng.randrange(4)}".encode()
        a, b = lines[k], lines[rng.randrange(len(lines))]
        if b": " in a:
            i = a.index(b": ") + 2
            lines[k] = a[:i] + b"&" + name + b" " + a[i:]
        j = rng.randrange(len(lines))
        if b": " in lines[j]:
            i = lines[j].index(b": ") + 2
            lines[j] = lines[j][:i] + b"*" + name + b"\n"
        elif b"- " in b:
            lines.insert(j, b.split(b"- ")[0] + b"- *" + name + b"\n")
    elif op == 7:                                         # merge key into a mapping
        ind = len(lines[k]) - len(lines[k].lstrip(b" "))
        lines.insert(k, b" " * ind + rng.choice((b"<<: *z0\n", b"<<: [*z0, *z1]\n", b"<<: {kind: ssh}\n")))
    elif op == 8:                                         # control character
        ln = lines[k]
        i = rng.randrange(len(ln) + 1)
        lines[k] = ln[:i] + rng.choice(_CONTROL) + ln[i:]
    elif op == 9:                                         # extreme value
        ln = lines[k]
        if b": " in ln:
            i = ln.index(b": ") + 2
            lines[k] = ln[:i] + rng.choice(_EXTREME) + b"\n"
    elif op == 10:                                        # snippet at the top level or anywhere
        lines.insert(rng.choice((0, len(lines), k)), rng.choice(_SNIPPETS))
    elif op == 11:                                        # truncate
        return data[:rng.randrange(n + 1)]
    elif op == 12:                                        # hostile names and keys
        ln = lines[k]
        if b":" in ln:
            i = ln.index(b":")
            ind = len(ln) - len(ln.lstrip(b" "))
            lines[k] = b" " * ind + rng.choice((b"../../tmp/x", b"--split-string=sh -c 'id'", b"a b", b"\"\\x01\"",
                                                b"-rf", b"x" * 300, b"\"\\u2028\"", b"1", b"true", b"null")) + ln[i:]
    else:                                                 # splice two lines' halves
        a, b = lines[k], lines[rng.randrange(len(lines))]
        lines[k] = a[:len(a) // 2] + b[len(b) // 2:]
    return b"".join(lines)


def mutate(rng: random.Random, data: bytes) -> bytes:
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 5))):
        data = mutate_once(rng, data)
    return data


# ----------------------------------------------------------------- running ---

class Hang(BaseException):
    """Raised by the alarm: a BaseException so that no ``except Exception`` in the loader swallows it."""


@dataclass
class Counts:
    cases: int = 0
    config_errors: int = 0
    ok: int = 0
    tracebacks: int = 0
    hangs: int = 0
    max_seconds: float = 0.0
    errors_without_line: int = 0
    multi_line_errors: int = 0
    examples: list = field(default_factory=list)  # (kind, seed file, case index, detail) of failures

    def as_dict(self, with_examples: bool = True) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "examples"}
        d["max_seconds"] = round(self.max_seconds, 3)
        if with_examples:
            d["examples"] = self.examples[:20]
        return d


def _on_alarm(signum, frame):
    raise Hang()


def run_case(path: Path, data: bytes, plan_testbed=None) -> str:
    """Load one mutated file; returns 'ok' or raises ConfigError (or anything else: a bug)."""
    from hilbed.orchestrator.config import load_scenario, load_testbed, redact, redact_config_text, secret_values
    from hilbed.orchestrator.plan import make_plan
    if path.name.endswith("testbed.yaml"):
        tb = load_testbed(path, data)
        redact(tb, secret_values(tb))
        redact_config_text(data.decode("utf-8"), path)
    else:
        sc = load_scenario(path, data)
        if plan_testbed is not None:
            make_plan(sc, plan_testbed)
    return "ok"


def run(cases: int, seed: int = 1, limit_s: float = 2.0, repo: Path = REPO, deadline_s: float | None = None) -> Counts:
    """``cases`` mutations (fewer if ``deadline_s`` of wall time runs out first)."""
    from hilbed.orchestrator.config import load_testbed
    from hilbed.orchestrator.yamlsrc import ConfigError
    seeds = seed_files(repo)
    tb = load_testbed(repo / "testbed.yaml")
    rng = random.Random(seed)
    counts = Counts()
    old = signal.signal(signal.SIGALRM, _on_alarm)
    t_end = time.monotonic() + deadline_s if deadline_s else None
    try:
        for i in range(cases):
            if t_end is not None and time.monotonic() > t_end:
                break
            path, orig = seeds[rng.randrange(len(seeds))]
            data = mutate(rng, orig)
            counts.cases += 1
            t0 = time.perf_counter()
            try:
                signal.setitimer(signal.ITIMER_REAL, limit_s)
                try:
                    run_case(path, data, tb)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                counts.ok += 1
            except ConfigError as exc:
                counts.config_errors += 1
                if exc.line is None:
                    counts.errors_without_line += 1
                    counts.examples.append(("no line", path.name, i, exc.one_line()[:300]))
                if "\n" in exc.one_line():
                    counts.multi_line_errors += 1
                    counts.examples.append(("multi-line", path.name, i, exc.one_line()[:300]))
            except Hang:
                counts.hangs += 1
                counts.examples.append(("hang", path.name, i, data[:300].decode("utf-8", "replace")))
            except Exception as exc:  # noqa: BLE001 - the point: any other exception is a finding
                counts.tracebacks += 1
                tb_last = traceback.format_exception(exc)[-3:]
                counts.examples.append(("traceback", path.name, i, "".join(tb_last)[-600:]))
            counts.max_seconds = max(counts.max_seconds, time.perf_counter() - t0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return counts


def case_bytes(index: int, seed: int = 1, repo: Path = REPO) -> tuple[Path, bytes]:
    """Rebuild case ``index`` of a run (to reproduce a finding)."""
    seeds = seed_files(repo)
    rng = random.Random(seed)
    for i in range(index + 1):
        path, orig = seeds[rng.randrange(len(seeds))]
        data = mutate(rng, orig)
    return path, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit-s", type=float, default=2.0, help="per-case time limit (a case over it is a hang)")
    ap.add_argument("--examples", action="store_true", help="also print up to 20 failing cases")
    ap.add_argument("--show", type=int, default=None, help="print case N's bytes and stop")
    args = ap.parse_args()
    if args.show is not None:
        path, data = case_bytes(args.show, args.seed)
        sys.stdout.write(f"# {path}\n")
        sys.stdout.buffer.write(data)
        return
    t0 = time.perf_counter()
    c = run(args.cases, args.seed, args.limit_s)
    out = c.as_dict(with_examples=args.examples)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

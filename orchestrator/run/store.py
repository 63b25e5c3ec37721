"""The run store: ``runs/<run-id>/``.

- ``manifest.json``: configs as loaded (text and parsed), git sha, package
  versions, host and node facts, clock offsets, state. Rewritten atomically;
  the version it replaced is kept as ``manifest.json.bak`` so a manifest
  damaged outside hilbed (a bad copy, a disk fault) has a way back.
- ``trials.jsonl``: one record per image, appended and fsynced as it arrives,
  so a killed controller loses nothing already measured.
- ``events.jsonl``: incidents and progress marks (agent deaths, retries).
- ``logs/<node>-<role>.log``: each agent's stderr.
- ``results.parquet``: the merged, typed table (built from trials.jsonl).

Writing never leaves half a line or a temp file behind: a failed append
(disk full, read-only, I/O error) truncates the file back to its last whole
line and raises :class:`StoreError`, a one-line :class:`RunError` naming the
path and the OS error. From then on the store refuses further appends with
the same error, so ``trials.jsonl`` is exactly what was measured up to the
failure and ``hilbed resume`` (after freeing space) measures the rest.

Reading never trusts the files: a line that is not UTF-8, not JSON or not a
record (not an object, a key missing, a field of the wrong type) is skipped
and counted; :meth:`RunStore.scan` says which lines and why.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from hilbed.nodes.events import RunEvent, run_event_kind
from hilbed.nodes.record import arrow_schema, record_problem
from hilbed.orchestrator.errors import RunError

#: the keys that identify a record (resume and merging use them)
#: line numbers kept per damaged file (the count is always exact)
MAX_LISTED_LINES = 1000


class StoreError(RunError):
    """The run directory cannot be written, or a file in it cannot be read as what it should be."""

    def __init__(self, message: str, path: Path | str | None = None, errno_: int | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None
        self.errno = errno_


def _os_reason(exc: BaseException) -> str:
    """``No space left on device [ENOSPC]``: the strerror and the symbolic errno, one line."""
    code = getattr(exc, "errno", None)
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    name = errno.errorcode.get(code, "") if isinstance(code, int) else ""
    return f"{text} [{name}]" if name else text


def _write_error(action: str, path: Path, exc: BaseException, then: str = "") -> StoreError:
    """One line: what could not be done to which path, the OS error, and the fix."""
    code = getattr(exc, "errno", None)
    hint = ""
    if code in (errno.ENOSPC, errno.EDQUOT):
        hint = "free space on that filesystem"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "make the directory writable or use another results directory (--results-dir)"
    hint = f"{hint}, then {then}" if hint and then else (hint or then)
    return StoreError(f"cannot {action} {path}: {_os_reason(exc)}" + (f"; {hint}" if hint else ""), path,
                      code if isinstance(code, int) else None)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (the directory entry itself)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the data itself was fsynced
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _unlink_quietly(path: Path | str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` so a reader sees the old or the new content, never a mix; raises StoreError.

    On failure the temporary file is removed: a full disk leaves no debris.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    fd = -1
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        _write_all(fd, data)
        os.fsync(fd)
        fd, closing = -1, fd
        os.close(closing)
        os.replace(tmp, path)
    except OSError as exc:
        if fd >= 0:
            os.close(fd)
        _unlink_quietly(tmp)
        raise _write_error("write", path, exc) from None
    except BaseException:  # interrupted (SIGTERM -> KeyboardInterrupt) between the steps: no debris either
        if fd >= 0:
            os.close(fd)
        _unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def new_run_id(scenario: str) -> str:
    return f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


# -- validating what is read back -------------------------------------------------------------------

def event_problem(ev: Any) -> str | None:
    if not isinstance(ev, dict):
        return f"not an event (a JSON {type(ev).__name__})"
    if not isinstance(ev.get("kind"), str):
        return "not an event (no kind)"
    return None


@dataclass
class Damage:
    """What reading a JSON-lines file skipped.

    ``skipped_lines``: 1-based line numbers (the first :data:`MAX_LISTED_LINES`); ``reasons``: line -> why;
    ``skipped``: the exact count; ``torn_tail``: the last line has no newline (a write cut short by a kill
    or a crash; :meth:`RunStore.repair_tail` removes it).
    """

    path: Path
    lines: int = 0
    good: int = 0
    skipped: int = 0
    skipped_lines: list[int] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)
    torn_tail: bool = False

    def add(self, lineno: int, reason: str) -> None:
        self.skipped += 1
        if len(self.skipped_lines) < MAX_LISTED_LINES:
            self.skipped_lines.append(lineno)
            self.reasons[lineno] = reason

    @property
    def damaged(self) -> bool:
        """Lines other than a torn final line were skipped (a torn tail alone is a normal kill)."""
        return self.skipped > (1 if self.torn_tail else 0)

    def reason_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.reasons.values():
            out[r] = out.get(r, 0) + 1
        return out

    def as_dict(self) -> dict:
        """For ``events.jsonl`` and the manifest."""
        return {"file": self.path.name, "lines": self.lines, "good": self.good, "skipped": self.skipped,
                "skipped_lines": list(self.skipped_lines), "reasons": {str(k): v for k, v in self.reasons.items()},
                "torn_tail": self.torn_tail}

    def summary(self) -> str:
        """One line for the terminal, e.g. ``trials.jsonl: skipped 2 of 50 lines (5: not JSON; 9: not UTF-8)``."""
        if not self.skipped:
            return f"{self.path.name}: {self.lines} lines, none damaged"
        shown = self.skipped_lines[:8]
        more = self.skipped - len(shown)
        parts = "; ".join(f"{n}: {self.reasons[n]}" for n in shown) + (f"; and {more} more" if more else "")
        return f"{self.path.name}: skipped {self.skipped} of {self.lines} lines ({parts})"


def scan_jsonl(path: Path, problem: Callable[[Any], str | None] = record_problem,
               damage: Damage | None = None) -> Iterator[dict]:
    """The good objects of a JSON-lines file in file order; every other line is counted in ``damage``.

    Bytes are read raw and decoded line by line, so one bad byte costs one line, not the file.
    """
    path = Path(path)
    d = damage if damage is not None else Damage(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {_os_reason(exc)}", path, exc.errno) from None
    with f:
        lineno = 0
        for raw in f:
            lineno += 1
            torn = not raw.endswith(b"\n")
            if not raw.strip():
                continue
            d.lines += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                d.add(lineno, f"not UTF-8 (byte {exc.start + 1})")
                continue
            try:
                obj = json.loads(text)
            except ValueError:
                if torn:
                    d.torn_tail = True
                    d.add(lineno, "torn final line (no newline)")
                else:
                    d.add(lineno, "not JSON")
                continue
            why = problem(obj)
            if why is not None:
                d.add(lineno, why)
                continue
            d.good += 1
            yield obj


class RunStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.trials_path = self.root / "trials.jsonl"
        self.events_path = self.root / "events.jsonl"
        self.manifest_path = self.root / "manifest.json"
        self.logs = self.root / "logs"
        self._fds: dict[Path, int] = {}
        self._append_lock = threading.Lock()
        #: the first failed write; appends refuse with it from then on (trials.jsonl stays as it was)
        self.failure: StoreError | None = None
        #: what the last full read of trials.jsonl skipped (records(), merged_records(), done_keys(), scan())
        self.last_damage: Damage | None = None
        self._swept = False

    @property
    def run_id(self) -> str:
        return self.root.name

    @property
    def backup_manifest_path(self) -> Path:
        return self.root / "manifest.json.bak"

    @classmethod
    def create(cls, results_dir: Path, scenario: str) -> "RunStore":
        """A new, empty run directory under ``results_dir``; StoreError when it cannot be made."""
        results_dir = Path(results_dir)
        try:
            results_dir.mkdir(parents=True, exist_ok=True)
            while True:
                root = results_dir / new_run_id(scenario)
                try:
                    root.mkdir()
                    break
                except FileExistsError:
                    continue
        except OSError as exc:
            raise _write_error("create a run directory in", results_dir, exc) from None
        store = cls(root)
        try:
            store.logs.mkdir()
        except OSError as exc:
            raise _write_error("create", store.logs, exc) from None
        return store

    def check_writable(self) -> None:
        """StoreError unless a file can be created in the run directory (before taking its lock or resuming)."""
        probe = self.root / f".write-probe.{os.getpid()}.{secrets.token_hex(3)}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise _write_error("write to the run directory", self.root, exc) from None
        os.close(fd)
        _unlink_quietly(probe)

    # -- manifest ---------------------------------------------------------
    def read_manifest(self) -> dict:
        """The manifest; StoreError (one line, naming the file and the backup) when it is not a JSON object."""
        p = self.manifest_path
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{p} does not exist: not a run directory", p, errno.ENOENT) from None
        except OSError as exc:
            raise StoreError(f"cannot read {p}: {_os_reason(exc)}", p, exc.errno) from None
        problem = None
        try:
            m = json.loads(data.decode("utf-8"))
            if not isinstance(m, dict):
                problem = f"it holds a JSON {type(m).__name__}, not an object"
        except UnicodeDecodeError as exc:
            problem = f"not UTF-8 at byte {exc.start}"
        except ValueError as exc:
            where = f", line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            problem = (f"{'not valid JSON' if data.rstrip().endswith(b'}') else 'truncated'} "
                       f"({len(data)} bytes; {getattr(exc, 'msg', exc)}{where})")
        if problem is None:
            return m
        bak = self.backup_manifest_path
        fix = (f"the previous version is {bak}: check it, then `cp {bak} {p}`" if self._backup_ok()
               else "there is no usable manifest.json.bak to restore it from (the records in trials.jsonl are "
                    "intact: `hilbed report` still reads them)")
        raise StoreError(f"{p} is damaged: {problem}; {fix}", p)

    def _backup_ok(self) -> bool:
        try:
            return isinstance(json.loads(self.backup_manifest_path.read_bytes().decode("utf-8")), dict)
        except (OSError, ValueError):
            return False

    def write_manifest(self, manifest: dict) -> None:
        """Replace the manifest atomically; the replaced version becomes ``manifest.json.bak``."""
        self._sweep_temp()
        data = (json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8")
        self._backup_manifest()
        atomic_write_bytes(self.manifest_path, data)

    def _backup_manifest(self) -> None:
        """Hard-link the current manifest (when it reads as JSON) to ``.bak``: no copy, atomic, best effort."""
        p = self.manifest_path
        if not p.exists():
            return
        try:
            if not isinstance(json.loads(p.read_bytes().decode("utf-8")), dict):
                return
        except (OSError, ValueError):
            return  # never let a damaged manifest replace a good backup
        tmp = self.root / f".manifest.json.bak.{os.getpid()}.{secrets.token_hex(3)}.tmp"
        try:
            os.link(p, tmp)
            os.replace(tmp, self.backup_manifest_path)
        except OSError:
            pass  # best effort: the manifest itself is still written
        finally:
            _unlink_quietly(tmp)  # gone after a successful replace; removed on any failure or interruption

    def update_manifest(self, **fields: Any) -> dict:
        m = self.read_manifest() if self.manifest_path.exists() else {}
        m.update(fields)
        self.write_manifest(m)
        return m

    def _sweep_temp(self) -> None:
        """Remove temp files that dead writers (a SIGKILLed controller) left in the run directory."""
        if self._swept:
            return
        self._swept = True
        for p in glob.glob(str(self.root / ".*.tmp")):
            parts = os.path.basename(p).split(".")
            pid = next((int(x) for x in parts if x.isdigit()), None)
            if pid is None or pid == os.getpid():
                continue
            try:
                os.kill(pid, 0)
                continue  # its writer is alive
            except ProcessLookupError:
                _unlink_quietly(p)
            except PermissionError:
                continue

    # -- appends ----------------------------------------------------------
    def _append(self, path: Path, line: str) -> None:
        """Append one line and fsync it; on failure cut the file back to its last whole line and raise."""
        data = line.encode("utf-8")
        with self._append_lock:
            if self.failure is not None:
                raise self.failure
            fd = self._fds.get(path)
            start = None
            try:
                if fd is None:
                    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    self._fds[path] = fd
                start = os.fstat(fd).st_size
                _write_all(fd, data)
                os.fsync(fd)
            except OSError as exc:
                if fd is not None and start is not None:
                    try:
                        os.ftruncate(fd, start)  # no half line left for the next append or a reader
                        os.fsync(fd)
                    except OSError:
                        pass
                self.failure = _write_error("append to", path, exc,
                                            f"`hilbed resume {self.root}` measures the rest (the records written "
                                            "so far are intact)")
                raise self.failure from None

    def append_record(self, rec: dict) -> None:
        self._append(self.trials_path, json.dumps(rec, separators=(",", ":"), default=str) + "\n")

    def append_event(self, kind: str | RunEvent, **fields: Any) -> None:
        kind = run_event_kind(kind)
        self._append(self.events_path, json.dumps({"t_ns": time.time_ns(), "kind": kind, **fields}, default=str) + "\n")

    # -- reading ----------------------------------------------------------
    def scan(self) -> Damage:
        """Read trials.jsonl through and say what was skipped (line numbers and reasons)."""
        d = Damage(self.trials_path)
        for _ in scan_jsonl(self.trials_path, record_problem, d):
            pass
        self.last_damage = d
        return d

    damage = scan

    def scan_events(self) -> Damage:
        d = Damage(self.events_path)
        for _ in scan_jsonl(self.events_path, event_problem, d):
            pass
        return d

    def records(self) -> Iterator[dict]:
        """Valid records in file order; damaged lines are skipped and counted in :attr:`last_damage`."""
        d = Damage(self.trials_path)
        yield from scan_jsonl(self.trials_path, record_problem, d)
        self.last_damage = d

    def events(self) -> Iterator[dict]:
        yield from scan_jsonl(self.events_path, event_problem)

    def repair_tail(self) -> int:
        """Drop a torn final line so appends start on a fresh line. Returns bytes dropped."""
        try:
            with open(self.trials_path, "r+b") as f:
                size = f.seek(0, os.SEEK_END)
                if size == 0:
                    return 0
                f.seek(size - 1)
                if f.read(1) == b"\n":
                    return 0
                cut, pos = 0, size
                while pos > 0:  # back to the last newline, without reading a large file whole
                    step = min(65536, pos)
                    pos -= step
                    f.seek(pos)
                    i = f.read(step).rfind(b"\n")
                    if i >= 0:
                        cut = pos + i + 1
                        break
                f.truncate(cut)
                f.flush()
                os.fsync(f.fileno())
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise _write_error("repair the torn last line of", self.trials_path, exc) from None
        return size - cut

    def merged_records(self) -> list[dict]:
        """One record per (trial, client, image): the last one written wins (a re-run supersedes)."""
        out: dict[tuple, dict] = {}
        for r in self.records():
            out[(r["trial_id"], r["client"], r["image_index"])] = r
        return list(out.values())

    def write_results(self, records: list[dict] | None = None) -> int:
        """``results.parquet`` (typed by the record contract) from ``records`` or trials.jsonl, atomically."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        records = self.merged_records() if records is None else records
        schema = arrow_schema()
        table = pa.Table.from_pydict({f.name: [r.get(f.name) for r in records] for f in schema}, schema=schema)
        path = self.root / "results.parquet"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            pq.write_table(table, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, pa.ArrowException) as exc:
            _unlink_quietly(tmp)
            raise _write_error("write", path, exc) from None
        fsync_dir(self.root)
        return len(records)

    def done_keys(self) -> set[tuple[str, str, int]]:
        return {(r["trial_id"], r["client"], r["image_index"]) for r in self.records()}

    def close(self) -> None:
        with self._append_lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass

"""Datasets and model weights by name: where each comes from, its checksums, where it lands (torch-free).

A scenario names ``cifar10:test`` or ``cifar-resnet:cifar10-resnet20`` rather
than a path beside one checkout. Each name resolves, in order, to:

1. the data root (``HILBED_DATA_DIR``, default ``<user cache>/hilbed/data``),
   where ``hilbed data fetch NAME`` puts it;
2. a local mirror (``HILBED_DATA_MIRROR``), read in place, for offline labs
   and tests (layout in docs/data.md);
3. for weights only, a download from the public URL (refused when
   ``HILBED_DATA_OFFLINE=1``); datasets are never downloaded implicitly
   because the CIFAR-10 archive is 170 MB: a missing one is one line naming
   the fetch command.

Every fetched file is checked against the checksum recorded here (CIFAR-10:
torchvision's ``CIFAR10`` md5s; weights: sha256; mirror-only ImageFolder
trees: a digest of every file).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

#: (bytes done, bytes total or None) -> None
Progress = Callable[[int, "int | None"], None]


class CatalogError(Exception):
    """One-line failure (missing, checksum mismatch, unknown name); the CLI prints it as is."""


class DatasetMissing(CatalogError, FileNotFoundError):
    """A named dataset is neither in the data root nor in the mirror."""


def data_dir() -> Path:
    """``HILBED_DATA_DIR``, else ``data/`` in hilbed's user cache directory."""
    env = os.environ.get("HILBED_DATA_DIR")
    if env:
        return Path(env).expanduser()
    from hilbed.nodes.paths import cache_dir
    return cache_dir() / "data"


def mirror_dir() -> Path | None:
    """``HILBED_DATA_MIRROR`` when set (a directory laid out like the data root, see docs/data.md)."""
    env = os.environ.get("HILBED_DATA_MIRROR")
    return Path(env).expanduser() if env else None


def offline() -> bool:
    return os.environ.get("HILBED_DATA_OFFLINE", "") not in ("", "0")


def _where_text() -> str:
    m = mirror_dir()
    return f"HILBED_DATA_DIR ({data_dir()}) nor HILBED_DATA_MIRROR ({m if m else 'unset'})"


# ----------------------------------------------------------- checksums ---

def file_digest(path: Path, algo: str, progress: Progress | None = None) -> str:
    h = hashlib.new(algo)
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return h.hexdigest()


def tree_digest(root: Path) -> tuple[str, int, int]:
    """sha256 over ``relpath NUL sha256(file)`` lines of every file, sorted: (digest, files, bytes)."""
    h = hashlib.sha256()
    n = size = 0
    for f in sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.relative_to(root).as_posix()):
        data = f.read_bytes()
        n += 1
        size += len(data)
        h.update(f"{f.relative_to(root).as_posix()}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return h.hexdigest(), n, size


@dataclass
class Check:
    """Where a name was found and whether its checksums hold."""

    name: str
    where: str                 # "root" | "mirror" | "missing"
    path: Path | None
    ok: bool | None            # None: not found
    detail: str = ""
    bytes: int = 0

    def as_dict(self) -> dict:
        return {"name": self.name, "where": self.where, "path": str(self.path) if self.path else None,
                "checksum": {True: "ok", False: "bad", None: "-"}[self.ok], "detail": self.detail,
                "bytes": self.bytes}


# ------------------------------------------------------------- download ---

def download(url: str, dest: Path, *, md5: str | None = None, sha256: str | None = None,
             progress: Progress | None = None, timeout: float = 60.0) -> Path:
    """Stream ``url`` to ``dest`` (via a per-process ``.part``) and check its hash before it gets its name."""
    if offline():
        raise CatalogError(f"download of {url} refused: HILBED_DATA_OFFLINE is set")
    algo, want = ("md5", md5) if md5 else ("sha256", sha256)
    if not want:
        raise CatalogError(f"download of {url}: no checksum to verify it against")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part(dest)
    h = hashlib.new(algo)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            done = 0
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise CatalogError(f"download of {url} failed: {exc}") from None
    got = h.hexdigest()
    if got != want:
        part.unlink(missing_ok=True)
        raise CatalogError(f"download of {url}: {algo} {got} != expected {want} (file discarded)")
    os.replace(part, dest)
    return dest


def _part(dest: Path) -> Path:
    """Temporary name beside ``dest``, per process: agents on one machine may fetch the same weights at once."""
    return dest.with_name(f"{dest.name}.{os.getpid()}.part")


def _copy(src: Path, dest: Path, progress: Progress | None) -> None:
    total = src.stat().st_size
    done = 0
    with open(src, "rb") as i, open(dest, "wb") as o:
        while chunk := i.read(1 << 20):
            o.write(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)


# -------------------------------------------------------------- entries ---

@dataclass(frozen=True)
class Entry:
    """A name and where it lives under the data root / mirror; subclasses know how to verify and fetch it."""

    name: str
    what: str
    rel: str                   # path under the data root and the mirror

    kind = "entry"

    def locate(self) -> tuple[str, Path] | None:
        for where, base in (("root", data_dir()), ("mirror", mirror_dir())):
            if base is not None and self._present(base / self.rel):
                return where, base / self.rel
        return None

    def _present(self, p: Path) -> bool:
        return p.exists()

    def check(self) -> Check:
        found = self.locate()
        if not found:
            return Check(self.name, "missing", None, None)
        where, p = found
        ok, detail, size = self.verify(p)
        return Check(self.name, where, p, ok, detail, size)

    def verify(self, p: Path) -> tuple[bool, str, int]:
        raise NotImplementedError

    def fetch(self, progress: Progress | None = None, force: bool = False) -> Path:
        raise NotImplementedError


@dataclass(frozen=True)
class WeightsEntry(Entry):
    """One checkpoint file with a public URL and its sha256."""

    url: str = ""
    sha256: str = ""
    size: int = 0
    kind = "weights"

    def _present(self, p: Path) -> bool:
        return p.is_file()

    def verify(self, p: Path, progress: Progress | None = None) -> tuple[bool, str, int]:
        got = file_digest(p, "sha256", progress)
        if got != self.sha256:
            return False, f"{p}: sha256 {got[:16]}... != expected {self.sha256[:16]}...", p.stat().st_size
        return True, "sha256 ok", p.stat().st_size

    def fetch(self, progress: Progress | None = None, force: bool = False) -> Path:
        dest = data_dir() / self.rel
        if dest.is_file() and not force:
            ok, detail, _ = self.verify(dest)
            if ok:
                return dest
        m = mirror_dir()
        if m is not None and (m / self.rel).is_file():
            src = m / self.rel
            ok, detail, _ = self.verify(src)
            if not ok:
                raise CatalogError(f"{self.name}: mirror copy is corrupt: {detail}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = _part(dest)
            _copy(src, part, progress)
            ok, detail, _ = self.verify(part)
            if not ok:
                part.unlink(missing_ok=True)
                raise CatalogError(f"{self.name}: copy from the mirror is corrupt: {detail}")
            os.replace(part, dest)
            return dest
        return download(self.url, dest, sha256=self.sha256, progress=progress)


@dataclass(frozen=True)
class CifarEntry(Entry):
    """A split of CIFAR-10's python version: pickled batches extracted from the upstream archive.

    The URL, archive md5 and per-batch md5s are torchvision's ``CIFAR10``
    (tests check them against torchvision's source when it is installed).
    """

    files: tuple[tuple[str, str], ...] = ()          # (file in cifar-10-batches-py, md5)
    url: str = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    archive: str = "cifar-10-python.tar.gz"
    archive_md5: str = "c58f30108f718f92721af3b95e74349a"
    meta: tuple[str, str] = ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888")
    kind = "cifar10-batches"

    def all_files(self) -> tuple[tuple[str, str], ...]:
        return (*self.files, self.meta)

    def _present(self, p: Path) -> bool:
        return all((p / f).is_file() for f, _ in self.all_files())

    def verify(self, p: Path, progress: Progress | None = None) -> tuple[bool, str, int]:
        size = 0
        for f, md5 in self.all_files():
            got = file_digest(p / f, "md5")
            size += (p / f).stat().st_size
            if got != md5:
                return False, f"{p / f}: md5 {got} != expected {md5}", size
        return True, f"md5 ok ({len(self.all_files())} files)", size

    def fetch(self, progress: Progress | None = None, force: bool = False) -> Path:
        dest = data_dir() / self.rel
        if self._present(dest) and not force and self.verify(dest)[0]:
            return dest
        m = mirror_dir()
        src_dir = m / self.rel if m is not None else None
        if src_dir is not None and self._present(src_dir):
            ok, detail, _ = self.verify(src_dir)
            if not ok:
                raise CatalogError(f"{self.name}: mirror copy is corrupt: {detail}")
            dest.mkdir(parents=True, exist_ok=True)
            for f, _ in self.all_files():
                part = _part(dest / f)
                _copy(src_dir / f, part, progress)
                os.replace(part, dest / f)
        else:
            parent = dest.parent
            archive = parent / self.archive
            if not (archive.is_file() and file_digest(archive, "md5") == self.archive_md5):
                mirrored = m / Path(self.rel).parent / self.archive if m is not None else None
                if mirrored is not None and mirrored.is_file():
                    if file_digest(mirrored, "md5") != self.archive_md5:
                        raise CatalogError(f"{self.name}: mirror archive {mirrored} fails its md5 "
                                           f"(expected {self.archive_md5})")
                    parent.mkdir(parents=True, exist_ok=True)
                    _copy(mirrored, archive, progress)
                else:
                    download(self.url, archive, md5=self.archive_md5, progress=progress)
            _extract(archive, parent, Path(self.rel).name)
        ok, detail, _ = self.verify(dest)
        if not ok:
            raise CatalogError(f"{self.name}: {detail}")
        return dest


def _extract(archive: Path, into: Path, top: str) -> None:
    """Only members under ``top/``, with tarfile's 'data' filter (no links out, no absolute paths)."""
    with tarfile.open(archive, "r:*") as tf:
        members = [mm for mm in tf.getmembers() if mm.name == top or mm.name.startswith(top + "/")]
        if not members:
            raise CatalogError(f"{archive}: no {top}/ inside")
        tf.extractall(into, members=members, filter="data")


@dataclass(frozen=True)
class TreeEntry(Entry):
    """An ImageFolder tree that only mirrors hold (no public archive): pinned by a digest of every file."""

    digest: str = ""
    count: int = 0
    size: int = 0
    kind = "imagefolder-tree"

    def _present(self, p: Path) -> bool:
        return p.is_dir()

    def verify(self, p: Path, progress: Progress | None = None) -> tuple[bool, str, int]:
        got, n, size = tree_digest(p)
        if got != self.digest:
            bad = f"{n} files" if n != self.count else "same file count, different contents"
            return False, f"{p}: tree digest {got[:16]}... != expected {self.digest[:16]}... ({bad})", size
        return True, f"tree digest ok ({n} files)", size

    def fetch(self, progress: Progress | None = None, force: bool = False) -> Path:
        dest = data_dir() / self.rel
        if dest.is_dir() and not force and self.verify(dest)[0]:
            return dest
        m = mirror_dir()
        src = m / self.rel if m is not None else None
        if src is None or not src.is_dir():
            raise CatalogError(f"{self.name} has no public download; it comes from a mirror: set "
                               f"HILBED_DATA_MIRROR to a folder holding {self.rel}/ (see docs/data.md)")
        part = _part(dest)
        shutil.rmtree(part, ignore_errors=True)
        files = sorted(q for q in src.rglob("*") if q.is_file())
        total = sum(q.stat().st_size for q in files)
        done = 0
        for q in files:
            out = part / q.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(q, out)
            done += q.stat().st_size
            if progress:
                progress(done, total)
        ok, detail, _ = self.verify(part)
        if not ok:
            shutil.rmtree(part, ignore_errors=True)
            raise CatalogError(f"{self.name}: mirror copy fails its checksum: {detail.replace(str(part), str(src))}")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(part, dest)
        return dest


_TRAIN_MD5 = (("data_batch_1", "c99cafc152244af753f735de768cd75f"),
              ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
              ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
              ("data_batch_4", "634d18415352ddfa80567beed471001a"),
              ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"))
_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"

CATALOG: dict[str, Entry] = {e.name: e for e in (
    CifarEntry("cifar10:test", "CIFAR-10 test split, 10,000 32x32 images (upstream python batches)",
               "cifar10/cifar-10-batches-py", files=(("test_batch", "40351d587109b95175f43aff81a1287e"),)),
    CifarEntry("cifar10:train", "CIFAR-10 train split, 50,000 32x32 images (upstream python batches)",
               "cifar10/cifar-10-batches-py", files=_TRAIN_MD5),
    TreeEntry("cifar10:dev", "2,000 CIFAR-10 test images (200 per class) as JPEG q75, ImageFolder; mirror only",
              "cifar10/dev", digest="164ff3ee59baec1c5f447b59af1f6b07a806a9dd89c35a377283fa80b290f33a",
              count=2000, size=1842546),
    TreeEntry("cifar10:fit", "10,000 CIFAR-10 train images (1,000 per class) as JPEG q75, ImageFolder, "
              "for fitting codecs; mirror only", "cifar10/train",
              digest="3a6f389863e0a59aff3faa2076ad450837843c7694248e7e7746c102c065ae8c", count=10000, size=9210287),
    WeightsEntry("cifar10-resnet20", "CIFAR-10 ResNet-20 (He et al., option A; 91.73% top-1), akamaster",
                 "models/resnet20-12fca82f.th", url=_AKAMASTER + "resnet20-12fca82f.th",
                 sha256="12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8", size=1099231),
    WeightsEntry("cifar10-resnet56", "CIFAR-10 ResNet-56 (He et al., option A; 93.39% top-1), akamaster",
                 "models/resnet56-4bfd9763.th", url=_AKAMASTER + "resnet56-4bfd9763.th",
                 sha256="4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367", size=3471733),
)}


def entry(name: str) -> Entry:
    try:
        return CATALOG[name]
    except KeyError:
        raise CatalogError(f"unknown name {name!r} (allowed: {', '.join(CATALOG)})") from None


def fetch(name: str, progress: Progress | None = None, force: bool = False) -> Path:
    """Put ``name`` into the data root (from the mirror when it has it, else the network), checksums checked."""
    return entry(name).fetch(progress, force)


def weights_path(name_or_path: str) -> Path:
    """A catalog weights name (``cifar10-resnet20``) or a file path -> a local, checksum-verified file.

    Data root, else the mirror (read in place), else a download into the data
    root. A path that exists is returned as is (unchecked: it is the user's).
    """
    e = CATALOG.get(name_or_path)
    if not isinstance(e, WeightsEntry):
        p = Path(name_or_path).expanduser()
        if p.is_file():
            return p
        names = ", ".join(n for n, x in CATALOG.items() if isinstance(x, WeightsEntry))
        raise CatalogError(f"model weights {name_or_path!r}: no such file and not a catalog name ({names})")
    found = e.locate()
    if found:
        where, p = found
        ok, detail, _ = e.verify(p)
        if ok:
            return p
        if where == "mirror" or offline():
            raise CatalogError(f"{e.name}: {detail}")
    elif offline():
        raise CatalogError(f"model weights {e.name} are not in {_where_text()}, and HILBED_DATA_OFFLINE is set: "
                           f"run `hilbed data fetch {e.name}`")
    return e.fetch(force=True)


def dataset_path(spec: str) -> Path:
    """Where a catalog dataset is read from (data root, else mirror); DatasetMissing with the fetch command."""
    e = entry(spec)
    found = e.locate()
    if not found:
        raise DatasetMissing(f"dataset {spec} is not in {_where_text()}: run `hilbed data fetch {spec}`")
    return found[1]


def dataset_names() -> list[str]:
    return [n for n, e in CATALOG.items() if not isinstance(e, WeightsEntry)]


def weights_names() -> list[str]:
    return [n for n, e in CATALOG.items() if isinstance(e, WeightsEntry)]


def check_all() -> list[Check]:
    return [e.check() for e in CATALOG.values()]

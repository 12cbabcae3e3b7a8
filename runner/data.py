"""CIFAR-10 (python version): find it, download and extract it if needed, load batches as tensors.

Everything that can go wrong with the data raises DataError with a message that says what to do.
Folders this module writes (extracted batches) only ever appear through an atomic rename of a
finished temporary folder, so a folder with the expected files under its final name is complete.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from runner.errors import DataError

try:  # stdlib, but optional in some Python builds; without it .tar.xz cannot be opened anyway
    import lzma
    _LZMA_ERRORS: tuple = (lzma.LZMAError,)
except ImportError:  # pragma: no cover
    _LZMA_ERRORS = ()

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
BATCH_DIR = "cifar-10-batches-py"
ENV_VAR = "RUNNER_DATA"
OFFICIAL_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# The minimum a usable copy holds: the official archive has data_batch_1..5, but offline copies may
# carry only the first training batch.
REQUIRED = ("batches.meta", "data_batch_1", "test_batch")
ARCHIVE_NAMES = ("cifar-10-python.tar.gz", "cifar-10-python.tar.xz")
TIMEOUT_S = 60
CHUNK = 1 << 20
HINT = ("point at a local copy with --data PATH, the RUNNER_DATA environment variable, or the spec's "
        "data.root key (an archive .tar.gz/.tar.xz or a folder holding cifar-10-batches-py)")
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error) + _LZMA_ERRORS


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"  # XDG: ignore relative
    return root / "runner" / "cifar10"


@dataclass(frozen=True)
class DataSource:
    """A run's CIFAR-10, resolved once (`resolve`): the folder holding the batches, and what chose
    it (--data, RUNNER_DATA, a spec's data.root or the default cache). A run carries it; a job sent
    to another process carries `str(source)`, the folder, which resolves to itself there."""

    folder: Path
    chosen_by: str

    def __str__(self) -> str:
        return str(self.folder)


def resolve(given=None, spec=None) -> DataSource:
    """Where a run of `spec` finds CIFAR-10: `given` (--data, runner.run(data=...)) wins over
    RUNNER_DATA, which wins over the spec's data.root; else the per-user cache, downloaded when
    missing. A folder or archive is located (an archive unpacked once into the cache); a problem
    is a DataError naming the setting that chose the place."""
    if isinstance(given, DataSource):
        return given
    root = spec.data.root if spec is not None else None
    for value, chosen_by in ((given, "--data"), (os.environ.get(ENV_VAR), ENV_VAR),
                             (root, f"data.root of {getattr(spec, 'path', 'the spec')}")):
        if value:  # an empty string (e.g. RUNNER_DATA=) counts as unset
            try:
                return DataSource(locate(str(value)), chosen_by)
            except DataError as exc:
                if chosen_by == "--data":
                    raise
                raise DataError(f"{exc} ({chosen_by})") from exc
    return DataSource(locate(None), "the default cache")


def locate(source: str | os.PathLike | None = None, *, url: str = OFFICIAL_URL, md5: str | None = OFFICIAL_MD5,
           cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Return a directory that holds the cifar-10-batches-py files (data_batch_1, test_batch, batches.meta ...)."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if source is None or str(source) == "":
        target = cache
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create the data cache {target} ({e}); {HINT}") from e
    else:
        path = Path(source).expanduser()
        if path.is_file():
            return _from_archive(path, cache)
        if not path.is_dir():
            raise DataError(f"{path} does not exist; {HINT}")
        target = path
    found = _complete_in(target)
    if found is not None:
        return found
    for name in ARCHIVE_NAMES:  # a folder holding the archive itself (like the offline copy): use it
        if (target / name).is_file():
            return _from_archive(target / name, cache)
    if (target / BATCH_DIR).exists():  # not ours (ours appear complete or not at all): don't guess
        raise DataError(f"{target / BATCH_DIR} is incomplete (it needs {', '.join(REQUIRED)}; it holds "
                        f"{_listing(target / BATCH_DIR)}); delete it to download again, or {HINT}")
    archive = _download(url, md5, target, progress)
    try:
        return _extract_atomic(archive, target)
    finally:
        archive.unlink(missing_ok=True)  # the extracted folder is the cache; the archive is not kept


def load_batches(directory, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 N x 3 x 32 x 32 (RGB) and labels int64 N, the named batches concatenated in order."""
    if not names:
        raise ValueError("load_batches needs at least one batch name")
    images, labels = [], []
    for name in names:
        path = Path(directory) / name
        batch = _unpickle(path)
        if not isinstance(batch, dict):
            raise DataError(f"{path}: not a CIFAR-10 batch (a pickled {type(batch).__name__}, expected a dict)")
        if b"data" not in batch or b"labels" not in batch:
            keys = ", ".join(repr(k) for k in batch) or "none"
            raise DataError(f"{path}: not a CIFAR-10 batch (needs keys b'data' and b'labels'; has {keys})")
        data, raw_labels = batch[b"data"], batch[b"labels"]
        if str(getattr(data, "dtype", "")) != "uint8" or getattr(data, "ndim", 0) != 2 or data.shape[1] != 3072 \
                or data.shape[0] == 0:
            shape = getattr(data, "shape", None)
            raise DataError(f"{path}: b'data' must be a non-empty uint8 array of shape (n, 3072); "
                            f"got {type(data).__name__} dtype={getattr(data, 'dtype', None)} shape={shape}")
        n = data.shape[0]
        try:
            lab = torch.as_tensor(raw_labels)
        except (TypeError, ValueError, RuntimeError) as e:
            raise DataError(f"{path}: b'labels' is not a list of integers ({e})") from e
        if lab.dtype.is_floating_point or lab.dtype.is_complex or lab.dtype == torch.bool or lab.shape != (n,):
            raise DataError(f"{path}: b'labels' must hold {n} integers (one per image); "
                            f"got dtype={lab.dtype} shape={tuple(lab.shape)}")
        if int(lab.min()) < 0 or int(lab.max()) > 9:
            raise DataError(f"{path}: labels must be in 0..9; found {int(lab.min())}..{int(lab.max())}")
        # Each row is 1024 R, then 1024 G, then 1024 B values, each plane row-major: a plain reshape.
        images.append(torch.from_numpy(data).reshape(n, 3, 32, 32))
        labels.append(lab.to(torch.int64))
    return torch.cat(images).contiguous(), torch.cat(labels).contiguous()  # cat copies: no numpy aliasing


def class_names(directory) -> list[str]:
    """Class names from batches.meta; the official ten if the file or its b'label_names' is absent."""
    path = Path(directory) / "batches.meta"
    if not path.is_file():
        return list(OFFICIAL_CLASSES)
    meta = _unpickle(path)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(x, (bytes, str)) for x in names):
        return list(OFFICIAL_CLASSES)
    return [x.decode("utf-8") if isinstance(x, bytes) else x for x in names]


# --- internals -------------------------------------------------------------------------------------

class _BatchUnpickler(pickle.Unpickler):
    """Batches are pickles, and a downloaded or user-supplied file could carry code: only let through
    the numpy reconstruction helpers that the official files (and numpy's own pickles) use."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path):
    if not path.is_file():
        raise DataError(f"{path} is missing; {path.parent} holds {_listing(path.parent)}; {HINT}")
    try:
        with open(path, "rb") as f:
            return _BatchUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    except Exception as e:  # truncated or foreign files fail in many ways (EOFError, UnpicklingError, ...)
        raise DataError(f"{path}: not a CIFAR-10 batch ({type(e).__name__}: {e}); "
                        f"the file is truncated or of another kind: delete it and extract again, or {HINT}") from e


def _listing(folder: Path) -> str:
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return "nothing (no such folder)"
    # A required name that is a folder, not a file, is why the batches look missing: say so.
    shown = [f"{name} (a folder, not a file)" if name in REQUIRED and (folder / name).is_dir() else name
             for name in names]
    return ", ".join(shown) if shown else "nothing"


def _complete_in(folder: Path) -> Path | None:
    for candidate in (folder, folder / BATCH_DIR):
        if all((candidate / name).is_file() for name in REQUIRED):
            return candidate
    return None


def _from_archive(archive: Path, cache: Path) -> Path:
    # Keyed by name+size+mtime: a different (or updated) archive gets its own folder, the same one is reused.
    st = archive.stat()
    key = re.sub(r"[^A-Za-z0-9._-]", "_", f"{archive.name}-{st.st_size}-{st.st_mtime_ns}")
    parent = cache / key
    found = _complete_in(parent)
    if found is not None:
        return found
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {parent} to extract {archive} into ({e}); pass a writable cache folder") from e
    return _extract_atomic(archive, parent)


def _extract_atomic(archive: Path, parent: Path) -> Path:
    """Extract into a temporary sibling, then rename the batch folder to parent/BATCH_DIR in one step."""
    final = parent / BATCH_DIR
    tmp = Path(tempfile.mkdtemp(prefix=f".{BATCH_DIR}.", suffix=".partial", dir=parent))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                _safe_extractall(tar, tmp)
        except _TAR_ERRORS as e:
            raise DataError(f"cannot extract {archive} ({type(e).__name__}: {e}); it must be a tar archive "
                            f"(.tar.gz/.tar.xz) of CIFAR-10's python version; {HINT}") from e
        found = next((Path(d) for d, _, files in os.walk(tmp) if set(REQUIRED) <= set(files)), None)
        if found is None:
            raise DataError(f"{archive} holds no folder with {', '.join(REQUIRED)}; it is not CIFAR-10's "
                            f"python version; {HINT}")
        try:
            os.replace(found, final)
        except OSError as e:
            if _complete_in(final) != final:  # a concurrent run may have won the race: that is fine
                raise DataError(f"cannot move the extracted data into {final} ({e})") from e
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _safe_extractall(tar: tarfile.TarFile, dest: Path) -> None:
    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12: rejects traversal, links out, devices
        tar.extractall(dest, filter="data")
        return
    for member in tar.getmembers():  # older Pythons: the same guard by hand
        parts = Path(member.name).parts
        if member.name.startswith(("/", "\\")) or ".." in parts or not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"refusing unsafe member {member.name!r}")
    tar.extractall(dest)


def _download(url: str, md5: str | None, folder: Path, progress: bool) -> Path:
    """Stream url into folder/<name>.*.part, checking length and md5; return the verified file."""
    name = Path(urllib.parse.urlparse(url).path).name or "cifar-10-python.tar.gz"
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f"{name}.", suffix=".part", dir=folder)
    except OSError as e:
        raise DataError(f"no CIFAR-10 data found at {folder}, and it cannot be downloaded there ({e}); "
                        f"{HINT}") from e
    part = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            got, done = _stream(url, out, progress)
    except BaseException as e:
        part.unlink(missing_ok=True)  # never leave a partial file behind, whatever stopped us
        if isinstance(e, (OSError, ValueError, http.client.HTTPException)):
            raise DataError(f"no CIFAR-10 data found at {folder} and the download from {url} failed "
                            f"({_reason(e)}); {HINT}") from e
        raise
    if md5 and got != md5.lower():
        part.unlink(missing_ok=True)
        raise DataError(f"the download from {url} is corrupt: expected md5 {md5}, got {got} ({done} bytes); "
                        f"it was deleted. Try again later, or {HINT}")
    return part


class _ShortTransfer(OSError):
    pass


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return str(e.reason)  # e.g. "[Errno 111] Connection refused" rather than "<urlopen error ...>"
    return str(e) or type(e).__name__


def _stream(url: str, out, progress: bool) -> tuple[str, int]:
    digest, done, last = hashlib.md5(usedforsecurity=False), 0, 0.0
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if progress:
            print(f"downloading {url}", file=sys.stderr)
        while chunk := resp.read(CHUNK):
            out.write(chunk)
            digest.update(chunk)  # hash while streaming: no second pass over the file
            done += len(chunk)
            if progress and (time.monotonic() - last > 0.2 or done == total):
                last = time.monotonic()
                frac = done / total if total else 0.0
                print(f"\r  [{'#' * int(30 * frac):<30}] {done / 2**20:7.1f}"
                      + (f" / {total / 2**20:.1f} MiB" if total else " MiB"), end="", file=sys.stderr, flush=True)
        if progress:
            print(file=sys.stderr)
    if total is not None and done != total:  # the server closed early: http.client just returns b""
        raise _ShortTransfer(f"transfer interrupted after {done} of {total} bytes")
    return digest.hexdigest(), done

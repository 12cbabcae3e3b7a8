"""runner.data: locating, downloading (over a real local HTTP server), extracting and loading CIFAR-10."""
from __future__ import annotations

import collections
import hashlib
import io
import os
import pickle
import socket
import tarfile
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from runner import data
from runner.data import BATCH_DIR, class_names, load_batches, locate
from runner.errors import DataError

OFFICIAL = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# --- synthetic CIFAR-like data ------------------------------------------------------------------------

def make_batch(n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {b"batch_label": b"synthetic", b"labels": torch.randint(0, 10, (n,), generator=g).tolist(),
            b"data": torch.randint(0, 256, (n, 3072), dtype=torch.uint8, generator=g).numpy(),
            b"filenames": [b"img_%d.png" % i for i in range(n)]}


def expected(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(batch[b"data"]).reshape(-1, 3, 32, 32), torch.tensor(batch[b"labels"])


META = {b"num_cases_per_batch": 20, b"label_names": [n.encode() for n in OFFICIAL], b"num_vis": 3072}


def make_archive(path: Path, mode: str = "w:gz", seed: int = 0, members: dict | None = None) -> dict:
    """Write a tar like the official one (cifar-10-batches-py/...) with 20 images per batch."""
    batches = {"data_batch_1": make_batch(20, seed), "test_batch": make_batch(20, seed + 1)}
    if members is None:
        members = {f"{BATCH_DIR}/{k}": pickle.dumps(v, protocol=2) for k, v in batches.items()}
        members[f"{BATCH_DIR}/batches.meta"] = pickle.dumps(META, protocol=2)
    with tarfile.open(path, mode) as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return batches


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_no_leftovers(cache: Path) -> None:
    left = files_under(cache)
    assert not [p for p in left if p.endswith(".part") or ".partial" in p or BATCH_DIR in p], left


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("archive") / "cifar-10-python.tar.gz"
    batches = make_archive(path)
    blob = path.read_bytes()
    return {"path": path, "bytes": blob, "md5": hashlib.md5(blob).hexdigest(), "batches": batches}


# --- a real HTTP server on 127.0.0.1 ----------------------------------------------------------------

class Server:
    def __init__(self):
        self.routes: dict[str, tuple[bytes, str]] = {}  # path -> (body, "ok" | "truncate")
        self.hits: collections.Counter = collections.Counter()
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def server():
    state = Server()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            state.hits[self.path] += 1
            if self.path not in state.routes:
                self.send_error(404)
                return
            body, kind = state.routes[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            # "truncate": promise more than we send, then close the connection (HTTP/1.0 closes after us).
            self.send_header("Content-Length", str(len(body) + (1000 if kind == "truncate" else 0)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if kind == "truncate" else body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


# --- downloader -----------------------------------------------------------------------------------

def test_download_extracts_verifies_and_is_reused(server, synthetic, tmp_path, capsys):
    server.routes["/c.tar.gz"] = (synthetic["bytes"], "ok")
    cache = tmp_path / "cache"
    got = locate(None, url=server.url("/c.tar.gz"), md5=synthetic["md5"], cache_dir=cache)
    assert got == cache / BATCH_DIR
    for name, batch in synthetic["batches"].items():
        x, y = load_batches(got, [name])
        ex, ey = expected(batch)
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape == (20, 3, 32, 32)
        assert torch.equal(x, ex) and torch.equal(y, ey)
    assert class_names(got) == OFFICIAL
    assert server.hits["/c.tar.gz"] == 1
    assert "c.tar.gz" in capsys.readouterr().err  # progress went to stderr
    # Complete now: no second request, and neither the archive nor temp files are left over.
    assert locate(None, url=server.url("/c.tar.gz"), md5=synthetic["md5"], cache_dir=cache, progress=False) == got
    assert server.hits["/c.tar.gz"] == 1
    assert sorted(p.name for p in cache.iterdir()) == [BATCH_DIR]


def test_download_into_an_empty_source_folder(server, synthetic, tmp_path):
    server.routes["/c.tar.gz"] = (synthetic["bytes"], "ok")
    folder = tmp_path / "mine"
    folder.mkdir()
    got = locate(folder, url=server.url("/c.tar.gz"), md5=synthetic["md5"], cache_dir=tmp_path / "unused",
                 progress=False)
    assert got == folder / BATCH_DIR and not (tmp_path / "unused").exists()


def test_checksum_mismatch_leaves_nothing_then_right_md5_succeeds(server, synthetic, tmp_path):
    server.routes["/c.tar.gz"] = (synthetic["bytes"], "ok")
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        locate(None, url=server.url("/c.tar.gz"), md5="0" * 32, cache_dir=cache, progress=False)
    assert "0" * 32 in str(err.value) and synthetic["md5"] in str(err.value)  # expected vs got
    assert_no_leftovers(cache)
    assert err.value.exit_code == 3
    got = locate(None, url=server.url("/c.tar.gz"), md5=synthetic["md5"], cache_dir=cache, progress=False)
    assert torch.equal(load_batches(got, ["test_batch"])[0], expected(synthetic["batches"]["test_batch"])[0])


def test_interrupted_transfer_leaves_nothing(server, synthetic, tmp_path):
    server.routes["/cut.tar.gz"] = (synthetic["bytes"], "truncate")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="interrupted") as err:
        locate(None, url=server.url("/cut.tar.gz"), md5=synthetic["md5"], cache_dir=cache, progress=False)
    assert "--data" in str(err.value)
    assert server.hits["/cut.tar.gz"] == 1
    assert_no_leftovers(cache)


def test_http_error_is_a_data_error(server, tmp_path):
    with pytest.raises(DataError, match="404"):
        locate(None, url=server.url("/missing.tar.gz"), cache_dir=tmp_path, progress=False)
    assert_no_leftovers(tmp_path)


def test_offline_says_where_to_point(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
    with pytest.raises(DataError) as err:
        locate(None, url=url, cache_dir=tmp_path, progress=False)
    msg = str(err.value)
    assert "--data" in msg and "RUNNER_DATA" in msg and "data.root" in msg
    assert url in msg and str(tmp_path) in msg
    assert_no_leftovers(tmp_path)


# --- local archives and folders --------------------------------------------------------------------

def test_local_tar_xz_is_extracted_once_and_reused(tmp_path, monkeypatch):
    archive = tmp_path / "copy.tar.xz"
    batches = make_archive(archive, "w:xz", seed=5)
    cache = tmp_path / "cache"
    got = locate(archive, cache_dir=cache, progress=False)
    assert got.name == BATCH_DIR and got.parent.parent == cache
    assert torch.equal(load_batches(got, ["data_batch_1"])[0], expected(batches["data_batch_1"])[0])

    def no_extraction(*a, **k):
        raise AssertionError("extracted again")

    monkeypatch.setattr(data.tarfile, "open", no_extraction)
    assert locate(str(archive), cache_dir=cache, progress=False) == got
    monkeypatch.undo()
    # A different archive (other size/mtime) gets its own folder, never the first one's files.
    other = tmp_path / "other" / "copy.tar.xz"
    other.parent.mkdir()
    other_batches = make_archive(other, "w:xz", seed=9, members=None)
    os.utime(other, ns=(1, 1))
    got2 = locate(other, cache_dir=cache, progress=False)
    assert got2 != got
    assert torch.equal(load_batches(got2, ["test_batch"])[1], expected(other_batches["test_batch"])[1])


def test_interrupted_extraction_does_not_count_as_complete(tmp_path, monkeypatch):
    archive = tmp_path / "copy.tar.gz"
    batches = make_archive(archive)
    cache = tmp_path / "cache"
    real_extract = data._safe_extractall

    def extract_then_die(tar, dest):  # like a kill -9 after extraction, before the rename
        real_extract(tar, dest)
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "_safe_extractall", extract_then_die)
    monkeypatch.setattr(data.shutil, "rmtree", lambda *a, **k: None)  # a killed process cleans nothing up
    with pytest.raises(KeyboardInterrupt):
        locate(archive, cache_dir=cache, progress=False)
    monkeypatch.undo()
    leftover = [p for p in cache.rglob("*") if p.is_dir() and p.name.endswith(".partial")]
    assert len(leftover) == 1 and any(p.name == "test_batch" for p in leftover[0].rglob("*"))
    # The full files sit only in the temp folder: nothing under a final name.
    assert [p for p in cache.rglob(BATCH_DIR) if ".partial" not in str(p)] == []

    calls = []
    monkeypatch.setattr(data, "_safe_extractall", lambda tar, dest: (calls.append(dest), real_extract(tar, dest)))
    got = locate(archive, cache_dir=cache, progress=False)
    assert len(calls) == 1 and ".partial" not in str(got) and got.name == BATCH_DIR
    assert torch.equal(load_batches(got, ["data_batch_1"])[1], expected(batches["data_batch_1"])[1])


def test_folder_sources(tmp_path, synthetic):
    with tarfile.open(synthetic["path"]) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    batch_folder = tmp_path / "x" / BATCH_DIR
    cache = tmp_path / "cache"
    assert locate(batch_folder, cache_dir=cache) == batch_folder  # holds the files directly
    assert locate(tmp_path / "x", cache_dir=cache) == batch_folder  # holds cifar-10-batches-py/
    # A folder holding the archive itself (like the offline copy) extracts it into the cache.
    holder = tmp_path / "holder"
    holder.mkdir()
    (holder / "cifar-10-python.tar.gz").write_bytes(synthetic["bytes"])
    got = locate(holder, cache_dir=cache, progress=False)
    assert cache in got.parents and got.name == BATCH_DIR
    with pytest.raises(DataError, match="does not exist"):
        locate(tmp_path / "nope", cache_dir=cache)


def test_incomplete_foreign_folder_is_reported_not_overwritten(tmp_path):
    (tmp_path / BATCH_DIR).mkdir()
    (tmp_path / BATCH_DIR / "data_batch_1").write_bytes(b"x")
    with pytest.raises(DataError, match="incomplete") as err:
        locate(tmp_path, url="http://127.0.0.1:9/never", progress=False)
    assert "data_batch_1" in str(err.value)


def test_a_folder_where_a_batch_file_should_be_is_named_as_such(tmp_path):
    # As root, chmod 000 stops no read: the unreadable batch a user meets is a folder in its place.
    (tmp_path / BATCH_DIR / "data_batch_1").mkdir(parents=True)
    (tmp_path / BATCH_DIR / "test_batch").write_bytes(b"x")
    with pytest.raises(DataError, match=r"it holds data_batch_1 \(a folder, not a file\), test_batch"):
        locate(tmp_path, url="http://127.0.0.1:9/never", progress=False)


@pytest.mark.parametrize("kind", ["not_tar", "not_cifar", "traversal"])
def test_bad_archives(tmp_path, kind):
    archive = tmp_path / "bad.tar.gz"
    if kind == "not_tar":
        archive.write_bytes(b"this is not a tar archive at all" * 10)
    elif kind == "not_cifar":
        make_archive(archive, members={"readme.txt": b"hello"})
    else:
        make_archive(archive, members={"../evil.txt": b"owned", f"{BATCH_DIR}/batches.meta": b"x"})
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="bad.tar.gz"):
        locate(archive, cache_dir=cache, progress=False)
    assert not (tmp_path / "evil.txt").exists() and not list(cache.rglob("evil.txt"))
    assert_no_leftovers(cache)


# --- load_batches ---------------------------------------------------------------------------------

def write_pickle(path: Path, obj, protocol=None) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_orientation_rgb_row_col(tmp_path, protocol):
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    red, green, blue = cols * 8, rows * 8, torch.full((32, 32), 7)  # red grows along x, green along y
    flat = torch.cat([red.flatten(), green.flatten(), blue.flatten()]).to(torch.uint8)
    batch = {b"data": torch.stack([flat, 255 - flat]).numpy(), b"labels": [3, 9]}
    write_pickle(tmp_path / "b", batch, protocol)
    x, y = load_batches(tmp_path, ["b"])
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
    assert torch.equal(x[0, 0], red.to(torch.uint8)) and torch.equal(x[0, 1], green.to(torch.uint8))
    assert torch.equal(x[0, 2], blue.to(torch.uint8)) and torch.equal(x[1], 255 - x[0])
    assert x[0, 0, 5, 31] == 248 and x[0, 1, 31, 5] == 248  # [c, row, col]
    assert y.tolist() == [3, 9] and y.dtype == torch.int64


def test_batches_concatenate_in_order(tmp_path):
    a, b = make_batch(3, 1), make_batch(4, 2)
    write_pickle(tmp_path / "a", a)
    write_pickle(tmp_path / "b", b)
    x, y = load_batches(tmp_path, ["b", "a"])
    assert torch.equal(x, torch.cat([expected(b)[0], expected(a)[0]]))
    assert torch.equal(y, torch.cat([expected(b)[1], expected(a)[1]]))


@pytest.mark.parametrize("case,match", [
    ("truncated", "not a CIFAR-10 batch"),
    ("not_pickle", "not a CIFAR-10 batch"),
    ("no_data", "b'data'"),
    ("not_dict", "expected a dict"),
    ("labels_range", "0..9"),
    ("labels_negative", "0..9"),
    ("labels_count", "one per image"),
    ("labels_float", "integers"),
    ("data_float", "uint8"),
    ("data_shape", r"\(n, 3072\)"),
    ("code", "refusing"),
])
def test_bad_batches(tmp_path, case, match):
    good = make_batch(4, 0)
    path = tmp_path / "batch"
    if case == "truncated":
        path.write_bytes(pickle.dumps(good, protocol=2)[:5000])
    elif case == "not_pickle":
        path.write_text("hello, world\n")
    elif case == "code":  # a pickle that would run code if loaded naively
        class Evil:
            def __reduce__(self):
                return (os.system, ("touch " + str(tmp_path / "pwned"),))
        write_pickle(path, {b"data": Evil(), b"labels": []})
    else:
        bad = dict(good)
        if case == "no_data":
            del bad[b"data"]
        elif case == "not_dict":
            bad = [good]
        elif case == "labels_range":
            bad[b"labels"] = [0, 1, 10, 2]
        elif case == "labels_negative":
            bad[b"labels"] = [0, -1, 2, 2]
        elif case == "labels_count":
            bad[b"labels"] = [0, 1, 2]
        elif case == "labels_float":
            bad[b"labels"] = [0.5, 1.0, 2.0, 3.0]
        elif case == "data_float":
            bad[b"data"] = good[b"data"].astype("float32")
        elif case == "data_shape":
            bad[b"data"] = good[b"data"].reshape(4, 3, 32, 32)
        write_pickle(path, bad)
    with pytest.raises(DataError, match=match) as err:
        load_batches(tmp_path, ["batch"])
    assert str(path) in str(err.value)
    assert not (tmp_path / "pwned").exists()


def test_missing_batch_lists_present_files(tmp_path):
    write_pickle(tmp_path / "data_batch_1", make_batch(2, 0))
    with pytest.raises(DataError, match="test_batch is missing") as err:
        load_batches(tmp_path, ["data_batch_1", "test_batch"])
    assert "data_batch_1" in str(err.value).split("holds")[1]


def test_class_names_from_meta_with_fallback(tmp_path):
    assert class_names(tmp_path) == OFFICIAL  # no batches.meta
    write_pickle(tmp_path / "batches.meta", {b"label_names": [b"a", b"b"]})
    assert class_names(tmp_path) == ["a", "b"]
    write_pickle(tmp_path / "batches.meta", {b"num_vis": 3072})
    assert class_names(tmp_path) == OFFICIAL


# --- source resolution ----------------------------------------------------------------------------

def test_the_data_source_is_resolved_once_with_what_chose_it(monkeypatch, tmp_path, synthetic):
    folders = {}
    for name in ("cli", "env", "spec"):
        with tarfile.open(synthetic["path"]) as tar:
            tar.extractall(tmp_path / name, filter="data")
        folders[name] = tmp_path / name / BATCH_DIR
    spec = types.SimpleNamespace(path=Path("specs/x.toml"), data=types.SimpleNamespace(root=str(tmp_path / "spec")))
    monkeypatch.delenv("RUNNER_DATA", raising=False)
    assert data.resolve(None, spec) == data.DataSource(folders["spec"], "data.root of specs/x.toml")
    monkeypatch.setenv("RUNNER_DATA", str(tmp_path / "env"))
    assert data.resolve(None, spec) == data.DataSource(folders["env"], "RUNNER_DATA")
    source = data.resolve(str(tmp_path / "cli"), spec)
    assert source == data.DataSource(folders["cli"], "--data") and str(source) == str(folders["cli"])
    assert data.resolve(source, spec) is source  # a run given a source keeps it
    assert data.resolve(str(source), spec).folder == source.folder  # a job's text resolves to itself
    monkeypatch.setenv("RUNNER_DATA", "")  # set but empty counts as unset
    assert data.resolve(None, spec).chosen_by == "data.root of specs/x.toml"
    spec.data.root = str(tmp_path / "missing")
    with pytest.raises(DataError, match=r"does not exist.*\(data.root of specs/x.toml\)"):
        data.resolve(None, spec)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "xdg" / "runner" / "cifar10"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir() == tmp_path / "home" / ".cache" / "runner" / "cifar10"


# --- the real offline copy ------------------------------------------------------------------------

def test_real_copy_shapes_counts_and_names(cifar_dir):
    x, y = load_batches(cifar_dir, ["data_batch_1"])
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.bincount(y, minlength=10).tolist() == [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]
    tx, ty = load_batches(cifar_dir, ["test_batch"])
    assert tx.shape == (10000, 3, 32, 32) and ty.dtype == torch.int64
    assert torch.bincount(ty, minlength=10).tolist() == [1000] * 10
    assert class_names(cifar_dir) == OFFICIAL
    mean = x.double().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor([0.4933, 0.4833, 0.4472], dtype=torch.float64), atol=1e-3), mean


@pytest.mark.parametrize("name,first_label", [("data_batch_1", 6), ("test_batch", 3)])  # frog, cat
def test_real_copy_matches_raw_pickle(cifar_dir, name, first_label):
    with open(cifar_dir / name, "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    row = raw[b"data"][0]
    x, y = load_batches(cifar_dir, [name])
    assert raw[b"labels"][0] == first_label and y[0] == first_label
    assert OFFICIAL[first_label] == class_names(cifar_dir)[y[0]]
    assert x[0, 0, 0, 0] == row[0] and x[0, 1, 0, 0] == row[1024] and x[0, 0, 0, 1] == row[1]
    assert x[0, 0, 1, 0] == row[32] and x[0, 2, 31, 31] == row[3071]
    assert torch.equal(x[0].flatten(), torch.from_numpy(row))
    assert y.tolist() == list(raw[b"labels"])

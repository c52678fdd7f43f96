"""storage.root.read_uris: a shard's inputs in one call, remote ones fetched concurrently."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from storage.root import read_uri, read_uris


class _SlowFiles(BaseHTTPRequestHandler):
    """GET of /<name> answered after a delay, like an object store's first byte; records how many requests
    were in flight at once."""

    files: dict[str, bytes] = {}
    delay_s = 0.02
    lock = threading.Lock()
    in_flight = 0
    peak = 0
    requests = 0

    def do_GET(self):  # noqa: N802 (http.server's name)
        cls = type(self)
        with cls.lock:
            cls.in_flight += 1
            cls.requests += 1
            cls.peak = max(cls.peak, cls.in_flight)
        try:
            time.sleep(cls.delay_s)
            body = cls.files.get(self.path.lstrip("/"))
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def slow_server():
    _SlowFiles.files = {f"p{i}.jpg": bytes([i]) * (1000 + i) for i in range(12)}
    _SlowFiles.in_flight = _SlowFiles.peak = _SlowFiles.requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowFiles, bind_and_activate=False)
    server.request_queue_size = 64  # socketserver's backlog of 5 would refuse concurrent connects
    server.server_bind()
    server.server_activate()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_local_inputs_in_order_with_missing_ones_reported(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"aaa")
    (tmp_path / "b[1].jpg").write_bytes(b"bbb")  # glob characters in a name: read as a name
    (tmp_path / "dir.jpg").mkdir()
    uris = [str(tmp_path / "b[1].jpg"), f"file://{tmp_path / 'a.jpg'}", str(tmp_path / "gone.jpg"),
            str(tmp_path / "dir.jpg"), str(tmp_path / "b[1].jpg")]
    got = read_uris(iter(uris))  # any iterable, read once
    assert list(got) == uris[:4]  # order kept, duplicates once
    assert got[uris[0]] == b"bbb" and got[uris[1]] == b"aaa"
    assert isinstance(got[uris[2]], FileNotFoundError)
    assert isinstance(got[uris[3]], IsADirectoryError)


def test_remote_inputs_are_fetched_concurrently_and_match_single_reads(slow_server):
    names = sorted(_SlowFiles.files)
    uris = [f"{slow_server}/{n}" for n in names] + [f"{slow_server}/missing.jpg"]
    got = read_uris(uris)
    assert _SlowFiles.peak > 1, "remote inputs were read one at a time"
    assert _SlowFiles.requests == len(uris)  # one GET per object, no metadata round trip first
    for n, u in zip(names, uris):
        assert got[u] == _SlowFiles.files[n] == read_uri(u)
    assert isinstance(got[uris[-1]], FileNotFoundError)


def test_a_remote_error_other_than_missing_raises(slow_server, monkeypatch):
    """Anything but "not found" propagates, so the calling task's retries apply."""
    def refuse(self):
        self.send_error(503)

    monkeypatch.setattr(_SlowFiles, "do_GET", refuse)
    with pytest.raises(Exception) as info:
        read_uris([f"{slow_server}/p0.jpg"])
    assert not isinstance(info.value, FileNotFoundError)


def test_any_fsspec_filesystem_and_answers_keyed_another_way(monkeypatch):
    """A synchronous filesystem (memory://) works the same; if a filesystem's batched answer lacks a path (keyed
    another way), that input is read alone instead of being taken for missing."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe({"/ml-test/a.jpg": b"A", "/ml-test/b.jpg": b"BB"})
    uris = ["memory://ml-test/a.jpg", "memory://ml-test/b.jpg", "memory://ml-test/none.jpg"]
    try:
        for answer in ("batched", "keyed another way"):
            if answer != "batched":
                monkeypatch.setattr(type(fs), "cat", lambda self, paths, on_error="raise": {})
            got = read_uris(uris)
            assert (got[uris[0]], got[uris[1]]) == (b"A", b"BB"), answer
            assert isinstance(got[uris[2]], FileNotFoundError), answer
    finally:
        fs.rm("/ml-test", recursive=True)

"""Model catalogue: schema, downloads from a local HTTP server (progress, Range resume, checksum),
safe archive extraction, local import."""

import hashlib
import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from MedAISegLib.inference import model_catalog
from MedAISegLib.inference.model_catalog import (
    ChecksumError,
    download,
    download_model,
    load_catalog,
    safe_extract,
    validate,
)

PAYLOAD = bytes(range(256)) * 4000  # 1 MB


class RangeHandler(BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path, honouring 'Range: bytes=N-' unless the server says otherwise."""

    def do_GET(self):  # noqa: N802 - http.server API
        data = self.server.payload
        start = 0
        header = self.headers.get("Range")
        self.server.ranges.append(header)
        if header and self.server.honour_range:
            start = int(header.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.payload, httpd.ranges, httpd.honour_range = PAYLOAD, [], True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(server, name="model.bin"):
    return f"http://127.0.0.1:{server.server_address[1]}/{name}"


def test_shipped_catalogue_is_valid_and_lists_checksums():
    models = load_catalog()
    assert len(models) >= 3
    for entry in models:
        assert entry.get("sha256") or entry.get("sha1")
        assert entry["labels"]
    schema = json.loads(model_catalog.SCHEMA_PATH.read_text())
    broken = {"version": 1, "models": [dict(models[0], sha1="xyz", url="ftp://x")]}
    errors = validate(broken, schema)
    assert any("sha1" in e for e in errors)
    assert any("url" in e for e in errors)


def test_download_with_progress_and_checksum(server, tmp_path):
    seen = []
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    path = download(
        url(server),
        tmp_path / "m.bin",
        sha256=sha,
        size_bytes=len(PAYLOAD),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert path.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert not (tmp_path / "m.bin.part").exists()


def test_download_resumes_a_partial_file_with_range(server, tmp_path):
    part = tmp_path / "m.bin.part"
    part.write_bytes(PAYLOAD[:300_000])
    path = download(url(server), tmp_path / "m.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert server.ranges[-1] == "bytes=300000-"
    assert path.read_bytes() == PAYLOAD
    # a server that ignores Range sends everything again: the file is rewritten, not appended to
    server.honour_range = False
    part.write_bytes(PAYLOAD[:1000])
    path = download(url(server), tmp_path / "n.bin", sha1=hashlib.sha1(PAYLOAD).hexdigest())
    assert path.read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_the_download(server, tmp_path):
    with pytest.raises(ChecksumError, match="sha256"):
        download(url(server), tmp_path / "m.bin", sha256="0" * 64)
    assert not (tmp_path / "m.bin").exists()
    assert not (tmp_path / "m.bin.part").exists()
    with pytest.raises(ChecksumError, match="size"):
        download(url(server), tmp_path / "m.bin", sha256=hashlib.sha256(PAYLOAD).hexdigest(), size_bytes=5)


def make_zip(entries):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_download_model_unpacks_a_bundle_into_the_cache(server, tmp_path):
    server.payload = make_zip({"tiny_bundle/configs/metadata.json": "{}", "tiny_bundle/configs/inference.json": "{}"})
    entry = {
        "id": "tiny",
        "name": "t",
        "url": url(server, "tiny.zip"),
        "sha256": hashlib.sha256(server.payload).hexdigest(),
        "size_bytes": len(server.payload),
        "license": "x",
        "modality": "CT",
        "format": "monai-bundle",
        "inputs": [{"name": "CT"}],
        "labels": [{"value": 1, "name": "a"}],
        "description": "d",
    }
    folder = download_model("tiny", catalog=[entry], cache=tmp_path)
    assert (folder / "configs" / "inference.json").exists()
    assert folder.name == "tiny_bundle"
    requests = len(server.ranges)
    assert download_model("tiny", catalog=[entry], cache=tmp_path) == folder  # cached: no new request
    assert len(server.ranges) == requests


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt"])
def test_safe_extract_refuses_paths_outside(tmp_path, name):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(make_zip({"ok.txt": "fine", name: "bad"}))
    with pytest.raises(ValueError, match="outside"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "ok.txt").exists()  # nothing written
    tar_path = tmp_path / "bad.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tf:
        info = tarfile.TarInfo(name)
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(ValueError, match="outside"):
        safe_extract(tar_path, tmp_path / "out2")


def test_import_local_model_file_with_card(tmp_path):
    model = tmp_path / "src" / "net.ts"
    model.parent.mkdir()
    model.write_bytes(b"x")
    (tmp_path / "src" / "net.ts.json").write_text("{}")
    imported = model_catalog.import_local_model(model, cache=tmp_path / "cache")
    assert imported.read_bytes() == b"x"
    assert (imported.parent / "net.ts.json").exists()


def test_schema_requires_a_checksum_and_both_given_digests_are_checked(server, tmp_path):
    schema = json.loads(model_catalog.SCHEMA_PATH.read_text())
    entry = {
        "id": "tiny",
        "name": "t",
        "url": url(server, "tiny.bin"),
        "license": "x",
        "modality": "CT",
        "format": "torchscript",
        "archive": "none",
        "inputs": [{"name": "CT"}],
        "labels": [{"value": 1, "name": "a"}],
        "description": "d",
    }
    errors = validate({"version": 1, "models": [entry]}, schema)
    assert any("none of the alternatives" in e for e in errors)  # neither sha256 nor sha1
    good = dict(entry, sha256=hashlib.sha256(PAYLOAD).hexdigest(), sha1=hashlib.sha1(PAYLOAD).hexdigest())
    assert validate({"version": 1, "models": [good]}, schema) == []
    wrong_sha1 = dict(good, sha1="0" * 40)
    with pytest.raises(ChecksumError, match="sha1"):
        download_model("tiny", catalog=[wrong_sha1], cache=tmp_path / "a")
    assert not (tmp_path / "a" / "tiny" / "model").exists()
    path = download_model("tiny", catalog=[good], cache=tmp_path / "b")
    assert path.read_bytes() == PAYLOAD

"""Photon base data on request: checksum-verified download into the user cache, found by the Logic."""

import functools
import http.server
import shutil
import threading

import pytest

from MedAICommonLib.cli.main import main
from MedAIPlanLib.dose.base_data import cached_machine_path
from MedAIPlanLib.logic import default_machine_path


@pytest.fixture
def served(tmp_path, shared_data):
    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(shared_data / "rt/matRad/photons_Generic.mat", root / "photons_Generic.mat")
    (root / "tampered.mat").write_bytes((root / "photons_Generic.mat").read_bytes()[:-1] + b"\0")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_base_data_checks_sha256_and_is_found(served, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDAI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDAI_PHOTON_MACHINE", raising=False)
    assert main(["download-base-data", "--url", f"{served}/tampered.mat"]) == 1
    assert "sha256" in capsys.readouterr().err.lower()
    assert not cached_machine_path().exists()
    assert main(["download-base-data", "--url", f"{served}/photons_Generic.mat"]) == 0
    assert cached_machine_path().exists()
    assert default_machine_path() == cached_machine_path()  # found before the shared-data fallback

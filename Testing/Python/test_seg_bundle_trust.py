"""MONAI bundle configs can run Python: a bundle runs only after it is trusted, never silently.

Trust is keyed by the bundle's resolved path and the sha256 of its configs (and Python files);
catalogue downloads with a verified checksum are trusted automatically; an edited config is
untrusted again. A refused run leaves the scene exactly as it was and runs no config code.
"""

import hashlib
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from test_seg_inference import THRESHOLD, threshold_net, write_bundle  # noqa: I001

from MedAICommonLib import bridge
from MedAICommonLib.cli.main import main
from MedAISegLib.inference import bundle_trust
from MedAISegLib.inference.model_catalog import download_model, import_local_model
from MedAISegLib.logic import MedAISegLogic


@pytest.fixture
def head_node(scene, shared_data):
    return bridge.load_volume(scene, shared_data / "registration/monai-testing-data/anatomical.nii")


def snapshot(scene):
    return sorted(
        (scene.GetNthNode(i).GetID(), scene.GetNthNode(i).GetMTime()) for i in range(scene.GetNumberOfNodes())
    )


def bright_voxels(node):
    return int((bridge.array_from_volume(node)[0] > THRESHOLD).sum())


def segmented_voxels(seg, name="bright tissue"):
    return int(bridge.segment_mask(seg, name)[0].sum())


def test_untrusted_bundle_is_refused_then_runs_once_trusted(scene, head_node, tmp_path):
    store = bundle_trust.trust_store_path()
    bundle = write_bundle(tmp_path / "bundle")
    logic = MedAISegLogic(scene)
    info = logic.bundle_trust_info(bundle)
    assert info["is_bundle"]
    assert info["needs_trust"]
    assert not info["trusted"]
    assert info["origin"] == "local"
    assert info["path"] == str(bundle.resolve())
    assert len(info["digest"]) == 64
    before = snapshot(scene)
    with pytest.raises(ValueError, match="not trusted") as error:
        logic.segment_with_model([head_node], bundle, device="cpu")
    assert str(bundle.resolve()) in str(error.value)
    assert "--trust-bundle" in str(error.value)
    assert snapshot(scene) == before
    assert not store.exists()  # refusing records nothing
    trusted = logic.trust_bundle(bundle)
    assert trusted["trusted"]
    assert not trusted["needs_trust"]
    assert json.loads(store.read_text())["bundles"][str(bundle.resolve())]["digest"] == info["digest"]
    seg = logic.segment_with_model([head_node], bundle, device="cpu")
    assert segmented_voxels(seg) == bright_voxels(head_node)
    assert logic.last_result.inference["trust"]["origin"] == "local"


def test_edited_config_or_moved_bundle_is_untrusted_again(scene, head_node, tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    logic = MedAISegLogic(scene)
    logic.trust_bundle(bundle)
    config = bundle / "configs" / "inference.json"
    data = json.loads(config.read_text())
    data["inferer"]["overlap"] = 0.5
    config.write_text(json.dumps(data))
    info = logic.bundle_trust_info(bundle)
    assert info["changed"]
    assert info["needs_trust"]
    before = snapshot(scene)
    with pytest.raises(ValueError, match="configs changed since it was trusted"):
        logic.segment_with_model([head_node], bundle, device="cpu")
    assert snapshot(scene) == before
    # a Python file added beside the configs also counts
    logic.trust_bundle(bundle)
    (bundle / "scripts").mkdir()
    (bundle / "scripts" / "hook.py").write_text("print('hello')\n")
    assert logic.bundle_trust_info(bundle)["needs_trust"]
    # the same content at another path is another bundle
    logic.trust_bundle(bundle)
    copy = import_local_model(bundle, "copied", cache=tmp_path / "cache")
    assert bundle_trust.code_digest(copy) == bundle_trust.code_digest(bundle)
    assert logic.bundle_trust_info(copy)["needs_trust"]


def test_refused_bundle_runs_none_of_its_config_code(scene, head_node, tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    marker = tmp_path / "config-code-ran"
    config = bundle / "configs" / "inference.json"
    data = json.loads(config.read_text())
    data["network_def"] = f"$open({str(marker)!r}, 'w').close() or torch.nn.Conv3d(1, 2, 1)"
    config.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not trusted"):
        MedAISegLogic(scene).segment_with_model([head_node], bundle, device="cpu")
    assert not marker.exists()
    # once the user trusts it, the expression is evaluated (that is what trusting means)
    MedAISegLogic(scene).segment_with_model([head_node], bundle, device="cpu", trust_bundle=True)
    assert marker.exists()


def test_torchscript_model_needs_no_trust(scene, tmp_path):
    model = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(threshold_net()), str(model))
    info = MedAISegLogic(scene).bundle_trust_info(model)
    assert not info["is_bundle"]
    assert not info["needs_trust"]
    with pytest.raises(ValueError, match="not a MONAI bundle"):
        MedAISegLogic(scene).trust_bundle(model)


def test_cli_trust_bundle_records_trust(shared_data, tmp_path):
    src = shared_data / "registration/monai-testing-data/anatomical.nii"
    bundle = write_bundle(tmp_path / "bundle")
    out = tmp_path / "head.seg.nrrd"
    assert main(["segment", str(src), str(out), "--model", str(bundle), "--device", "cpu"]) == 1
    assert main(["segment", str(src), str(out), "--model", str(bundle), "--device", "cpu", "--trust-bundle"]) == 0
    assert bundle_trust.is_trusted(bundle)
    out.unlink()
    assert main(["segment", str(src), str(out), "--model", str(bundle), "--device", "cpu"]) == 0  # remembered
    assert out.exists()


class _ZipHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server API
        body = self.server.payload
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def bundle_server(tmp_path):
    """A 127.0.0.1 HTTP server serving a zip of a runnable test bundle."""
    source = write_bundle(tmp_path / "zip_source" / "bright_bundle")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(source.parent).as_posix())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ZipHandler)
    httpd.payload = buffer.getvalue()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def catalogue_entry(server, **checksums):
    return {
        "id": "bright",
        "name": "bright",
        "url": f"http://127.0.0.1:{server.server_address[1]}/bright.zip",
        "license": "x",
        "modality": "MR",
        "format": "monai-bundle",
        "inputs": [{"name": "T1"}],
        "labels": [{"value": 1, "name": "bright tissue"}],
        "description": "test bundle",
        **checksums,
    }


@pytest.mark.parametrize("algorithm", ["sha256", "sha1"])
def test_catalogue_download_with_verified_checksum_is_trusted(scene, head_node, tmp_path, bundle_server, algorithm):
    digest = hashlib.new(algorithm, bundle_server.payload).hexdigest()
    entry = catalogue_entry(bundle_server, **{algorithm: digest})
    folder = download_model("bright", catalog=[entry], cache=tmp_path / "cache")
    logic = MedAISegLogic(scene)
    info = logic.bundle_trust_info(folder)
    assert info["trusted"]
    assert info["origin"] == "catalogue"
    assert "bright.zip" in info["source"]
    seg = logic.segment_with_model([head_node], folder, device="cpu")  # no prompt needed
    assert segmented_voxels(seg) == bright_voxels(head_node)
    # edited after the download: untrusted; asking the catalogue again restores the verified files
    config = folder / "configs" / "inference.json"
    config.write_text(config.read_text().replace('"overlap": 0.25', '"overlap": 0.5'))
    assert logic.bundle_trust_info(folder)["needs_trust"]
    again = download_model("bright", catalog=[entry], cache=tmp_path / "cache")
    assert again == folder
    assert logic.bundle_trust_info(folder)["trusted"]
    assert '"overlap": 0.25' in config.read_text()


def test_catalogue_entry_without_checksum_is_not_downloaded(tmp_path, bundle_server):
    with pytest.raises(ValueError, match="no sha256"):
        download_model("bright", catalog=[catalogue_entry(bundle_server)], cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / "bright").exists()


def test_wrong_checksum_leaves_nothing_trusted(tmp_path, bundle_server):
    store = bundle_trust.trust_store_path()
    assert store.parent.name == "trust"  # the per-test store
    from MedAISegLib.inference.model_catalog import ChecksumError

    entry = catalogue_entry(bundle_server, sha256="0" * 64)
    with pytest.raises(ChecksumError):
        download_model("bright", catalog=[entry], cache=tmp_path / "cache")
    assert not (tmp_path / "cache" / "bright" / "model").exists()
    assert not store.exists()

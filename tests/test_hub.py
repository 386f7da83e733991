"""push_to_hub, offline: huggingface_hub's client factory with a mock transport answers the Hub's API."""

from __future__ import annotations

import base64
import json
import os

import pytest
from conftest import TEXTS, build_tiny_model

from optimum_blockprune import BlockRemovalConfig, Pruner

httpx = pytest.importorskip("httpx2" if __import__("importlib").util.find_spec("httpx2") else "httpx")


@pytest.fixture
def mock_hub(monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import _http

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    state = {"calls": [], "fail_commit": False}

    def handler(request):
        path = request.url.path
        state["calls"].append((request.method, path, request.content))
        if path == "/api/validate-yaml":
            return httpx.Response(200, json={"errors": [], "warnings": []})
        if path == "/api/repos/create":
            return httpx.Response(200, json={"url": "https://huggingface.co/me/tiny-pruned"})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            return httpx.Response(
                200,
                json={
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                    ]
                },
            )
        if "/commit/" in path:
            if state["fail_commit"]:
                return httpx.Response(403, json={"error": "You do not have write access to me/tiny-pruned"})
            return httpx.Response(
                200,
                json={
                    "success": True,
                    "commitOid": "b" * 40,
                    "commitUrl": "https://huggingface.co/me/x/commit/" + "b" * 40,
                },
            )
        return httpx.Response(404, json={"error": "not mocked"})

    huggingface_hub.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(handler)))
    _http.close_session()
    yield state
    huggingface_hub.set_client_factory(lambda: httpx.Client())
    _http.close_session()


def _committed_files(state):
    body = next(content for method, path, content in state["calls"] if "/commit/" in path)
    files = {}
    for line in body.decode().splitlines():
        entry = json.loads(line)
        if entry.get("key") == "file":
            files[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
    return files


def _pruned(llama, tokenizer):
    pruner = Pruner(llama, tokenizer, model_id="tiny/llama")
    pruner.prune(
        BlockRemovalConfig(
            num_blocks_to_remove=2, num_calibration_samples=6, max_length=16, show_progress=False
        ),
        TEXTS,
    )
    return pruner


def test_push_uploads_checkpoint_card_and_provenance(llama, tokenizer, mock_hub):
    info = _pruned(llama, tokenizer).push_to_hub("me/tiny-pruned", token="hf_fake")
    assert info.oid == "b" * 40
    files = _committed_files(mock_hub)
    assert {
        "config.json",
        "model.safetensors",
        "blockprune_config.json",
        "README.md",
        "tokenizer.json",
    } <= set(files)
    card = files["README.md"].decode()
    assert 'from_pretrained("me/tiny-pruned")' in card and "Guided:0" in card  # the default method's ranking
    assert json.loads(files["blockprune_config.json"])["result"]["removed_blocks"]
    assert any(path == "/api/repos/create" for _, path, _ in mock_hub["calls"])


def test_failed_upload_leaves_local_files_intact(llama, tokenizer, mock_hub, tmp_path):
    pruner = _pruned(llama, tokenizer)
    out = tmp_path / "local"
    pruner.save_pretrained(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    mock_hub["fail_commit"] = True
    with pytest.raises(Exception, match="403|write access"):
        pruner.push_to_hub("me/tiny-pruned", token="hf_fake")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_the_card_shows_quality_pictures_metadata_and_says_it_was_not_retrained(tokenizer, tmp_path):
    import yaml

    base = tmp_path / "base"
    build_tiny_model("llama").save_pretrained(base)
    tokenizer.save_pretrained(base)
    (base / "README.md").write_text("---\nlicense: mit\ndatasets:\n- me/corpus\nlanguage: en\n---\n# tiny\n")
    pruner = Pruner.from_pretrained(base)
    held_out = TEXTS[8:]
    before = pruner.evaluate(held_out, max_length=24, dataset_name="held-out proverbs")
    config = BlockRemovalConfig(num_blocks_to_remove=2, num_calibration_samples=8, max_length=16)
    pruner.prune(config, TEXTS[:8])
    after = pruner.evaluate(held_out, max_length=24, dataset_name="held-out proverbs")
    out = pruner.save_pretrained(tmp_path / "pruned")
    card = (tmp_path / "pruned" / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["license"] == "mit" and metadata["datasets"] == [
        "me/corpus"
    ]  # carried from the base card
    result = metadata["model-index"][0]["results"][0]
    assert result["metrics"][0]["type"] == "perplexity" and result["metrics"][0]["value"] == round(after, 4)
    assert "**Not retrained.**" in card and f"{before:.1f} → {after:.1f}" in card
    assert "| perplexity on `held-out proverbs` (" in card and f"| {before:.2f} | {after:.2f} | – |" in card
    assert "Weights are saved in float32" in card and "from a list of 8 texts" in card
    for picture in ("blockprune_energy_spectrum.png", "blockprune_removal_map.png"):
        assert f"](./{picture})" in card and (tmp_path / "pruned" / picture).read_bytes()[:4] == b"\x89PNG"
    provenance = json.loads((tmp_path / "pruned" / "blockprune_config.json").read_text())
    assert [e["stage"] for e in provenance["evaluations"]] == ["unpruned", "pruned"]
    assert os.path.isdir(out)


def test_the_committed_sample_cards_are_what_the_template_renders():
    """model_cards/<name>/README.md is rendered from the provenance its run saved: it cannot go stale."""
    import runpy
    from pathlib import Path

    render = runpy.run_path(str(Path(__file__).resolve().parents[1] / "model_cards" / "render.py"))
    assert render["samples"](), "no sample card"
    assert render["main"](["--check"]) == 0, "run `python model_cards/render.py` and commit the cards"

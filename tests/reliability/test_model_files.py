"""Model files and devices: nothing is unpickled, broken files are named, bad devices and cameras are one-line errors."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from trellis_mv import ParameterError, proxy
from trellis_mv.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_every_torch_load_refuses_pickled_code():
    """``torch.load`` without ``weights_only=True`` runs whatever a checkpoint holds."""
    unsafe = []
    for folder in ("src", "plugins", "benchmarks", "support"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load" and not any(
                        k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                        for k in node.keywords):
                    unsafe.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


def test_a_training_checkpoint_with_code_in_it_is_refused(tmp_path):
    from trellis_mv.proxy import train

    ckpt = tmp_path / "ckpt.pt"
    torch.save({"config": {}, "payload": Path("anything")}, ckpt)  # a pickled object, not a tensor or a plain value
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        train.train(steps=1, shapes=2, batch=2, ckpt=str(ckpt), device="cpu", legacy=True)


@pytest.mark.parametrize("config", ['{"width": -1}', "[160, 5]", '{"colour": 3}'])
def test_forged_proxy_weights_are_a_named_error(tmp_path, config):
    from safetensors.torch import save_file

    path = tmp_path / "forged.safetensors"
    save_file({"x": torch.zeros(1)}, str(path), metadata={"format": "trellis-mv-proxy-1", "config": config})
    with pytest.raises(ValueError, match=f"weights='{path}' has a broken proxy config"):
        proxy.ProxyPipeline(weights=path)


def test_a_pipeline_json_that_is_a_list(tmp_path):
    from trellis_mv.integrations._base import pipeline_name

    (tmp_path / "pipeline.json").write_text("[1, 2]")
    with pytest.raises(ParameterError, match="holds a list, not a pipeline config"):
        pipeline_name(str(tmp_path))


def test_a_broken_trellis2_weights_file_is_named_not_reported_as_hub_offline(tmp_path, monkeypatch):
    from trellis_mv.integrations.trellis2 import Trellis2Adapter

    (tmp_path / "pipeline.json").write_text(json.dumps(
        {"name": "Trellis2ImageTo3DPipeline", "args": {"models": {"sparse_structure_decoder": "ckpts/ss_dec"}}}))
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / "ss_dec.json").write_text('{"name": "SparseStructureDecoder", "args": {}}')
    (tmp_path / "ckpts" / "ss_dec.safetensors").write_bytes(b"\x00" * 64)  # truncated download

    class Pipeline:  # as TRELLIS.2 does: a local file that fails to load is retried as a hub id
        @classmethod
        def from_pretrained(cls, path):
            raise OSError("We couldn't connect to 'https://huggingface.co' to load ckpts/ss_dec")

    monkeypatch.setattr(Trellis2Adapter, "pipeline_class", classmethod(lambda cls: Pipeline))
    with pytest.raises(ParameterError, match="model 'sparse_structure_decoder' of .*ss_dec.safetensors cannot be read"):
        Trellis2Adapter.load(str(tmp_path), device="cpu")


@pytest.mark.parametrize("device, message", [
    ("garbage", "--device 'garbage' is not a torch device; use cpu, cuda or cuda:N"),
    pytest.param("cuda", "--device 'cuda', but CUDA is not available here; use --device cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is there")),
])
def test_bad_devices_are_one_line_errors(tmp_path, capsys, device, message):
    rc = main(["generate", "--images", str(proxy.example_images()[0]), "--out", str(tmp_path / "o"), "--quiet",
               "--device", device])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_bad_camera_after_at_is_not_reported_as_a_missing_file(tmp_path, capsys):
    image = str(proxy.example_images()[0])
    assert main(["generate", "--images", f"{image}@nan", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the image exists, but camera 'nan'" in err and "does not exist" not in err

"""ONNX export and the onnxruntime path: same numbers as PyTorch, any image size, clear errors."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import DATA, needs_data
from PIL import Image

from medsr import zoo
from medsr.errors import MedsrError
from medsr.inference.onnx import export_onnx
from medsr.inference.upscaler import OnnxUpscaler, Upscaler, load_upscaler
from medsr.models import create_generator

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# Measured on the development CPU: at most 6.1e-6 on the real crops below, 2.4e-5 on whole images
# (benchmarks/bench_onnx.py). Most of it is the bicubic skip: onnxruntime's Resize rounds differently
# from torch's upsample_bicubic2d. The bound leaves room for other CPUs' kernels.
MAX_ABS_DIFF = 1e-4  # in [0, 1] units


@pytest.fixture(scope="module")
def default_onnx(tmp_path_factory):
    return export_onnx("default", tmp_path_factory.mktemp("onnx") / "default.onnx")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random x2 EDSR small enough to export in a fraction of a second (receptive field < 16 px)."""
    torch.manual_seed(0)
    model = create_generator("edsr", scale=2, channels=8, num_blocks=1).eval()
    for param in model.parameters():
        param.data.normal_(0, 0.1)  # the tail starts at zero; random weights so the network does something
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    zoo.save_model(path, model.state_dict(), "edsr", model.config)
    return path


@pytest.fixture(scope="module")
def torch_default():
    return torch_upscaler("default")


def torch_upscaler(model, tile=0):
    generator, meta = zoo.load(model)
    return Upscaler(generator, int(meta["medsr_scale"]), torch.device("cpu"), "fp32", tile=tile)


def test_export_stores_metadata_and_dynamic_sizes(default_onnx):
    model = onnx.load(default_onnx)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["medsr_arch"] == "edsr" and props["medsr_scale"] == "3" and props["medsr_source_model"] == "default"
    assert '"channels": 48' in props["medsr_config"]
    (lr,) = model.graph.input
    assert lr.name == "lr"
    dims = [d.dim_param or d.dim_value for d in lr.type.tensor_type.shape.dim]
    assert dims[:2] == [1, 1] and all(isinstance(d, str) for d in dims[2:])  # H and W are symbolic


def test_default_agrees_with_pytorch_at_other_sizes(default_onnx, torch_default):
    onnx_up, meta = load_upscaler(default_onnx, runtime="onnx", tile=0)
    assert onnx_up.scale == 3 and meta["path"] == str(default_onnx)
    rng = np.random.default_rng(0)
    for h, w in [(37, 53), (64, 64)]:  # neither is the traced size (32x32)
        lr = rng.random((h, w), dtype=np.float32)
        sr = onnx_up.upscale(lr)
        assert sr.shape == (3 * h, 3 * w)
        assert np.abs(sr - torch_default.upscale(lr)).max() < MAX_ABS_DIFF


@needs_data
def test_onnx_matches_pytorch_on_real_images(default_onnx, torch_default):
    from medsr.io import read_image

    files = (sorted((DATA / "brain-mri" / "glioma").glob("*.jpg"))[:1] + sorted((DATA / "brain-mri" / "notumor").glob("*.jpg"))[:1]
             + sorted((DATA / "chest-xray" / "NORMAL").glob("*.jpeg"))[:2] + [DATA / "dicom" / "chest-cr-siim.dcm"])
    onnx_up = OnnxUpscaler(default_onnx, tile=0)
    worst = 0.0
    for path in files:
        pixels = read_image(path).pixels
        h, w = pixels.shape
        crop = pixels[h // 2 - 48: h // 2 + 48, w // 2 - 64: w // 2 + 64]  # the centre, to keep the test fast
        worst = max(worst, float(np.abs(onnx_up.upscale(crop) - torch_default.upscale(crop)).max()))
    assert 0 < worst < MAX_ABS_DIFF, worst  # 0 would mean the same runtime ran twice


def test_tiled_onnx_equals_untiled(tiny_model, tmp_path):
    lr = np.random.default_rng(1).random((70, 53), dtype=np.float32)
    whole, _ = load_upscaler(tiny_model, runtime="onnx", tile=0)  # exported in memory
    path = export_onnx(tiny_model, tmp_path / "tiny.onnx")
    tiled = OnnxUpscaler(path, tile=24, tile_overlap=16)
    seams = OnnxUpscaler(path, tile=16, tile_overlap=0)
    assert tiled.scale == 2
    reference = whole.upscale(lr)
    assert reference.shape == (140, 106)
    assert np.abs(tiled.upscale(lr) - reference).max() < 1e-5
    assert np.abs(seams.upscale(lr) - reference).max() > 1e-3  # so the check above can fail
    assert np.abs(reference - torch_upscaler(tiny_model).upscale(lr)).max() < MAX_ABS_DIFF
    stack = np.stack([lr, lr[::-1] * 0.5])
    assert tiled.upscale(stack).shape == (2, 140, 106)


def test_unexportable_architectures_say_why(tmp_path):
    for name, word in [("swinir", "window"), ("resshift", "noise")]:
        with pytest.raises(MedsrError, match=word) as err:
            export_onnx(name, tmp_path / f"{name}.onnx")
        assert "\n" not in str(err.value) and not (tmp_path / f"{name}.onnx").exists()


def test_option_errors(default_onnx, tiny_model):
    with pytest.raises(MedsrError, match="unknown runtime"):
        load_upscaler(tiny_model, runtime="tensorrt")
    with pytest.raises(MedsrError, match="fp32 only"):
        load_upscaler(tiny_model, runtime="onnx", precision="bf16")
    with pytest.raises(MedsrError, match="--runtime onnx"):
        load_upscaler(default_onnx)  # an .onnx file through the torch runtime
    with pytest.raises(MedsrError, match="x3, not x2"):
        load_upscaler(default_onnx, runtime="onnx", scale=2)


def test_unsupported_opset_is_one_line_error_without_the_exporter_graph(tmp_path, tiny_model, medsr_cli):
    with pytest.raises(MedsrError, match=r"^--opset 30: medsr exports ONNX opsets 11 to \d+; pick one of those"):
        export_onnx(tiny_model, tmp_path / "a.onnx", opset=30)
    result = run(medsr_cli + ["export", "--model", str(tiny_model), "-o", str(tmp_path / "b.onnx"), "--opset", "7"])
    assert result.returncode == 2 and result.stdout == "", result.stdout[-500:]  # was ~24 KB of Torch IR graph
    assert result.stderr.strip().count("\n") == 0 and "--opset 7: medsr exports ONNX opsets 11 to" in result.stderr, result.stderr
    assert not list(tmp_path.glob("*.onnx"))


def test_through_plane_model_is_refused_clearly_by_onnx_too(tmp_path):
    with pytest.raises(MedsrError, match="makes thick slices thin, it does not upscale images; name it with --through-plane --through-plane-model"):
        load_upscaler("through-plane", runtime="onnx")
    with pytest.raises(MedsrError, match="makes thick slices thin, it does not upscale images; name it with --through-plane --through-plane-model"):
        export_onnx("through-plane", tmp_path / "tp.onnx")
    assert not (tmp_path / "tp.onnx").exists()


def test_exported_default_gets_the_defaults_uncertainty_reference(default_onnx):
    from medsr.inference import hallucination

    assert hallucination.reference_model_name(default_onnx) == "default-gan"  # not itself, "default"


def test_missing_onnxruntime_names_the_extra(tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(MedsrError, match=r'pip install -e "\.\[onnx\]"'):
        load_upscaler(tiny_model, runtime="onnx")


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_cli_export_then_upscale_with_onnx(tmp_path, tiny_model, medsr_cli):
    model_path = tmp_path / "tiny.onnx"
    result = run(medsr_cli + ["export", "--model", str(tiny_model), "-o", str(model_path)])
    assert result.returncode == 0, result.stderr
    assert model_path.is_file() and not list(tmp_path.glob(".*.tmp"))
    lr = (np.random.default_rng(2).random((40, 30)) * 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(lr).save(tmp_path / "in" / "scan.png")
    result = run(medsr_cli + ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--runtime", "onnx", "--model", str(model_path)])
    assert result.returncode == 0, result.stderr
    sr = np.asarray(Image.open(tmp_path / "out" / "scan.png"), dtype=np.float32) / 255
    expected = torch_upscaler(tiny_model).upscale(lr.astype(np.float32) / 255)
    assert sr.shape == (80, 60)
    assert np.abs(sr - expected).max() <= 1 / 255 + 1e-6  # 8-bit rounding only


def test_cli_bad_onnx_file_is_one_line_error(tmp_path, default_onnx, medsr_cli):
    truncated = tmp_path / "broken.onnx"
    truncated.write_bytes(default_onnx.read_bytes()[:5000])
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    result = run(medsr_cli + ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--runtime", "onnx", "--model", str(truncated)])
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("medsr: error:") and "broken.onnx" in lines[0], result.stderr


def test_a_missing_device_is_said_as_such_not_blamed_on_the_file(default_onnx):
    with pytest.raises(MedsrError) as err:
        load_upscaler(default_onnx, runtime="onnx", device="gpu")
    assert "unknown device 'gpu'" in str(err.value) and "not a readable ONNX model" not in str(err.value)


def test_the_graph_clips_its_output_and_carries_the_contract(default_onnx):
    """Outside medsr the graph's output is cast to integers: a raw 1.08 wrapped round to black."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(default_onnx), providers=["CPUExecutionProvider"])
    lr = np.full((1, 1, 24, 24), -1.0, np.float32)
    lr[..., 8:16, 8:16] = 1.0  # a hard bright square: the raw network overshoots at its edges
    out = session.run(["sr"], {"lr": lr})[0]
    assert out.min() >= -1.0 and out.max() <= 1.0
    doc = onnx.load(str(default_onnx)).doc_string
    assert "darkest" in doc and "brightest" in doc and "(sr + 1) / 2" in doc


@pytest.mark.parametrize("name", ["paper", "srgan"])
def test_the_shipped_models_with_batchnorm_export_and_agree(name, tmp_path):
    """paper and srgan hold BatchNorm: the size check must compare the graph with the model in eval mode."""
    path = export_onnx(name, tmp_path / f"{name}.onnx")
    lr = np.random.default_rng(0).random((27, 41)).astype(np.float32)
    ours = torch_upscaler(name).upscale(lr)
    theirs = load_upscaler(path, runtime="onnx")[0].upscale(lr)
    assert np.abs(ours - theirs).max() < 1e-3

import numpy as np
import pytest
import torch

from medsr.inference.upscaler import Upscaler
from medsr.models import create_generator


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_generator("paper", scale=3, channels=8, num_blocks=2).eval()


def test_tiled_equals_untiled(model):
    rng = np.random.default_rng(0)
    lr = rng.random((70, 53), dtype=np.float32)
    whole = Upscaler(model, 3, torch.device("cpu"), "fp32", tile=0).upscale(lr)
    # receptive field of this model: 4 + 2*2 + 1 + 1 + 2 LR pixels < 16
    tiled = Upscaler(model, 3, torch.device("cpu"), "fp32", tile=24, tile_overlap=16).upscale(lr)
    assert whole.shape == (210, 159)
    assert np.abs(whole - tiled).max() < 1e-5


def test_tiles_without_overlap_show_seams(model):
    lr = np.random.default_rng(1).random((48, 48), dtype=np.float32)
    whole = Upscaler(model, 3, torch.device("cpu"), "fp32", tile=0).upscale(lr)
    seams = Upscaler(model, 3, torch.device("cpu"), "fp32", tile=16, tile_overlap=0).upscale(lr)
    assert np.abs(whole - seams).max() > 1e-3  # so the test above can fail


def test_stack_and_range_preserved(model):
    lr = np.random.default_rng(2).random((2, 20, 30), dtype=np.float32) * 0.2 + 0.1
    up = Upscaler(model, 3, torch.device("cpu"), "fp32").upscale(lr)
    assert up.shape == (2, 60, 90)
    assert up.min() >= 0.1 - 1e-6 and up.max() <= 0.3 + 1e-6  # normalised to the image's own range and back


def test_bf16_close_to_fp32(model):
    lr = np.random.default_rng(3).random((32, 32), dtype=np.float32)
    a = Upscaler(model, 3, torch.device("cpu"), "fp32").upscale(lr)
    b = Upscaler(model, 3, torch.device("cpu"), "bf16").upscale(lr)
    assert np.abs(a - b).mean() < 0.02


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_model_and_input_share_one_memory_format(precision):
    """A contiguous model fed a channels_last input converts layouts at every layer (1.3-1.5x slower
    fp32, benchmarks/bench_infer.py): the upscaler keeps both channels_last, and the output is the
    plain model's."""
    torch.manual_seed(0)
    model = create_generator("edsr", scale=3, channels=8, num_blocks=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    up = Upscaler(model, 3, torch.device("cpu"), precision, tile=0, normalize=False)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in up.model.parameters() if p.dim() == 4)
    lr = np.random.default_rng(4).random((40, 44), dtype=np.float32)
    with torch.no_grad():
        plain = ((model(torch.from_numpy(lr)[None, None] * 2 - 1) + 1) / 2).clamp(0, 1)[0, 0].numpy()
    assert np.abs(up.upscale(lr) - plain).max() < (1e-5 if precision == "fp32" else 0.03)


@pytest.mark.parametrize("name", ["default", "default-x2"])
def test_the_default_tile_overlap_covers_the_shipped_defaults_reach(name):
    """One changed LR pixel moves output pixels no farther than TILE_OVERLAP LR pixels away, so the
    default tiles (hardware.default_tile) give the untiled output up to float rounding."""
    from medsr import zoo
    from medsr.settings import TILE_OVERLAP
    model, meta = zoo.load(name)
    scale = int(meta["medsr_scale"])
    up = Upscaler(model, scale, torch.device("cpu"), "fp32", tile=0, normalize=False)
    lr = np.random.default_rng(4).uniform(0.2, 0.8, (64, 64)).astype(np.float32)
    nudged = lr.copy()
    nudged[32, 32] += 0.1
    rows, cols = np.nonzero(up.upscale(lr) != up.upscale(nudged))
    reach = max(32 * scale - rows.min(), rows.max() - (33 * scale - 1), 32 * scale - cols.min(), cols.max() - (33 * scale - 1))
    assert 0 < reach <= TILE_OVERLAP * scale


@pytest.mark.parametrize("flags, device, precision, tile", [
    ({"amx_bf16", "amx_int8"}, "cpu", "bf16", 256), ({"amx_bf16", "amx_int8"}, "cpu", "fp32", 512),
    ({"amx_bf16", "amx_int8"}, "cpu", "int8", 512), ({"avx512_bf16"}, "cpu", "bf16", 512), ({"amx_bf16"}, "cuda", "bf16", 512)])
def test_upscalers_tile_by_the_hardware_unless_told(model, monkeypatch, flags, device, precision, tile):
    from medsr import hardware
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: flags)
    assert hardware.default_tile(torch.device(device), precision) == tile
    if device == "cpu" and precision != "int8":  # this small model has no int8 calibration
        assert Upscaler(model, 3, torch.device("cpu"), precision).tile == tile
        assert Upscaler(model, 3, torch.device("cpu"), precision, tile=0).tile == 0

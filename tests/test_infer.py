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

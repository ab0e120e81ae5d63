"""--precision int8: the EDSR body in int8 with calibrated activations (medsr.models.int8)."""

import numpy as np
import pytest
import torch

from medsr import hardware, zoo
from medsr.errors import MedsrError
from medsr.inference.upscaler import Upscaler, load_upscaler
from medsr.models import create_generator, int8

CPU = torch.device("cpu")


def smooth(side: int, seed: int = 0) -> np.ndarray:
    coarse = torch.from_numpy(np.random.default_rng(seed).random((1, 1, side // 8, side // 8), dtype=np.float32))
    return torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic").clamp(0, 1)[0, 0].numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(-10 * np.log10(np.mean((a - b) ** 2)))


@pytest.fixture(scope="module")
def trained_like():
    """A small EDSR with non-trivial weights (a trained one's tail is not zero) and its calibration."""
    torch.manual_seed(0)
    model = create_generator("edsr", scale=3, channels=16, num_blocks=2).eval()
    with torch.no_grad():
        model.tail.weight.normal_(0, 0.05)
    calibration = [torch.from_numpy(smooth(48, seed)).mul(2).sub(1)[None, None] for seed in range(4)]
    return model, int8.calibrate(model, calibration)


def test_the_shipped_default_runs_in_int8_close_to_fp32():
    image = smooth(96)
    fp32, _ = load_upscaler("default", precision="fp32")
    quantized, _ = load_upscaler("default", precision="int8")
    assert any(isinstance(m, int8.Int8Body) for m in quantized.model.modules())  # the int8 path did run
    out, reference = quantized.upscale(image), fp32.upscale(image)
    assert out.shape == (288, 288)
    assert 45 < psnr(out, reference) < 200  # int8 rounding: close to fp32, not identical


def test_quantized_follows_the_float_model(trained_like):
    model, qparams = trained_like
    image = smooth(64, seed=9)
    fp32 = Upscaler(model, 3, CPU, "fp32").upscale(image)
    up = Upscaler(model, 3, CPU, "fp32")
    up.model = int8.quantized(up.model, qparams)
    assert psnr(up.upscale(image), fp32) > 40
    wrong = [[scale * 50, zero_point] for scale, zero_point in qparams]  # 50x too coarse: the test above can fail
    up.model = int8.quantized(Upscaler(model, 3, CPU, "fp32").model, wrong)
    assert psnr(up.upscale(image), fp32) < 40


def test_calibration_must_match_the_model(trained_like):
    model, qparams = trained_like
    with pytest.raises(ValueError, match="calibrate this model again"):
        int8.quantized(model, qparams[:-1])


def test_int8_needs_a_calibrated_model():
    model = create_generator("edsr", scale=3, channels=8, num_blocks=1).eval()
    with pytest.raises(MedsrError, match="int8 calibration"):
        Upscaler(model, 3, CPU, "int8")
    with pytest.raises(MedsrError, match="int8 calibration"):
        load_upscaler("paper", precision="int8")


def test_shipped_default_models_carry_calibration():
    for name in ("default", "default-x2", "default-x4", "default-gan", "large"):
        model, _ = zoo.load(name)
        assert isinstance(int8.quantized(model, model.int8_qparams).body, int8.Int8Body), name  # one pair per tensor, or it raises


def test_int8_is_only_for_upscaling():
    with pytest.raises(MedsrError, match="int8 is for upscaling"):
        hardware.resolve_precision("int8", CPU)

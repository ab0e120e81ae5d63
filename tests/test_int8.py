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
    # each block's second conv and its residual addition are one int8 op (the onednn backend)
    assert sum(type(m).__name__ == "ConvAdd2d" for m in quantized.model.modules()) == 8
    torch.backends.quantized.engine = "x86"  # whatever else set torch's process-wide engine, the body picks its own
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
    wrong = dict(qparams, activations=[[scale * 50, zero_point] for scale, zero_point in qparams["activations"]])
    up.model = int8.quantized(Upscaler(model, 3, CPU, "fp32").model, wrong)  # 50x too coarse: the test above can fail
    assert psnr(up.upscale(image), fp32) < 40


@pytest.mark.parametrize("backend", int8.BACKENDS)
def test_the_hand_built_body_is_torchs_fx_conversion(trained_like, backend):
    """Int8Body builds by hand what torch's FX graph mode quantization builds from the same
    calibration (whose tensor order it follows), and adds its input (EDSR's skip over the body); the
    outputs are the same numbers."""
    from torch.ao.quantization.observer import FixedQParamsObserver
    from torch.ao.quantization.quantize_fx import convert_fx
    model, _ = trained_like
    calibration = int8.calibrate(model, [torch.from_numpy(smooth(48, seed)).mul(2).sub(1)[None, None] for seed in range(4)],
                                 backend=backend)
    equalized = int8._equalize(model, calibration["equalization"])
    observer = FixedQParamsObserver.with_args(scale=1.0, zero_point=0, dtype=torch.quint8, quant_min=0, quant_max=255)
    prepared = int8._prepare(equalized.body, observer, backend)
    for (name, _), (scale, zero_point) in zip(int8._observers(prepared), calibration["activations"], strict=True):
        setattr(prepared, name, FixedQParamsObserver(scale, zero_point, dtype=torch.quint8, quant_min=0, quant_max=255))
    torch.backends.quantized.engine = backend
    reference = convert_fx(prepared, backend_config=int8._backend_config(backend))
    features = model.head(torch.from_numpy(smooth(40, seed=7)).mul(2).sub(1)[None, None])
    with torch.no_grad():
        ours = int8.quantized(model, calibration).body(features)
        assert torch.equal(ours, features + reference(features))
        assert not torch.equal(ours, features + model.body(features))  # it is int8, not the float body


def test_equalization_keeps_the_float_function_and_evens_the_channels(trained_like):
    model, calibration = trained_like
    factors = calibration["equalization"]
    assert len(factors) == 2 and all(len(f) == 16 for f in factors)
    assert max(max(f) for f in factors) > 1.2 and min(min(f) for f in factors) == 1.0  # the widest channel stays, others grow
    x = torch.from_numpy(smooth(32, seed=5)).mul(2).sub(1)[None, None]
    equalized = int8._equalize(model, factors)
    torch.testing.assert_close(equalized(x), model(x), atol=1e-5, rtol=1e-5)
    block = equalized.body[0].body
    peaks = block[1](block[0](equalized.head(x))).amax(dim=(0, 2, 3))
    original = model.body[0].body
    before = original[1](original[0](model.head(x))).amax(dim=(0, 2, 3))
    assert peaks.min() / peaks.max() > before.min() / before.max()


def test_equalization_brings_int8_closer_to_float():
    model, _ = zoo.load("default")
    calibration = [torch.from_numpy(smooth(64, seed)).mul(2).sub(1)[None, None] for seed in range(3)]
    image = smooth(96, seed=11)
    reference = Upscaler(model, 3, CPU, "fp32").upscale(image)
    scores = {}
    for equalize in (True, False):
        up = Upscaler(model, 3, CPU, "fp32")
        up.model = int8.quantized(up.model, int8.calibrate(model, calibration, equalize))
        scores[equalize] = psnr(up.upscale(image), reference)
    assert scores[True] > scores[False]


@pytest.mark.parametrize("flags, change, runs", [
    ({"avx2", "avx512_vnni", "avx512_bf16"}, -0.04, "int8"),
    ({"avx2", "avx512_vnni", "avx512_bf16"}, -0.06, "bf16"),
    ({"avx2", "amx_bf16", "amx_int8"}, -0.04, "int8"),
    ({"avx2"}, -0.04, "int8"),  # no int8 units, but the float path would be fp32: int8 is 2x faster
    ({"avx2"}, -0.06, "fp32"),
    (set(), -0.04, "fp32"),
])
def test_auto_runs_int8_within_budget_where_it_beats_the_float_path(trained_like, monkeypatch, flags, change, runs):
    model, calibration = trained_like
    model.int8_calibration = dict(calibration, validation_db={"paper": -0.01, "native": change})
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: flags)
    up = Upscaler(model, 3, CPU, "auto")
    assert up.precision == runs
    assert any(isinstance(m, int8.Int8Body) for m in up.model.modules()) == (runs == "int8")
    assert Upscaler(model, 3, CPU, "bf16").precision == "bf16"  # only auto picks int8
    del model.int8_calibration


def test_within_budget():
    assert int8.within_budget({"validation_db": {"paper": -0.02, "native": -0.05}})
    assert not int8.within_budget({"validation_db": {"paper": -0.02, "native": -0.051}})
    assert not int8.within_budget({"backend": "onednn"})  # never validated
    assert not int8.within_budget(None)


def test_calibration_must_match_the_model(trained_like):
    model, qparams = trained_like
    with pytest.raises(ValueError, match="calibrate this model again"):
        int8.quantized(model, dict(qparams, activations=qparams["activations"][:-1]))
    with pytest.raises(ValueError, match="calibrate this model again"):
        int8.quantized(model, qparams["activations"])  # the format before equalization
    model.int8_calibration = qparams["activations"]
    try:
        with pytest.raises(MedsrError, match="--precision int8: .*calibrate this model again"):  # one line, no traceback
            Upscaler(model, 3, CPU, "int8")
        assert Upscaler(model, 3, CPU, "auto").precision != "int8"  # auto falls back to float with it
    finally:
        del model.int8_calibration


def test_int8_needs_a_calibrated_model():
    model = create_generator("edsr", scale=3, channels=8, num_blocks=1).eval()
    with pytest.raises(MedsrError, match="int8 calibration"):
        Upscaler(model, 3, CPU, "int8")
    with pytest.raises(MedsrError, match="int8 calibration"):
        load_upscaler("paper", precision="int8")


def test_shipped_default_models_carry_calibration():
    for name in ("default", "default-jpeg", "default-x2", "default-x4", "default-gan", "large"):
        model, _ = zoo.load(name)
        assert isinstance(int8.quantized(model, model.int8_calibration).body, int8.Int8Body), name  # one pair per tensor, or it raises
        assert set(model.int8_calibration["validation_db"]) == {"paper", "native"}, name
    model, _ = zoo.load("default")
    assert int8.within_budget(model.int8_calibration)  # so `auto` runs the default in int8 on CPUs with int8 units


def test_int8_is_only_for_upscaling():
    with pytest.raises(MedsrError, match="int8 is for upscaling"):
        hardware.resolve_precision("int8", CPU)

"""Augmentation (flips, quarter turns, CutBlur) and the new losses (RaGAN, VGG19 from a file, MS-SSIM + gradients)."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from medsr.data import augment
from medsr.errors import MedsrError
from medsr.models import create_generator
from medsr.training import losses

torch.set_num_threads(2)


def pair(n=6, side=8, scale=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(n, 1, side * scale, side * scale, generator=g)
    return F.avg_pool2d(hr, scale), hr


def test_geometric_moves_lr_and_hr_together_and_is_seeded():
    lr, hr = pair()
    aug = augment.Augment(hflip=0.5, vflip=0.5, rot90=0.5)
    a = augment.geometric(lr, hr, aug, torch.Generator().manual_seed(1))
    b = augment.geometric(lr, hr, aug, torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.allclose(F.avg_pool2d(a[1], 3), a[0], atol=1e-6)  # still a consistent pair
    assert not torch.equal(a[1], hr)  # something was transformed
    same = augment.geometric(lr, hr, augment.Augment(), torch.Generator().manual_seed(1))
    assert torch.equal(same[0], lr) and torch.equal(same[1], hr)


def test_cutblur_pastes_boxes_of_the_other_image():
    lr, hr = pair(n=32)
    up = augment.upsample_nearest(lr, 3)
    mixed = augment.cutblur(lr, hr, 3, prob=1.0, alpha=0.7, generator=torch.Generator().manual_seed(0))
    from_hr = (mixed == hr).flatten(1).float().mean(1)
    from_lr = (mixed == up).flatten(1).float().mean(1)
    assert torch.all((from_hr + from_lr) > 0.99)  # every pixel comes from one of the two
    assert torch.all((from_hr > 0) & (from_lr > 0))  # and both are present in every image
    assert (from_hr > 0.5).any() and (from_hr < 0.5).any()  # both directions happen
    untouched = augment.cutblur(lr, hr, 3, prob=0.0, alpha=0.7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(untouched, up)
    folded = augment.fold(untouched, 3)
    assert folded.shape == (32, 9, 8, 8) and torch.equal(folded[:, 4:5], lr)


def test_zero_background_cuts_hr_with_a_soft_ellipse_and_remakes_lr_from_it():
    from medsr.data import degrade

    g = torch.Generator().manual_seed(0)
    hr = torch.rand(16, 1, 60, 60, generator=g) * 1.6 - 0.6  # [-1, 1] images with no zero background
    lr = degrade.downscale(hr, 3)
    cut_lr, cut_hr = augment.zero_background(lr, hr, 3, prob=0.5, generator=torch.Generator().manual_seed(1))
    changed = [not torch.equal(cut_hr[i], hr[i]) for i in range(16)]
    assert 2 < sum(changed) < 14  # about half the images
    for i in range(16):
        if not changed[i]:
            assert torch.equal(cut_lr[i], lr[i])
            continue
        unit, source = (cut_hr[i] + 1) / 2, (hr[i] + 1) / 2
        kept = unit / source  # the mask itself
        assert (kept > -1e-5).all() and (kept < 1 + 1e-5).all()
        assert (kept < 1e-4).any() or (kept > 1 - 1e-4).all()  # zero background where the ellipse ends inside
        partial = ((kept > 0.01) & (kept < 0.99)).float()
        # the edge ramps over 0.5-3 pixels: its partial pixels are a thin band, not the whole image
        assert partial.mean() < 0.3
        assert torch.allclose(cut_lr[i], (degrade.downscale(unit[None], 3).clamp(0, 1) * 2 - 1)[0], atol=1e-6)
    same = augment.zero_background(lr, hr, 3, prob=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(same[0], lr) and torch.equal(same[1], hr)


def test_augment_options_are_checked():
    with pytest.raises(MedsrError, match="cutblurr"):
        augment.Augment.from_dict({"cutblurr": 0.5})
    with pytest.raises(MedsrError, match="probability"):
        augment.Augment.from_dict({"hflip": 2})


def test_edsr_hr_input_takes_folded_cutblur_input_and_plain_lr():
    torch.manual_seed(0)
    g = create_generator("edsr", scale=3, channels=8, num_blocks=1, hr_input=True)
    with torch.no_grad():
        for p in g.parameters():
            p.normal_(0, 0.1)
    lr, hr = pair(n=2)
    assert g.head.in_channels == 9
    plain = g(lr * 2 - 1)
    folded = g(augment.fold(augment.upsample_nearest(lr * 2 - 1, 3), 3))
    torch.testing.assert_close(plain, folded)  # a plain LR image is the fold of its nearest upsampling
    assert g(augment.fold(hr * 2 - 1, 3)).shape == hr.shape


def test_ragan_prefers_real_above_the_average_fake():
    real, fake = torch.full((4, 1), 3.0), torch.full((4, 1), -3.0)
    assert losses.discriminator_ragan(real, fake) < 0.01  # the discriminator is right
    assert losses.generator_ragan(real, fake) > 5  # so the generator pays
    assert losses.discriminator_ragan(real, fake) == pytest.approx(losses.generator_ragan(fake, real).item())


def test_vgg19_features_load_torchvision_layout_and_select_layers(tmp_path):
    reference = losses.VGG19Features(None, ["relu5_4"])
    state = {f"features.{k}": torch.randn_like(v) for k, v in reference.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # the full vgg19 state dict has a classifier too
    path = tmp_path / "vgg19.safetensors"
    save_file(state, str(path))
    pth = tmp_path / "vgg19.pth"
    torch.save(state, pth)
    for file in (path, pth):
        f = losses.VGG19Features(str(file), ["conv1_2", "conv5_4"])
        assert torch.equal(f.features[0].weight, state["features.0.weight"])
        assert torch.equal(f.features[34].weight, state["features.34.weight"])  # conv5_4 is features.34
        out = f(torch.rand(1, 1, 32, 32) * 2 - 1)
        assert [o.shape[1] for o in out] == [64, 512] and out[1].min() < 0  # conv5_4: before the ReLU
    loss = losses.perceptual_loss("vgg19", str(path), ["relu2_2"])
    x = (torch.rand(2, 1, 32, 32) * 2 - 1).requires_grad_()
    value = loss(x, torch.rand(2, 1, 32, 32) * 2 - 1)
    value.backward()
    assert value > 0 and x.grad.abs().sum() > 0 and loss(x, x) == 0


def test_vgg19_missing_or_wrong_files_are_one_line_errors(tmp_path):
    with pytest.raises(MedsrError, match="not found"):
        losses.perceptual_loss("vgg19", str(tmp_path / "nope.pth"))
    with pytest.raises(MedsrError, match="vgg_weights"):
        losses.perceptual_loss("vgg19", None)
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(MedsrError, match="vgg19 layout"):
        losses.perceptual_loss("vgg19", str(bad))
    with pytest.raises(MedsrError, match="layer"):
        losses.VGG19Features(None, ["conv9_9"])


def test_ssim_gradient_loss_is_zero_for_equal_images_and_punishes_blur():
    lr, hr = pair(n=2, side=60, scale=3)
    blurred = F.interpolate(lr, scale_factor=3, mode="bicubic", align_corners=False).clamp(0, 1)
    loss = losses.perceptual_loss("ssim-grad")
    signed = hr * 2 - 1
    assert loss(signed, signed).item() == pytest.approx(0, abs=1e-4)
    assert loss(blurred * 2 - 1, signed) > 0.1

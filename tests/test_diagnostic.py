"""Diagnostic fidelity (medsr.evaluation.diagnostic): the classifier learns easy synthetic classes, survives a
save/load round trip bit for bit, and evaluate_fidelity tells a faithful method from one that
destroys the image. Tiny synthetic data only (images of 48 px, classifier input 32 px)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medsr import zoo
from medsr.errors import MedsrError
from medsr.evaluation import diagnostic
from medsr.evaluation.quality import Method
from medsr.inference.upscaler import Upscaler

torch.set_num_threads(1)

CLASSES = ("bright", "dark", "stripes")
SIZE = 32  # classifier input side: small, so the tests stay fast


def synthetic(kind: str, rng: np.random.Generator, side: int = 48) -> np.ndarray:
    """Mid-gray noise with a bright blob, a dark blob, or stripes at a random angle."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    img = 0.5 + 0.05 * rng.standard_normal((side, side))
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        img += 0.3 * np.sin(2 * np.pi * 6 * (xx * np.cos(angle) + yy * np.sin(angle)))
    else:
        cy, cx, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.12, 0.25)
        img += (0.4 if kind == "bright" else -0.4) * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(0)
    for kind in CLASSES:
        (root / kind).mkdir()
        for i in range(70):  # 70 per class: each class has 3 to 8 test images
            Image.fromarray(synthetic(kind, rng)).save(root / kind / f"{kind}_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def trained(data):
    return diagnostic.train_classifier([str(data)], epochs=6, input_size=SIZE, seed=0, batch_size=16, precision="fp32")


@pytest.fixture(scope="module")
def shipped_default():
    model, _ = zoo.load("default")
    return Method("default", Upscaler(model, 3, torch.device("cpu"), "fp32", tile=0))


class Constant(Method):
    """A 'method' that throws the image away: every output is flat gray."""

    def run(self, lr01, scale):
        return np.full((lr01.shape[0] * scale, lr01.shape[1] * scale), 0.5, dtype=np.float32)


def test_classifier_size_and_shape():
    model = diagnostic.FidelityClassifier(["a", "b", "c", "d"])
    params = sum(p.numel() for p in model.parameters())
    assert 100_000 <= params <= 300_000
    assert model(torch.zeros(2, 1, 150, 150)).shape == (2, 4)
    assert model.prepare(torch.rand(3, 1, 148, 148)).shape == (3, 1, 150, 150)


def test_classifier_learns_easy_classes(trained):
    assert trained.classes == list(CLASSES)
    assert trained.record["val_accuracy"] >= 0.8  # chance is 1/3
    assert trained.record["class_counts"] and sum(trained.record["class_counts"]) == trained.record["train_images"]


def test_training_is_seeded(data, trained):
    again = diagnostic.train_classifier([str(data)], epochs=1, input_size=SIZE, seed=0, batch_size=16, precision="fp32", limit=20)
    twice = diagnostic.train_classifier([str(data)], epochs=1, input_size=SIZE, seed=0, batch_size=16, precision="fp32", limit=20)
    for a, b in zip(again.state_dict().values(), twice.state_dict().values()):
        assert torch.equal(a, b)


def test_save_load_round_trip_gives_identical_logits(trained, tmp_path):
    path = diagnostic.save_classifier(tmp_path / "c.safetensors", trained)
    loaded = diagnostic.load_classifier(path)
    assert loaded.classes == trained.classes and loaded.input_size == SIZE
    assert loaded.record["epochs"] == 6 and loaded.record["seed"] == 0
    x = torch.rand(4, 1, SIZE, SIZE) * 2 - 1
    with torch.no_grad():
        assert torch.equal(trained(x), loaded(x))


def test_bad_classifier_files_are_one_line_errors(tmp_path):
    with pytest.raises(MedsrError, match="missing.safetensors: classifier file not found"):
        diagnostic.load_classifier(tmp_path / "missing.safetensors")
    with pytest.raises(MedsrError, match="not a medsr fidelity classifier"):
        diagnostic.load_classifier(zoo.resolve("default"))  # an SR model, not a classifier
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(zoo.resolve("default").read_bytes()[:100])
    with pytest.raises(MedsrError, match="broken.safetensors: not a readable"):
        diagnostic.load_classifier(broken)


def test_class_weights_balance_the_classes():
    targets = torch.tensor([0] * 10 + [1] * 90)
    weights = diagnostic.class_weights(targets, 2)
    per_class = torch.bincount(targets) * weights
    assert torch.allclose(per_class, per_class[0].expand(2))


def test_macro_auc():
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    perfect = torch.nn.functional.one_hot(targets, 3).float()
    assert diagnostic.macro_auc(perfect, targets) == 1.0
    assert diagnostic.macro_auc(torch.full((6, 3), 1 / 3), targets) == 0.5
    two = torch.tensor([0, 1, 0, 1, 1])
    p1 = torch.tensor([0.2, 0.6, 0.7, 0.9, 0.4])
    # 2 classes: the one-vs-rest average is the plain AUC, here 4 of the 6 (positive, negative) pairs ranked right
    assert diagnostic.macro_auc(torch.stack([1 - p1, p1], 1), two) == pytest.approx(4 / 6)


def test_evaluate_fidelity_tells_faithful_from_destructive(data, trained, shipped_default):
    methods = [Method("bicubic"), shipped_default, Constant("constant")]
    rows, summary = diagnostic.evaluate_fidelity([str(data)], methods, 3, trained, split="test", precision="fp32")
    by_name = {s["method"]: s for s in summary}
    assert list(by_name) == ["HR", "bicubic", "default", "constant"]
    images = by_name["HR"]["images"]
    assert images >= 6 and len(rows) == 4 * images
    assert {r["label"] for r in rows} == set(CLASSES)  # every class is in the test split
    assert by_name["HR"]["changed_vs_hr"] == 0
    for name in ("HR", "bicubic", "default"):
        assert by_name[name]["accuracy"] >= 0.8 and 0.8 <= by_name[name]["auc"] <= 1.0
        assert by_name[name]["changed_vs_hr"] <= 0.2
    constant = by_name["constant"]
    assert constant["auc"] == 0.5  # one output for every image: no ranking at all
    assert constant["balanced_accuracy"] == pytest.approx(1 / 3)
    assert constant["accuracy"] <= 0.5 and constant["changed_vs_hr"] >= 0.5
    row = rows[0]
    assert sum(row[f"p_{c}"] for c in CLASSES) == pytest.approx(1, abs=1e-5)
    assert row["predicted"] in CLASSES and row["p_true"] == row[f"p_{row['label']}"]


def test_labels_the_classifier_does_not_know_are_an_error(trained, tmp_path):
    (tmp_path / "other").mkdir()
    Image.fromarray(synthetic("bright", np.random.default_rng(1))).save(tmp_path / "other" / "x.png")
    with pytest.raises(MedsrError, match=r"x\.png: class 'other' is not one"):
        diagnostic.evaluate_fidelity([str(tmp_path)], [Method("bicubic")], 3, trained, split="all")


def test_images_outside_class_folders_are_an_error(tmp_path):
    for i in range(3):
        Image.fromarray(synthetic("dark", np.random.default_rng(i))).save(tmp_path / f"loose_{i}.png")
    with pytest.raises(MedsrError, match="not in a class folder"):
        diagnostic.train_classifier([str(tmp_path)], epochs=1, input_size=SIZE)


def test_run_classify_trains_saves_and_reuses(data, tmp_path, capsys):
    out = tmp_path / "out"
    first = diagnostic.run_classify([str(data)], [Method("bicubic")], 3, out, classifier_epochs=1, input_size=SIZE,
                                  precision="fp32", train_limit=20)
    saved = out / "classifier.safetensors"
    assert first["classifier"] == saved and saved.is_file()
    assert [p.name for p in first["paths"]] == list(diagnostic.REPORT_FILES)
    report = json.loads((out / "fidelity.json").read_text())
    assert report["classifier"]["classes"] == list(CLASSES) and [s["method"] for s in report["summary"]] == ["HR", "bicubic"]
    printed = capsys.readouterr().out
    assert "| method | images | accuracy | balanced accuracy | AUC | changed vs HR |" in printed and "| bicubic |" in printed
    before = saved.read_bytes()
    second = diagnostic.run_classify([str(data)], [Method("bicubic")], 3, tmp_path / "again", classifier=saved, precision="fp32")
    assert second["summary"] == first["summary"]  # the same classifier, loaded instead of retrained
    assert saved.read_bytes() == before and not (tmp_path / "again" / "classifier.safetensors").exists()

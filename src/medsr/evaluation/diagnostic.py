"""Diagnostic fidelity: does super-resolution keep what a diagnosis needs?

PSNR and SSIM say how close an SR image is to the original, not whether it still shows the
same disease. This module trains a small CNN classifier on the original (HR) images of the
train split, class labels from the class folders (glioma / meningioma / notumor / pituitary,
NORMAL / PNEUMONIA), and then, on the test split, compares its predictions on the HR image
with its predictions on each method's SR image of the LR image (paper protocol). Reported per
method: accuracy, balanced accuracy, AUC, and the share of images whose predicted class differs
from the HR image's ("changed vs HR"). HR is a row too: the ceiling.

The classifier: four stages of two 3x3 convolutions (the first of each with stride 2), GroupNorm
and ReLU, global average pooling, one linear layer; about 210k parameters at the default
widths; input 150x150 (the paper protocol's HR size; other sizes are resized to it). GroupNorm
rather than BatchNorm: an image's logits do not depend on its batch or on running statistics,
so a short training run evaluates exactly as it trains. Training: Adam with a cosine schedule,
random horizontal flips, a fixed seed, bf16 autocast where `hardware.resolve_precision("auto")`
says the hardware has it. Class imbalance (chest: 102 NORMAL vs 885 PNEUMONIA) is handled with
class-weighted cross-entropy, weight_c = N / (K * N_c), so each class counts as much in the loss.
The classifier is saved as .safetensors with its class names, input size, epochs and seed in
the metadata, so it can be loaded instead of retrained.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional.classification import binary_auroc
from tqdm import tqdm

from medsr import hardware
from medsr.data import degrade, load_arrays, scan, select, spread
from medsr.errors import MedsrError
from medsr.evaluation import report
from medsr.evaluation.quality import Method, check_limit
from medsr.files import atomic_write
from medsr.io.types import as_unit
from medsr.models.value_range import to_signed

KIND = "medsr-fidelity-classifier"  # metadata marker: tells a classifier file from a generator file
HR = "HR"  # the method name of the original image's row
DEFAULT_EPOCHS = 15
DEFAULT_WIDTHS = (16, 32, 64, 96)
REPORT_FILES = ("fidelity_per_image.csv", "fidelity_summary.csv", "fidelity.json")


class FidelityClassifier(nn.Module):
    """A small CNN: (B, 1, S, S) images in [-1, 1] -> (B, K) logits."""

    def __init__(self, classes: list[str], input_size: int = degrade.PAPER_HR_SIZE, widths: tuple[int, ...] = DEFAULT_WIDTHS):
        super().__init__()
        self.classes, self.input_size, self.widths = list(classes), int(input_size), tuple(int(w) for w in widths)
        self.record: dict = {}  # how it was trained; written into the file's metadata
        layers, previous = [], 1
        for width in self.widths:
            for stride in (2, 1):
                layers += [nn.Conv2d(previous, width, 3, stride, 1, bias=False), nn.GroupNorm(min(8, width), width), nn.ReLU(inplace=True)]
                previous = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(previous, len(self.classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(-2, -1)))

    def prepare(self, images01: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) [0, 1] images -> the network's input: input_size square, [-1, 1]."""
        size = (self.input_size, self.input_size)
        return to_signed(degrade.resize(images01.float(), size).clamp(0, 1))


# ---- files --------------------------------------------------------------------------------------
def save_classifier(path: str | Path, model: FidelityClassifier) -> Path:
    """Write weights + class names, input size, widths and training record, atomically."""
    metadata = {"medsr_kind": KIND, "medsr_classes": json.dumps(model.classes), "medsr_input_size": str(model.input_size),
                "medsr_widths": json.dumps(list(model.widths))}
    metadata.update({f"medsr_{k}": v if isinstance(v, str) else json.dumps(v) for k, v in model.record.items()})
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> FidelityClassifier:
    """Rebuild a classifier written by save_classifier (eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise MedsrError(f"{path}: classifier file not found; pass a file written by 'medsr evaluate --task classify' "
                         "(<out>/classifier.safetensors) or omit --classifier to train one")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise MedsrError(f"{path}: not a readable .safetensors file ({err}); retrain the classifier (omit --classifier)") from None
    if meta.get("medsr_kind") != KIND:
        raise MedsrError(f"{path}: not a medsr fidelity classifier (an SR model?); pass the classifier.safetensors "
                         "that 'medsr evaluate --task classify' wrote, or omit --classifier to train one")
    model = FidelityClassifier(json.loads(meta["medsr_classes"]), int(meta["medsr_input_size"]), json.loads(meta["medsr_widths"]))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise MedsrError(f"{path}: weights do not match the classifier they describe ({str(err).splitlines()[0]}); "
                         "the file is damaged, retrain it (omit --classifier)") from None
    model.record = {k[len("medsr_"):]: _parse(v) for k, v in meta.items()
                    if k.startswith("medsr_") and k not in ("medsr_kind", "medsr_classes", "medsr_input_size", "medsr_widths")}
    model.record["path"] = str(path)
    return model.to(device).eval()


def _parse(text: str):
    """A metadata value back to what was stored: JSON where it is JSON, else the plain string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


# ---- data ---------------------------------------------------------------------------------------
def _check_labels(items, data_dirs: list[str]) -> None:
    unlabelled = next((it for it in items if not it.label), None)
    if unlabelled is not None:
        raise MedsrError(f"{unlabelled.path}: image is not in a class folder; put the images of each class in their own "
                         f"subfolder of {', '.join(map(str, data_dirs))} (e.g. NORMAL/, PNEUMONIA/)")


def _hr_images(data_dirs: list[str], split: str, limit: int | None) -> tuple[torch.Tensor, list]:
    """The paper protocol's HR images (N, 1, 150, 150) in [0, 1] of a split, and their items."""
    items = select(scan(data_dirs), split)
    if not items:
        raise MedsrError(f"{', '.join(map(str, data_dirs))}: no images in the '{split}' split; add images or use another split")
    _check_labels(items, data_dirs)
    return _load_hr(items, limit)


def _load_hr(items: list, limit: int | None) -> tuple[torch.Tensor, list]:
    arrays, kept = load_arrays(spread(items, limit), limit)
    hr = [torch.from_numpy(degrade.make_pair(as_unit(a)[0], "paper", 3)[1]) for a in arrays]
    return torch.stack(hr)[:, None], kept


# ---- training -----------------------------------------------------------------------------------
def class_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """N / (K * N_c): each class weighs as much in the loss as the others, whatever its size."""
    counts = torch.bincount(targets, minlength=num_classes).float()
    return len(targets) / (num_classes * counts.clamp_min(1))


def train_classifier(data_dirs: list[str], epochs: int = DEFAULT_EPOCHS, input_size: int = degrade.PAPER_HR_SIZE,
                     seed: int = 0, batch_size: int = 32, lr: float = 1e-3, device: str = "auto", precision: str = "auto",
                     widths: tuple[int, ...] = DEFAULT_WIDTHS, limit: int | None = None) -> FidelityClassifier:
    """Train the classifier on the HR images of the train split (labels from class folders);
    reports the val split's accuracy at the end. `limit` caps the training images, spread over the classes."""
    if epochs < 1:
        raise MedsrError(f"--classifier-epochs {epochs}: must be at least 1")
    started = time.monotonic()
    device = hardware.resolve_device(device)
    dtype = hardware.resolve_precision(precision, device)
    images, items = _hr_images(data_dirs, "train", limit)
    classes = sorted({it.label for it in items})
    if len(classes) < 2:
        raise MedsrError(f"{', '.join(map(str, data_dirs))}: only one class folder ({classes[0]}) in the train split; "
                         "a classifier needs at least two class subfolders")
    targets = torch.tensor([classes.index(it.label) for it in items])
    torch.manual_seed(seed)
    model = FidelityClassifier(classes, input_size, widths).to(device)
    inputs = model.prepare(images)  # resized once, not every epoch
    weights = class_weights(targets, len(classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(inputs) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=lr * 0.01)
    generator = torch.Generator().manual_seed(seed)
    precision_name = "bf16" if dtype else "fp32"
    tqdm.write(f"fidelity classifier: {len(inputs)} training images, classes {classes}, {epochs} epochs, {precision_name}, {device}")
    for epoch in range(1, epochs + 1):
        model.train()
        total, epoch_start = 0.0, time.monotonic()
        for idx in torch.randperm(len(inputs), generator=generator).split(batch_size):
            x, y = inputs[idx], targets[idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            with hardware.autocast(device, dtype):
                logits = model(x.to(device))
            loss = F.cross_entropy(logits.float(), y.to(device), weight=weights.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        tqdm.write(f"  epoch {epoch}/{epochs}: loss {total / len(inputs):.4f} ({time.monotonic() - epoch_start:.1f} s)")
    model.eval()
    model.record = {"epochs": epochs, "seed": seed, "train_images": len(inputs), "class_counts": torch.bincount(targets).tolist(),
                    "balancing": "class-weighted cross-entropy N/(K*N_c)", "augmentation": "random horizontal flips",
                    "precision": precision_name, "data": [str(d) for d in data_dirs]}
    model.record["val_accuracy"] = _val_accuracy(model, data_dirs, limit)
    model.record["train_seconds"] = round(time.monotonic() - started, 1)
    if not math.isnan(model.record["val_accuracy"]):
        tqdm.write(f"  val accuracy on HR images: {model.record['val_accuracy']:.3f}")
    return model


def _val_accuracy(model: FidelityClassifier, data_dirs: list[str], limit: int | None) -> float:
    """Accuracy on the val split's HR images: a sanity check that the classifier learned something."""
    items = [it for it in select(scan(data_dirs), "val") if it.label in model.classes]
    if not items:
        return float("nan")
    hr, kept = _load_hr(items, limit)
    targets = torch.tensor([model.classes.index(it.label) for it in kept])
    return float((predict(model, hr).argmax(1) == targets).float().mean())


# ---- evaluation ---------------------------------------------------------------------------------
@torch.inference_mode()
def predict(model: FidelityClassifier, images01: torch.Tensor, precision: str = "auto", batch_size: int = 64) -> torch.Tensor:
    """Softmax probabilities (N, K), float32 on the CPU, of (N, 1, H, W) [0, 1] images."""
    device = next(model.parameters()).device
    dtype = hardware.resolve_precision(precision, device)
    out = []
    for chunk in images01.split(batch_size):
        with hardware.autocast(device, dtype):
            logits = model(model.prepare(chunk).to(device))
        out.append(logits.float().softmax(1).cpu())
    return torch.cat(out)


def macro_auc(probs: torch.Tensor, targets: torch.Tensor) -> float:
    """One-vs-rest AUC averaged over the classes (macro). With two classes and softmax outputs
    both one-vs-rest AUCs equal the plain AUC, so this is the plain AUC there. Classes absent
    from `targets` (or making up all of it) are left out; NaN when fewer than two are present."""
    aucs = [binary_auroc(probs[:, c].float(), (targets == c).long()).item()
            for c in range(probs.shape[1]) if 0 < int((targets == c).sum()) < len(targets)]
    return float(np.mean(aucs)) if aucs else float("nan")


def _summary_row(name: str, probs: torch.Tensor, targets: torch.Tensor, hr_pred: torch.Tensor) -> dict:
    pred = probs.argmax(1)
    recalls = [float((pred[targets == c] == c).float().mean()) for c in targets.unique().tolist()]
    return {"method": name, "images": len(targets), "accuracy": float((pred == targets).float().mean()),
            "balanced_accuracy": float(np.mean(recalls)), "auc": macro_auc(probs, targets),
            "changed_vs_hr": float((pred != hr_pred).float().mean())}


def evaluate_fidelity(data_dirs: list[str], methods: list[Method], scale: int, classifier: FidelityClassifier,
                      split: str = "test", limit: int | None = None, precision: str = "auto",
                      chunk: int = 32) -> tuple[list[dict], list[dict]]:
    """Classify each image of a split as HR (paper protocol) and as each method's SR of its LR.

    Returns (rows, summary): a row per image and method {file, label, method, predicted, correct,
    changed_vs_hr, p_true, p_<class>...}; a summary per method, HR first {method, images,
    accuracy, balanced_accuracy, auc, changed_vs_hr}. Images are processed `chunk` at a time,
    so memory does not grow with the split.
    """
    items = select(scan(data_dirs), split)
    if not items:
        raise MedsrError(f"{', '.join(map(str, data_dirs))}: no images in the '{split}' split; use --split all or add images")
    _check_labels(items, data_dirs)
    unknown = next((it for it in items if it.label not in classifier.classes), None)
    if unknown is not None:
        source = classifier.record.get("path", "the classifier")
        raise MedsrError(f"{unknown.path}: class '{unknown.label}' is not one {source} knows ({', '.join(classifier.classes)}); "
                         "evaluate the data it was trained on, or omit --classifier to train one on this data")
    arrays, kept = load_arrays(spread(items, limit), limit)
    names = [HR] + [m.name for m in methods]
    probs = {name: [] for name in names}
    for start in tqdm(range(0, len(arrays), chunk), desc="classify", unit="chunk", dynamic_ncols=True):
        images = {name: [] for name in names}
        for array in arrays[start : start + chunk]:
            lr, hr = degrade.make_pair(as_unit(array)[0], "paper", scale)
            images[HR].append(hr)
            for method in methods:
                images[method.name].append(method.run(lr, scale))
        for name in names:
            probs[name].append(predict(classifier, torch.from_numpy(np.stack(images[name]))[:, None], precision))
    probs = {name: torch.cat(p) for name, p in probs.items()}
    targets = torch.tensor([classifier.classes.index(it.label) for it in kept])
    hr_pred = probs[HR].argmax(1)
    rows, summary = [], []
    for name in names:
        pred = probs[name].argmax(1)
        summary.append(_summary_row(name, probs[name], targets, hr_pred))
        for i, item in enumerate(kept):
            row = {"file": str(item.path), "label": item.label, "method": name, "predicted": classifier.classes[pred[i]],
                   "correct": bool(pred[i] == targets[i]), "changed_vs_hr": bool(pred[i] != hr_pred[i]),
                   "p_true": float(probs[name][i, targets[i]])}
            row.update({f"p_{c}": float(probs[name][i, k]) for k, c in enumerate(classifier.classes)})
            rows.append(row)
    return rows, summary


def fidelity_table(summary: list[dict]) -> str:
    header = ["method", "images", "accuracy", "balanced accuracy", "AUC", "changed vs HR"]
    rows = [[s["method"], str(s["images"]), f"{s['accuracy']:.3f}", f"{s['balanced_accuracy']:.3f}", f"{s['auc']:.3f}",
             f"{100 * s['changed_vs_hr']:.1f} %"] for s in summary]
    return report.markdown_table(header, rows)


def run_classify(data_dirs: list[str], methods: list[Method], scale: int, out_dir: str | Path,
                 classifier: str | Path | None = None, classifier_epochs: int = DEFAULT_EPOCHS, split: str = "test",
                 limit: int | None = None, device: str = "auto", precision: str = "auto", seed: int = 0,
                 input_size: int = degrade.PAPER_HR_SIZE, train_limit: int | None = None) -> dict:
    """`medsr evaluate --task classify`: load the classifier (or train it on the train split of
    `data_dirs` and save it to <out_dir>/classifier.safetensors), evaluate, print a Markdown
    table, write the reports. Returns {rows, summary, table, paths, classifier}."""
    check_limit(limit)  # before the classifier trains, not after
    out_dir = Path(out_dir)
    if classifier is not None:
        model = load_classifier(classifier, hardware.resolve_device(device))
        path = Path(classifier)
    else:
        model = train_classifier(data_dirs, classifier_epochs, input_size, seed, device=device, precision=precision, limit=train_limit)
        path = save_classifier(out_dir / "classifier.safetensors", model)
        model.record["path"] = str(path)
        print(f"saved the classifier to {path}; reuse it with --classifier {path}")
    if split in ("train", "all"):
        print(f"note: split '{split}' holds the classifier's own training images; its accuracy there is optimistic, use --split test")
    rows, summary = evaluate_fidelity(data_dirs, methods, scale, model, split, limit, precision)
    table = fidelity_table(summary)
    print(f"\ndiagnostic fidelity, paper protocol, x{scale}, split '{split}', {', '.join(map(str, data_dirs))}; "
          f"classifier {path} ({len(model.classes)} classes: {', '.join(model.classes)})\n")
    print(table)
    print("\nHR: the classifier on the original images (the ceiling); changed vs HR: images whose predicted class differs from HR's")
    context = {"task": "classify", "data": [str(d) for d in data_dirs], "protocol": "paper", "split": split, "scale": scale,
               "classifier": {"path": str(path), "classes": model.classes, "input_size": model.input_size, **model.record}}
    paths = report.write_reports(rows, summary, out_dir, context, REPORT_FILES)
    print(f"\nwrote {', '.join(map(str, paths))}")
    return {"rows": rows, "summary": summary, "table": table, "paths": paths, "classifier": path}

"""Write docs/RESULTS.md: shipped models vs nearest/bicubic/Lanczos on the test split of each
modality, under the paper and native protocols.

    python benchmarks/make_results.py [--models default] [--limit N]
"""

import argparse
import time

import torch

from common import DATA, ROOT
from medsr import evaluate as ev, runtime, zoo
from medsr.infer import Upscaler



def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="default")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    methods = [ev.Method(name) for name in ev.BASELINES]
    for name in args.models.split(","):
        model, meta = zoo.load(name)
        methods.append(ev.Method(name, Upscaler(model, int(meta["medsr_scale"]), cpu, "auto", tile=0)))
    command = "python benchmarks/make_results.py" + (f" --models {args.models}" if args.models != "default" else "") + \
        (f" --limit {args.limit}" if args.limit else "")
    lines = ["# Results", "", f"Produced by `{command}` (test split, x3, "
             f"precision {'bf16' if runtime.cpu_has_fast_bf16() else 'fp32'}; {time.strftime('%Y-%m-%d')}).",
             "PSNR and SSIM after a border crop of 3 px; data range of the images' bit depth (8-bit here).",
             "paper protocol: HR = centre square resized to 150x150, LR 50x50; native protocol: HR at the image's",
             "own resolution, centre-cropped to at most 1500 px, LR = HR / 3. Both LR by antialiased bicubic.", ""]
    for modality in ("brain-mri", "chest-xray"):
        for protocol in ("paper", "native"):
            rows = ev.evaluate([str(DATA / modality)], methods, 3, protocol, "test", args.limit)
            summary = ev.summarize(rows)
            ev.write_reports(rows, summary, ROOT / "docs" / "results" / f"{modality}-{protocol}",
                             {"data": modality, "protocol": protocol, "split": "test", "scale": 3})
            lines += [f"## {modality}, {protocol} protocol", "", ev.markdown_table(summary), ""]
            print(lines[-3], lines[-2], sep="\n")
    (ROOT / "docs" / "RESULTS.md").write_text("\n".join(lines))
    print(f"wrote {ROOT / 'docs' / 'RESULTS.md'}")


if __name__ == "__main__":
    main()

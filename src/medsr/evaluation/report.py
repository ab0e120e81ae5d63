"""What every evaluation writes: Markdown tables and the per-image / summary / JSON report files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from medsr.files import atomic_write, mark_output_folder


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table of formatted cells: the first column (names) left-aligned, the rest right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def number(value: float, spec: str) -> str:
    """A table cell for a number: formatted by `spec`, or n/a when it is not finite (NaN: does not apply)."""
    return format(value, spec) if math.isfinite(value) else "n/a"


def strict_json(value):
    """`value` with every float that is not finite (NaN, inf) as None: JSON has no such numbers,
    and strict parsers reject Python's NaN / Infinity tokens."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: strict_json(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_reports(rows: list[dict], summary: list[dict], out_dir: Path, context: dict,
                  names: tuple[str, str, str] = ("per_image.csv", "summary.csv", "results.json")) -> list[Path]:
    """per-image CSV, summary CSV, and a JSON with context + summary + rows (strict JSON: values
    that are not finite are null), each written atomically;
    `names` lets another report (medsr.evaluation.diagnostic) sit beside these in the same folder."""
    mark_output_folder(out_dir)  # its figures are never scored as data
    paths = [Path(out_dir) / name for name in names]
    for path, table in zip(paths[:2], (rows, summary)):
        def write_csv(tmp: Path, table=table) -> None:
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(table[0]))
                writer.writeheader()
                writer.writerows(table)
        atomic_write(path, write_csv)
    text = json.dumps(strict_json({**context, "summary": summary, "per_image": rows}), indent=1, allow_nan=False)
    atomic_write(paths[2], lambda tmp: tmp.write_text(text))
    return paths

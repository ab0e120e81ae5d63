"""Collapse guard: notice, step by step, that training has failed, so the trainer can roll back.

The seed paper's GAN collapsed to black images after 20-50 epochs, and nothing stopped it. The
trainer asks this guard after every step; on a finding it rolls back to the last checkpoint (all
of which were taken at steps the guard passed), lowers the learning rates, logs the event and
goes on, and gives up with a clear message after `collapse_retries` findings. Signs watched:
- a loss that is NaN or infinite;
- generator output gone flat: the standard deviation of the whole SR batch below `flat_std`
  (in the models' [-1, 1] units; real scans have about 0.3-0.5). Black and any constant image
  both count;
- a discriminator that wins outright for `patience` steps in a row (it calls real images real
  with probability > 0.99 and fakes real with < 0.01), which leaves the generator no gradient to learn from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WIN_REAL, WIN_FAKE = 0.99, 0.01


@dataclass
class CollapseGuard:
    flat_std: float = 0.01
    patience: int = 200
    streak: int = 0  # consecutive steps the discriminator has won outright

    def check(self, logs: dict[str, float]) -> str | None:
        """What went wrong in this step's logs, in words, or None when all is well."""
        bad = [key for key, value in logs.items() if key.startswith("loss/") and not math.isfinite(value)]
        if bad:
            return f"non-finite {', '.join(bad)}"
        if logs["sr/std"] < self.flat_std:
            kind = "black" if logs["sr/mean"] < -0.9 else "constant"
            return f"generator output went {kind} (batch std {logs['sr/std']:.4f}, mean {logs['sr/mean']:+.3f})"
        if "d/real_prob" in logs:
            won = logs["d/real_prob"] > WIN_REAL and logs["d/fake_prob"] < WIN_FAKE
            self.streak = self.streak + 1 if won else 0
            if self.streak >= self.patience:
                return f"the discriminator won outright for {self.streak} steps in a row"
        return None

    def reset(self) -> None:
        self.streak = 0

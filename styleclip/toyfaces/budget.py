"""Turns a wall-clock budget into a step count, so a run on a short GPU loan still ends its schedule."""

from __future__ import annotations

import json
import time


class StepBudget:
    """The total step count of a run: `steps`, or, with `minutes` > 0, what fits in the budget.

    The rate is measured between `start_step + settle` and `start_step + settle + window` (the first steps pay
    for start-up and drain the prefetched batches, so they would overstate or understate the rate); from then
    on the total is fixed and printed, and `--steps` with that number reproduces the run.

    A rate measured while prefetched batches drain can overstate the steady rate, and a GPU loan kills a command
    at its limit, so past `overrun` times the budget the run ends at the next step whatever the total (and says
    so): the log's last step then reproduces the run's steps but not its learning-rate schedule.
    """

    def __init__(self, steps: int, minutes: float, start_step: int, settle: int = 20, window: int = 40,
                 overrun: float = 1.05):
        self.total, self.minutes, self.start_step = steps, minutes, start_step
        self.settle, self.window, self.overrun = settle, window, overrun
        if minutes:
            # Until the rate is known, run at least long enough to measure it: a warm start may already be past
            # `steps` (they count from step 0), and would otherwise end before its first step.
            self.total = max(steps, start_step + settle + window + 1)
        self._t0, self._t_settle = time.time(), None

    def update(self, step: int) -> int:
        """Call once per step, before using the total; returns the current total."""
        if not self.minutes:
            return self.total
        if time.time() - self._t0 > self.overrun * self.minutes * 60 and self.total > step + 1:
            self.total = step + 1
            print(json.dumps({"deadline": round(self.overrun * self.minutes, 2), "ends_at_step": self.total}),
                  flush=True)
        if step == self.start_step + self.settle:
            self._t_settle = time.time()
        elif self._t_settle is not None and step == self.start_step + self.settle + self.window:
            now = time.time()
            rate = self.window / (now - self._t_settle)
            self.total = step + 1 + int(rate * max(0.0, self.minutes * 60 - (now - self._t0)))
            print(json.dumps({"steps_for_budget": self.total, "steps_per_s": round(rate, 3)}), flush=True)
        return self.total

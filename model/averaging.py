"""Polyak averaging of the weights while training (an exponential moving average, EMA).

On small recommendation data the valid metric of the raw weights swings by several points from
one evaluation to the next (each step follows a mini-batch of a few thousand samples); the average
of the recent weights sits in a flatter spot and ranks more steadily. A transformers
TrainerCallback: it updates the average after every optimizer step, lends it to evaluations
(`applied`), and at the end of training the saved model is the average.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import TrainerCallback

from thinkrec.errors import ThinkRecError


class WeightAverage(TrainerCallback):
    runs_model = False  # only arithmetic on the weights: the compiled layers stay as they are

    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ThinkRecError(f"--weight-average must lie in (0, 1) (or 0 for none), got {decay}")
        self.decay = decay
        self.params: list[torch.Tensor] = []
        self.average: list[torch.Tensor] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # trainable weights only (with LoRA, the adapters and the SID rows); a resumed run starts
        # its average from the resumed weights
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def on_step_end(self, args, state, control, **kwargs):
        decay = self.decay_at(state.global_step)
        for avg, p in zip(self.average, self.params, strict=True):
            avg.lerp_(p.detach(), 1.0 - decay)

    def decay_at(self, step: int) -> float:
        """The first 1/(1 - decay) steps keep the plain mean of the weights so far (step/(step + 1)),
        then the fixed decay. (TensorFlow's (1 + step)/(10 + step) ramp stays below 0.99 for 890 steps,
        longer than a whole run here, so the flag would not matter.)"""
        return min(self.decay, step / (step + 1))

    @contextmanager
    @torch.no_grad()
    def applied(self):
        """The model holds the averaged weights inside the block and its own after it."""
        own = [p.detach().clone() for p in self.params]
        self._load(self.average)
        try:
            yield
        finally:
            self._load(own)

    def restore_best(self, model) -> None:
        """End of training: the model keeps the average (a best-on-valid copy may replace it after)."""
        if self.average:
            self._load(self.average)

    @torch.no_grad()
    def _load(self, values: list[torch.Tensor]) -> None:
        for p, v in zip(self.params, values, strict=True):
            p.copy_(v)

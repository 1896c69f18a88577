"""What fine-tuning shows the user: one labeled bar per training stage, and nothing else."""

from __future__ import annotations

from tqdm.auto import tqdm
from transformers import TrainerCallback


class TrainingBar(TrainerCallback):
    """A labeled progress bar over a stage's optimizer steps; the trainer's own is unlabeled and
    writes every metric dict through it."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: tqdm | None = None

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.label, unit="step")

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kwargs) -> None:
        if self.bar is not None:
            self.bar.close()

"""The console's copy of the training logs, without the per-decision probabilities.

A search logs one probability per decision and format (`search/p/<decision>/<format>`: 42 numbers
for ResNet-18 over two formats, 370 for BERT-base's 74 layers over five) at every log. TensorBoard
and `trainer_state.json` keep them; printed on the console they buried the loss and the reward in
every line. The Trainer's console callbacks (`ProgressCallback` with tqdm, `PrinterCallback`
without) are swapped for ones that print the logs without those keys; every other callback, and
the Trainer's log history, gets them all.
"""
from __future__ import annotations

from typing import Any

from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback


def _without(logs: dict[str, Any] | None, prefix: str) -> dict[str, Any] | None:
    return None if logs is None else {key: value for key, value in logs.items() if not key.startswith(prefix)}


def _quiet(console: type[TrainerCallback], prefix: str) -> type[TrainerCallback]:
    """`console` printing its logs without the keys that start with `prefix`."""

    class Quiet(console):  # type: ignore[misc, valid-type]
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> Any:
            return super().on_log(args, state, control, logs=_without(logs, prefix), **kwargs)

    Quiet.__name__ = Quiet.__qualname__ = f"Quiet{console.__name__}"
    return Quiet


def hide_from_console(trainer: Trainer, prefix: str) -> None:
    """Print `trainer`'s logs on the console without the keys that start with `prefix`."""
    for console in (ProgressCallback, PrinterCallback):
        if trainer.pop_callback(console) is not None:
            trainer.add_callback(_quiet(console, prefix))

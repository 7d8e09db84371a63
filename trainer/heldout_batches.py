"""The held-out reward's batches: the split, cycled through in a fixed order, resumable.

With `--reward_source heldout` every micro-batch of the search also reads one batch of the split
carved out of the training set. `HeldoutBatches` reads them from one loader, pass after pass,
and counts its position in the current pass, which a checkpoint stores so that a resumed search
reads the batches an uninterrupted one would.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, MutableMapping

import torch


class HeldoutBatches:
    """An endless stream of held-out batches.

    build_loader: makes the loader of the split (called once, at the first read: a DataLoader,
    and accelerate's wrapping of it, per pass over a small split cost more than the forward
    pass it feeds). Its order must be fixed (no shuffling), for the position to mean anything.
    """

    def __init__(self, build_loader: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self._build_loader = build_loader
        self._loader: Iterable[dict[str, Any]] | None = None
        self._batches: Iterator[dict[str, Any]] | None = None
        # Whether the loader moves each batch to the device itself, into a mapping of its own
        # (accelerate's DataLoaderShard, which the Trainer's loaders are): see `_read`.
        self._loader_places_batches = False
        self.position = 0  # batches read in the current pass

    def next(self) -> dict[str, Any]:
        """The next batch. A pass over a DataLoader draws a seed from the global RNG as it
        starts (under accelerate, at its first batch): reading the held-out split must not move
        the training's random numbers (dropout, shuffling), whenever in the step it happens."""
        with torch.random.fork_rng(devices=[]):
            return self._read()

    def restart_at(self, position: int) -> None:
        """Go on from `position` batches into a pass (a checkpoint's), at the next read."""
        self.position = position
        self._batches = None

    def _read(self) -> dict[str, Any]:
        for _ in range(2):
            if self._batches is None:
                if self._loader is None:
                    self._loader = self._build_loader()
                    self._loader_places_batches = getattr(self._loader, "device", None) is not None
                self._batches = iter(self._loader)
                for _ in range(self.position):  # a resumed search goes on where its checkpoint was
                    if next(self._batches, None) is None:  # a smaller split than the checkpoint's
                        self._batches, self.position = iter(self._loader), 0
                        break
            try:
                batch = next(self._batches)
            except StopIteration:
                self._batches, self.position = None, 0  # cycle through the split again
                continue
            self.position += 1
            if self._loader_places_batches and isinstance(batch, MutableMapping):
                # accelerate's loader reads one batch ahead and keeps the one it yielded until the
                # next read, i.e. through the rest of the training step and its memory peak (ResNet-18
                # at batch 128: 74 MiB on the device). Its tensors move to a mapping of the caller's,
                # which lets them go once the reward's forward is done with them.
                batch, held = dict(batch), batch
                held.clear()
            return batch
        raise ValueError("the held-out dataset is empty (a pass over it gave no batch); give it rows (on the command "
                         "line: a larger --heldout_fraction)")

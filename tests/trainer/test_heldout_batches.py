"""The held-out reward's batches: one loader cycled through in a fixed order, resumable, and
read without moving the training's random numbers."""
import weakref

import pytest
import torch

from tests.trainer.toy_search_problem import DropoutToy, ToyDataset, make_trainer
from trainer.heldout_batches import HeldoutBatches


class CountingLoader:
    """A loader over fixed batches that counts its passes."""

    def __init__(self, size: int) -> None:
        self.batches = [{"x": torch.tensor([i])} for i in range(size)]
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)


def read(stream: HeldoutBatches, count: int) -> list[int]:
    return [int(stream.next()["x"]) for _ in range(count)]


def test_the_stream_cycles_through_one_loader_and_counts_its_position():
    loader, built = CountingLoader(3), []
    stream = HeldoutBatches(lambda: built.append(1) or loader)
    assert built == [] and stream.position == 0  # the loader is built at the first read
    assert read(stream, 7) == [0, 1, 2, 0, 1, 2, 0]
    assert len(built) == 1 and loader.passes == 3 and stream.position == 1


@pytest.mark.parametrize(("position", "expected", "position_after"), [
    (0, [0, 1, 2, 0], 1),
    (2, [2, 0, 1, 2], 3),
    (3, [0, 1, 2, 0], 1),  # a checkpoint taken right after a pass's last batch
    (5, [0, 1, 2, 0], 1),  # beyond the split (a smaller one than the checkpoint's): from the start
])
def test_restart_at_goes_on_from_a_checkpoint_position(position, expected, position_after):
    stream = HeldoutBatches(lambda: CountingLoader(3))
    read(stream, 1)
    stream.restart_at(position)
    assert stream.position == position
    assert read(stream, 4) == expected and stream.position == position_after


def test_an_empty_split_is_an_error_naming_the_flag():
    with pytest.raises(ValueError, match=r"^the held-out dataset is empty \(a pass over it gave no batch\); give it "
                                         r"rows \(on the command line: a larger --heldout_fraction\)$"):
        HeldoutBatches(lambda: CountingLoader(0)).next()


def test_heldout_batches_cycle_through_one_dataloader(tmp_path, monkeypatch):
    trainer = make_trainer(str(tmp_path), steps=7, reward_source="heldout",
                           training_overrides=dict(per_device_eval_batch_size=8))
    trainer.heldout_dataset = ToyDataset(16, 7)  # two batches per pass
    built = []
    real = trainer._get_dataloader
    monkeypatch.setattr(trainer, "_get_dataloader", lambda **k: built.append(k) or real(**k))
    seen = [trainer._heldout.next()["x"] for _ in range(5)]
    assert len(built) == 1  # passes 2 and 3 reuse the loader of pass 1
    # Under a key of its own: with persistent workers the Trainer keeps loaders by key, and the
    # evaluation set's is "eval".
    assert built[0]["dataset"] is trainer.heldout_dataset and built[0]["dataloader_key"] == "fliqs_heldout"
    first, second = ToyDataset(16, 7).x[:8], ToyDataset(16, 7).x[8:]
    for got, want in zip(seen, [first, second, first, second, first]):
        assert torch.equal(got, want)


def test_reading_the_heldout_split_leaves_the_global_rng_as_it_was(tmp_path):
    """A pass over the held-out split draws a seed from the global RNG as it starts; the search
    reads the split under a fork of it, so training's random numbers do not depend on when."""
    trainer = make_trainer(str(tmp_path), steps=7, reward_source="heldout",
                           training_overrides=dict(per_device_eval_batch_size=8))
    trainer.heldout_dataset = ToyDataset(16, 7)  # two batches per pass: passes start at reads 1, 3, 5
    torch.manual_seed(11)
    state = torch.get_rng_state()
    for _ in range(5):
        trainer._heldout.next()
    assert torch.equal(torch.get_rng_state(), state)
    with torch.random.fork_rng(devices=[]):  # unforked, a pass does draw (what the fork is for)
        trainer._heldout._read()  # read 6: the end of pass 3
        assert torch.equal(torch.get_rng_state(), state)
        trainer._heldout._read()  # read 7: pass 4 starts
        assert not torch.equal(torch.get_rng_state(), state)


def test_a_search_with_dropout_draws_the_same_random_numbers_whatever_feeds_the_heldout_reward(tmp_path):
    """With dropout in the model, every training forward sees the global RNG as it would if the
    held-out batches came from a plain list: reading the split through a DataLoader (whose
    passes draw seeds) leaves the training's random numbers alone."""
    runs = []
    for from_list in (False, True):
        torch.manual_seed(3)
        trainer = make_trainer(str(tmp_path / str(from_list)), seed=3, steps=10, delay_steps=2, model=DropoutToy(),
                               reward_source="heldout", training_overrides=dict(per_device_eval_batch_size=8))
        trainer.heldout_dataset = ToyDataset(24, 7)  # three batches per pass: passes start at steps 1, 4, 7, 10
        if from_list:
            data = ToyDataset(24, 7)
            batches = [{"x": data.x[i:i + 8], "labels": data.labels[i:i + 8]} for i in (0, 8, 16)]
            reads = iter(range(100))
            trainer._heldout.next = lambda: batches[next(reads) % 3]
        states = []

        def record(module, args, states=states) -> None:
            if module.training:
                states.append(torch.get_rng_state())

        trainer.model.register_forward_pre_hook(record)
        trainer.train()
        runs.append((states, trainer.policy.logits.detach().clone()))
    (states, logits), (list_states, list_logits) = runs
    assert len(states) == 10 and all(torch.equal(a, b) for a, b in zip(states, list_states))
    assert torch.equal(logits, list_logits)


def test_the_heldout_forward_runs_before_the_training_forward(tmp_path, monkeypatch):
    """On a GPU the held-out batch's copy waits for the queue: read at the start of the step it
    waits for little, after the backward pass for all of it. Its forward follows at once, so that
    the batch is gone before the training step's memory peak."""
    trainer = make_trainer(str(tmp_path), steps=2, reward_source="heldout")
    events = []
    real = trainer._heldout.next
    monkeypatch.setattr(trainer._heldout, "next", lambda: events.append("heldout batch") or real())
    trainer.model.register_forward_pre_hook(lambda module, args: events.append(
        "training forward" if module.training else "heldout forward"))
    trainer.train()
    assert events == ["heldout batch", "heldout forward", "training forward"] * 2


def test_the_heldout_batch_is_freed_before_the_training_forward(tmp_path, monkeypatch):
    """accelerate's loader keeps the batch it yielded until its next read; HeldoutBatches takes
    the tensors out of it, so nothing holds them once the reward's forward is done."""
    trainer = make_trainer(str(tmp_path), steps=3, reward_source="heldout")
    alive, read = [], []
    real = trainer._heldout.next

    def next_batch():
        batch = real()
        read.append([weakref.ref(t) for t in batch.values()])
        return batch

    monkeypatch.setattr(trainer._heldout, "next", next_batch)
    trainer.model.register_forward_pre_hook(lambda module, args: alive.append(
        sum(ref() is not None for ref in read[-1])) if module.training else None)
    trainer.train()
    assert trainer._heldout._loader_places_batches  # the Trainer's loaders are accelerate's
    assert len(read) == 3 and all(len(refs) == 2 for refs in read)  # x and labels
    assert alive == [0, 0, 0]


def test_a_batch_the_loader_did_not_place_is_returned_as_it_came():
    """Only a mapping the loader made for the caller is emptied: a plain loader's batches (which
    a dataset may hold) are not touched."""
    stored = [{"x": torch.arange(3)}, {"x": torch.arange(4)}]
    batches = HeldoutBatches(lambda: stored)
    assert batches.next() is stored[0] and batches.next() is stored[1]
    assert list(stored[0]) == ["x"] and list(stored[1]) == ["x"]


class PlacingLoader:
    """Like accelerate's DataLoaderShard: has a device, yields new mappings and keeps the one it
    yielded (a generator suspended at its yield)."""

    device = torch.device("cpu")

    def __iter__(self):
        for i in range(2):
            held = {"x": torch.tensor([i]), "labels": torch.tensor([i + 10])}
            self.held = held
            yield held


def test_a_placed_batch_is_handed_over_and_the_loaders_mapping_emptied():
    loader = PlacingLoader()
    batches = HeldoutBatches(lambda: loader)
    batch = batches.next()
    assert type(batch) is dict and batch is not loader.held
    assert loader.held == {} and torch.equal(batch["x"], torch.tensor([0])) and torch.equal(batch["labels"],
                                                                                             torch.tensor([10]))

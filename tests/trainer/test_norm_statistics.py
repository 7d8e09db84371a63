"""BatchNorm statistics: the snapshot that undoes a dropped step, and the recalibration."""
import pytest
import torch

from tests.trainer.toy_search_problem import make_trainer
from trainer.norm_statistics import BufferSnapshot, recalibrate_batchnorm


def test_recalibrate_batchnorm_averages_the_batch_statistics():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(3, momentum=0.3)

        def forward(self, x):
            return self.norm(x)

    net = Net().eval()
    net.norm.running_mean.fill_(5.0)
    batches = [{"x": torch.randn(8, 3, generator=torch.Generator().manual_seed(i))} for i in range(4)]
    assert recalibrate_batchnorm(net, iter(batches)) == 4
    expected_mean = torch.stack([b["x"].mean(0) for b in batches]).mean(0)
    expected_var = torch.stack([b["x"].var(0, unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(net.norm.running_mean, expected_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(net.norm.running_var, expected_var, rtol=1e-6, atol=1e-7)
    assert net.norm.momentum == 0.3 and not net.training  # restored
    assert recalibrate_batchnorm(torch.nn.Linear(2, 2), iter(batches)) == 0


def test_recalibration_restores_every_module_s_own_mode_and_momentum_also_on_an_error():
    """A norm in eval mode inside a training model stays in eval mode (the whole model was set
    to the root's mode before); a failing batch leaves no momentum of None behind."""
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(3, momentum=0.2), torch.nn.BatchNorm1d(3, momentum=0.4))
    model.train()
    model[1].eval()
    batches = [{"input": torch.randn(8, 3, generator=torch.Generator().manual_seed(i))} for i in range(2)]
    assert recalibrate_batchnorm(model, iter(batches)) == 2
    assert [model.training, model[0].training, model[1].training] == [True, True, False]

    def failing():
        yield batches[0]
        yield {"input": torch.randn(8, 4)}  # the wrong width: the forward raises

    with pytest.raises(RuntimeError):
        recalibrate_batchnorm(model, failing())
    assert [model[0].momentum, model[1].momentum] == [0.2, 0.4]
    assert [model.training, model[0].training, model[1].training] == [True, True, False]


def test_a_restored_snapshot_leaves_no_trace_of_the_dropped_forward_under_cumulative_momentum():
    """momentum=None averages over num_batches_tracked: a dropped step's forward must not count."""
    def batch(i):
        return torch.randn(8, 4, generator=torch.Generator().manual_seed(i))

    reference = torch.nn.BatchNorm1d(4, momentum=None)
    for i in (0, 2, 3):
        reference(batch(i))
    norm, snapshot = torch.nn.BatchNorm1d(4, momentum=None), BufferSnapshot()
    for i in range(4):
        taken = snapshot.take(norm)
        norm(batch(i) * (100.0 if i == 1 else 1.0))
        if i == 1:  # the trainer's dropped step
            BufferSnapshot.restore(taken)
    assert int(norm.num_batches_tracked) == 3
    for name in ("running_mean", "running_var"):
        assert torch.equal(getattr(norm, name), getattr(reference, name))


def test_only_the_buffers_a_forward_changes_are_copied():
    """Floating-point buffers and BatchNorm's batch counter; not constant integer buffers such as
    BERT's position ids (BERT-base copies nothing)."""
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 3))
    model[1].register_buffer("position_ids", torch.arange(3))
    model[1].register_buffer("num_batches_tracked", torch.tensor(0))  # not a normalisation layer's
    listed = BufferSnapshot().changing_buffers(model)
    expected = [model[0].running_mean, model[0].running_var, model[0].num_batches_tracked]
    assert len(listed) == 3 and all(a is b for a, b in zip(listed, expected))


def test_buffer_snapshot_lists_the_changing_buffers_as_model_buffers_does():
    """The snapshot lists the modules once but reads their buffer slots at every step: a buffer
    registered or replaced after the first snapshot, or shared by two modules, is listed as
    `model.buffers()` lists it, and restoring writes the values back into those tensors."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3))
    snapshot = BufferSnapshot()

    def expected():
        return [b for name, b in model.named_buffers()
                if b.is_floating_point() or name.endswith("num_batches_tracked")]

    def same(listed):
        return len(listed) == len(expected()) and all(a is b for a, b in zip(listed, expected()))

    assert same(snapshot.changing_buffers(model)) and len(expected()) == 6  # 2 x (mean, var, count)
    model[0].register_buffer("later", torch.zeros(2))
    model[1].running_mean = torch.ones(3)  # replaced by another tensor
    model[2].register_buffer("shared", model[1].running_var)
    assert same(snapshot.changing_buffers(model)) and len(expected()) == 7
    taken = snapshot.take(model)
    with torch.no_grad():
        for buffer in taken[0]:
            buffer.add_(1.5 if buffer.is_floating_point() else 2)
    BufferSnapshot.restore(taken)
    assert int(model[1].num_batches_tracked) == 0
    assert torch.equal(model[1].running_mean, torch.ones(3)) and torch.equal(model[0].later, torch.zeros(2))
    assert torch.equal(model[2].shared, torch.ones(3))  # BatchNorm's running_var starts at ones
    other = torch.nn.Sequential(torch.nn.BatchNorm1d(2))  # another model: listed afresh
    assert [tuple(b.shape) for b in snapshot.changing_buffers(other)] == [(2,), (2,), ()]
    # Modules are listed once until relist_modules(): one added in between is found after it.
    assert same(snapshot.changing_buffers(model))
    model.append(torch.nn.BatchNorm1d(4))
    assert len(snapshot.changing_buffers(model)) == 7
    snapshot.relist_modules()
    assert same(snapshot.changing_buffers(model)) and len(expected()) == 10


def test_a_snapshot_reuses_its_copies_and_renews_them_when_the_buffers_change():
    norm = torch.nn.BatchNorm1d(3)
    snapshot = BufferSnapshot()
    buffers, first = snapshot.take(norm)
    norm.running_mean.fill_(2.0)
    buffers, second = snapshot.take(norm)
    assert all(a is b for a, b in zip(first, second))  # copied into the same tensors
    assert torch.equal(second[0], torch.full((3,), 2.0))  # with the values at the second take
    norm.running_mean = torch.zeros(5)  # another shape: new copies
    buffers, third = snapshot.take(norm)
    assert third[0] is not second[0] and third[0].shape == (5,) and third[0] is not norm.running_mean
    norm.running_mean.fill_(7.0)
    BufferSnapshot.restore((buffers, third))
    assert torch.equal(norm.running_mean, torch.zeros(5))
    assert BufferSnapshot().take(torch.nn.Linear(2, 2)) == ([], [])  # nothing to copy


def test_train_lists_the_modules_again(tmp_path):
    """A module added between two train() calls is snapshotted by the second."""
    trainer = make_trainer(str(tmp_path), steps=1)
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(3))
    trainer._buffer_snapshot.changing_buffers(model)
    model.append(torch.nn.BatchNorm1d(4))
    begin = next(cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "_TrainBegin")
    trainer.state.max_steps = 1  # as train() sets it before the callback (0 steps would be refused)
    begin.on_train_begin(trainer.args, trainer.state, trainer.control)
    assert [tuple(b.shape) for b in trainer._buffer_snapshot.changing_buffers(model)] == [(3,), (3,), (), (4,), (4,), ()]

"""Resuming a search checks that the run continues the same search, with steps left to run."""
import logging
import re

import pytest
import torch

from tests.trainer.toy_search_problem import make_trainer
from trainer.reinforce_config import SEARCH_SETTINGS
from trainer.reinforce_trainer import SEARCH_STATE_NAME

SAVE_AT_10 = dict(save_strategy="steps", save_steps=10)

# A valid value other than make_trainer's for every search setting.
OTHER_VALUES = dict(cost_target=2.5, cost_type="compute", cost_function="one_sided_tunas_abs", cost_beta=3.0,
                    rl_learning_rate=0.01, delay_steps=7, precision_warmup=False, max_entropy_beta=0.2,
                    entropy_schedule="cosine", baseline_decay=0.5, advantage="global", reward_metric="accuracy",
                    reward_source="heldout", policy_temperature=2.0, policy_seed=9)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """checkpoint-10 of a 20-step search, and the uninterrupted run's trainer."""
    root = tmp_path_factory.mktemp("search")
    full = make_trainer(str(root / "full"), steps=20, delay_steps=5, training_overrides=SAVE_AT_10)
    full.train()
    return root / "full" / "checkpoint-10", full


def test_every_search_setting_is_checked(tmp_path, checkpoint):
    assert set(OTHER_VALUES) == set(SEARCH_SETTINGS)
    state = torch.load(checkpoint[0] / SEARCH_STATE_NAME, weights_only=False)
    base = make_trainer(str(tmp_path), steps=20, delay_steps=5)
    base.check_search_state(state)  # the same settings pass
    saved = base.reinforce_config.search_settings()
    assert saved == state["settings"]
    for name, value in OTHER_VALUES.items():
        # The checkpoint's search has no entropy penalty, so its schedule would not be compared
        # (test_settings_the_search_does_not_read_may_change): both searches get one here.
        read = dict(max_entropy_beta=0.2) if name == "entropy_schedule" else {}
        trainer = make_trainer(str(tmp_path), steps=20, **{"delay_steps": 5, **read, name: value})
        current = trainer.reinforce_config.search_settings()[name]
        assert current != saved[name], name
        message = (f"the checkpoint's search settings differ from this run's (checkpoint -> this run): "
                   f"{name} {saved[name]!r} -> {current!r}; resume with the checkpoint's settings, or start a "
                   "new run to search with these")
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            trainer.check_search_state({**state, "settings": {**state["settings"], **read}})


def test_settings_that_only_read_out_the_answer_may_change(tmp_path, checkpoint):
    trainer = make_trainer(str(tmp_path), steps=20, delay_steps=5, final_selection="argmax", target_tolerance=0.2)
    trainer.check_search_state(torch.load(checkpoint[0] / SEARCH_STATE_NAME, weights_only=False))


def test_resume_with_other_settings_fails_before_loading_anything(tmp_path, checkpoint):
    trainer = make_trainer(str(tmp_path), steps=20, delay_steps=5, cost_function="one_sided_tunas_abs",
                           cost_beta=2.0, policy_seed=7)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    message = ("the checkpoint's search settings differ from this run's (checkpoint -> this run): cost_function "
               "'tunas_abs' -> 'one_sided_tunas_abs', cost_beta 1.0 -> 2.0, policy_seed 0 -> 7; resume with the "
               "checkpoint's settings, or start a new run to search with these")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        trainer.train(resume_from_checkpoint=str(checkpoint[0]))
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    assert torch.equal(trainer.policy.logits, torch.zeros_like(trainer.policy.logits))


def test_a_checkpoint_without_settings_still_resumes_exactly(tmp_path, checkpoint, caplog):
    old = tmp_path / "old-checkpoint"
    old.mkdir()
    for path in checkpoint[0].iterdir():
        if path.is_file():
            (old / path.name).write_bytes(path.read_bytes())
    state = torch.load(old / SEARCH_STATE_NAME, weights_only=False)
    del state["settings"]  # as written before the settings were stored
    torch.save(state, old / SEARCH_STATE_NAME)
    resumed = make_trainer(str(tmp_path / "resumed"), steps=20, delay_steps=5)
    with caplog.at_level(logging.WARNING, logger="trainer.reinforce_trainer"):
        resumed.train(resume_from_checkpoint=str(old))
    assert [r.getMessage() for r in caplog.records if r.name == "trainer.reinforce_trainer"] == [
        "the checkpoint does not record its search settings (written by an older version); they are assumed to "
        "equal this run's"]
    full = checkpoint[1]
    assert torch.equal(full.policy.logits, resumed.policy.logits)
    assert all(torch.equal(a, b) for a, b in zip(full.model.parameters(), resumed.model.parameters()))


@pytest.mark.parametrize("steps", [5, 10])
def test_resume_without_steps_left_fails(tmp_path, checkpoint, steps):
    trainer = make_trainer(str(tmp_path), steps=steps, delay_steps=5)
    message = (f"this run's max_steps ({steps}, TrainingArguments.max_steps or from num_train_epochs) is not above "
               "the checkpoint's step 10: nothing is left to search; resume with more steps than 10, or start a new "
               "run")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        trainer.train(resume_from_checkpoint=str(checkpoint[0]))
    assert trainer.state.global_step == 10  # no step was trained


def test_resume_with_one_step_left_trains_it(tmp_path, checkpoint):
    trainer = make_trainer(str(tmp_path), steps=11, delay_steps=5)
    trainer.train(resume_from_checkpoint=str(checkpoint[0]))
    assert trainer.state.global_step == 11


@pytest.mark.parametrize("overrides, differing", [
    (dict(search_space="int4,int8"), "options ['int2', 'int4', 'int8'] -> ['int4', 'int8']"),
    (dict(granularity="block"), "decisions only in the checkpoint ['fc_in', 'branch_in', 'branch_out', 'head'], only "
                                "in this run ['main', 'branch']"),
    (dict(granularity="block", search_space="int2,int8"),
     "options ['int2', 'int4', 'int8'] -> ['int2', 'int8']; decisions only in the checkpoint ['fc_in', 'branch_in', "
     "'branch_out', 'head'], only in this run ['main', 'branch']"),
])
def test_another_search_space_is_named(tmp_path, checkpoint, overrides, differing):
    # The message said only that the space differed, not how.
    trainer = make_trainer(str(tmp_path), steps=20, delay_steps=5, **overrides)
    message = (f"the checkpoint's search space differs from this run's (checkpoint -> this run): {differing}; resume "
               "with the checkpoint's search space (its formats, granularity and quantized layers), or start a new run")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        trainer.check_search_state(torch.load(checkpoint[0] / SEARCH_STATE_NAME, weights_only=False))
    state = dict(torch.load(checkpoint[0] / SEARCH_STATE_NAME, weights_only=False))
    state["decisions"] = state["decisions"][::-1]
    with pytest.raises(ValueError, match=r"\(checkpoint -> this run\): decisions in another order; resume"):
        make_trainer(str(tmp_path), steps=20, delay_steps=5).check_search_state(state)



@pytest.mark.parametrize("unread", [
    dict(delay_steps=0, precision_warmup=False),  # no delay: nothing to warm up
    dict(max_entropy_beta=0.0, entropy_schedule="cosine"),  # no entropy penalty to shape
])
def test_settings_the_search_does_not_read_may_change(tmp_path, unread):
    """A setting neither the checkpoint's search nor this one reads is not compared (the CLI groups
    such runs as one setting, eval/run_compare.py); test_every_search_setting_is_checked shows the
    same change refused where the search reads it."""
    (setting, value), = [(name, v) for name, v in unread.items() if name not in ("delay_steps", "max_entropy_beta")]
    writer = make_trainer(str(tmp_path / "writer"), steps=4, **{k: v for k, v in unread.items() if k != setting})
    resumed = make_trainer(str(tmp_path), steps=4, **unread)
    saved, current = writer.reinforce_config.search_settings(), resumed.reinforce_config.search_settings()
    assert saved[setting] != current[setting] and {k: v for k, v in saved.items() if k != setting} == \
        {k: v for k, v in current.items() if k != setting}
    state = {"decisions": writer.search_space.decision_names, "options": writer.search_space.option_names,
             "settings": saved}
    assert resumed.check_search_state(state) is None


class _RunsCodeWhenUnpickled:
    """What a tampered checkpoint could hold: unpickling it calls marker.touch()."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def test_a_search_state_holding_code_is_refused_without_running_it(tmp_path):
    from trainer.search_state import load_search_state, save_search_state

    marker = tmp_path / "ran"
    save_search_state(str(tmp_path), {"settings": {}, "payload": _RunsCodeWhenUnpickled(marker)})
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / SEARCH_STATE_NAME))} holds more than tensors "
                                         r"and plain values, so it was not written by a FLIQS search \(Unsupported "
                                         r"global: GLOBAL [^()]+\); resume from a checkpoint a search run wrote, or "
                                         r"start a new run$"):
        load_search_state(str(tmp_path))
    assert not marker.exists()
    # What a search writes loads whole with the weights-only unpickler (the resume tests use it).
    state = {"settings": {"cost_type": "memory", "worst_reward": None}, "policy": {"logits": torch.zeros(2, 3)},
             "policy_optimizer": {"state": {}, "param_groups": [{"betas": (0.0, 0.999), "params": [0]}]},
             "sample_generator": torch.Generator().get_state(), "decisions": ["a"], "worst_reward": -1.5,
             "baseline": {"value": torch.tensor(0.5)}, "non_finite_steps": 0, "options": ["int4", "int8"]}
    save_search_state(str(tmp_path), state)
    loaded = load_search_state(str(tmp_path))
    assert loaded.keys() == state.keys() and loaded["policy_optimizer"] == state["policy_optimizer"]
    assert torch.equal(loaded["sample_generator"], state["sample_generator"])


def test_a_damaged_search_state_is_named(tmp_path):
    """Cut short, empty or not a torch file: one error naming the file, not torch's advice to load
    it with weights_only=False."""
    from trainer.search_state import load_search_state, save_search_state

    save_search_state(str(tmp_path), {"policy": {"logits": torch.zeros(64, 8)}})
    path = tmp_path / SEARCH_STATE_NAME
    whole = path.read_bytes()
    for content, reason in ((whole[:len(whole) // 2], r"RuntimeError: PytorchStreamReader failed .*"),
                            (b"", "EOFError"), (b"not a checkpoint", r"Unsupported operand \d+")):
        path.write_bytes(content)
        with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} cannot be read as a search state \({reason}\): "
                                             r"it is cut short or damaged; resume from another checkpoint of the run, "
                                             r"or start a new run$") as error:
            load_search_state(str(tmp_path))
        assert "weights_only" not in str(error.value)


@pytest.mark.parametrize("content, held", [
    ({"policy": {}}, "a dict without policy_optimizer, baseline, sample_generator, worst_reward, non_finite_steps, "
                     "decisions, options"),
    ([1, 2], "a list"),
    (torch.zeros(3), "a Tensor"),
])
def test_a_search_state_of_another_shape_is_named(tmp_path, content, held):
    """A file torch reads but a search did not write: one error naming it (a KeyError or a
    TypeError at the first missing key before)."""
    from trainer.search_state import load_search_state, save_search_state

    save_search_state(str(tmp_path), content)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / SEARCH_STATE_NAME))} holds {held}, not the "
                                         r"state a FLIQS search writes; resume from a checkpoint a search run wrote, "
                                         r"or start a new run$"):
        load_search_state(str(tmp_path))


def test_the_keys_every_search_state_holds_are_what_the_trainer_writes(tmp_path):
    from trainer.search_state import SEARCH_STATE_KEYS

    trainer = make_trainer(str(tmp_path))
    assert set(SEARCH_STATE_KEYS) | {"settings", "heldout_position"} == set(trainer.search_state_dict())

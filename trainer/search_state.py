"""The search's state in a checkpoint, and the checks before a run resumes from it.

Next to the Trainer's own files, every checkpoint of a search run holds `SEARCH_STATE_NAME`: the
policy, its optimizer, the baseline, the sampling generator, the worst reward, the count of
dropped steps and the held-out stream's position, so that a resumed search continues exactly
where the uninterrupted one would be. It also records the search space and the settings that
shape the search (`ReinforceConfig.search_settings`): resuming with others would finish as a mix
of two searches, so that is refused, by name, before any weight is loaded.
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Any

import torch

from trainer.reinforce_config import SEARCH_STATE_NAME, ReinforceConfig, unread_search_settings
from trainer.search_space import SearchSpace

# What every search state holds (ReinforceTrainer.search_state_dict; "settings" and
# "heldout_position" are newer and optional): a file without them was not written by a search.
SEARCH_STATE_KEYS = ("policy", "policy_optimizer", "baseline", "sample_generator", "worst_reward", "non_finite_steps",
                     "decisions", "options")

# What check_search_state returns for a checkpoint written before the settings were recorded.
UNRECORDED_SETTINGS_WARNING = ("the checkpoint does not record its search settings (written by an older version); "
                               "they are assumed to equal this run's")


def check_search_state(state: dict[str, Any], space: SearchSpace, config: ReinforceConfig) -> str | None:
    """Raise ValueError unless `state` was written by a search with this space and settings; a
    warning to log (the caller's) when the state records no settings to compare, else None."""
    decisions, options = space.decision_names, space.option_names
    if (state["decisions"], state["options"]) != (decisions, options):
        differing = []
        if state["options"] != options:
            differing.append(f"options {state['options']} -> {options}")
        if state["decisions"] != decisions:
            only_saved = [d for d in state["decisions"] if d not in decisions]
            only_current = [d for d in decisions if d not in state["decisions"]]
            differing.append(f"decisions only in the checkpoint {only_saved[:5]}, only in this run "
                             f"{only_current[:5]}" if only_saved or only_current else "decisions in another order")
        raise ValueError(f"the checkpoint's search space differs from this run's (checkpoint -> this run): "
                         f"{'; '.join(differing)}; resume with the checkpoint's search space (its formats, "
                         "granularity and quantized layers), or start a new run")
    saved = state.get("settings")
    if saved is None:  # written before the settings were stored: nothing to compare with
        return UNRECORDED_SETTINGS_WARNING
    current = config.search_settings()
    # Only settings both know: a setting added later cannot be checked against an older checkpoint.
    # Nor one that neither search reads (e.g. precision_warmup without a delay): it changes nothing.
    unread = unread_search_settings(saved) & unread_search_settings(current)
    differing = [f"{name} {saved[name]!r} -> {current[name]!r}" for name in current
                 if name in saved and name not in unread and saved[name] != current[name]]
    if differing:
        raise ValueError(f"the checkpoint's search settings differ from this run's (checkpoint -> this run): "
                         f"{', '.join(differing)}; resume with the checkpoint's settings, or start a new run "
                         "to search with these")
    return None


def save_search_state(checkpoint_dir: str, state: dict[str, Any]) -> None:
    """Write `state` into `checkpoint_dir` whole or not at all: a kill mid-save leaves no half file."""
    path = os.path.join(checkpoint_dir, SEARCH_STATE_NAME)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_search_state(checkpoint_dir: str) -> dict[str, Any]:
    """The search state of `checkpoint_dir`; FileNotFoundError for a checkpoint of another kind of run."""
    path = os.path.join(checkpoint_dir, SEARCH_STATE_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{checkpoint_dir} has no {SEARCH_STATE_NAME}: it was not written by a "
                                "search run, so the search cannot resume from it")
    return read_search_state_file(path)


def read_search_state_file(path: str | os.PathLike) -> dict[str, Any]:
    """The search state in `path`, read with torch's weights-only unpickler: what
    save_search_state writes is tensors and plain values, and resuming from a checkpoint
    someone else wrote must not run code hidden in it. ValueError for a file holding more, or
    one cut short or damaged."""
    try:
        state = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's message leads with advice to load with weights_only=False: quote only its reason.
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", str(error), re.S)
        reason = " ".join(found.group(1).split()) if found else _first_line(error)
        if reason.startswith("Unsupported global"):
            raise ValueError(f"{path} holds more than tensors and plain values, so it was not written by a FLIQS "
                             f"search ({reason}); resume from a checkpoint a search run wrote, or start a new run"
                             ) from None
        error_text = reason
    except (EOFError, RuntimeError, KeyError, ValueError) as error:  # what torch.load raises for a damaged file
        error_text = _first_line(error)
    else:
        if not isinstance(state, dict):
            what = f"a {type(state).__name__}"
        else:
            missing = [key for key in SEARCH_STATE_KEYS if key not in state]
            if not missing:
                return state
            what = f"a dict without {', '.join(missing)}"
        raise ValueError(f"{path} holds {what}, not the state a FLIQS search writes; resume from a checkpoint a "
                         "search run wrote, or start a new run")
    raise ValueError(f"{path} cannot be read as a search state ({error_text}): it is cut short or damaged; resume "
                     "from another checkpoint of the run, or start a new run")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__

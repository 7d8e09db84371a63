"""The console prints a search's logs without the per-decision probabilities; the log history
and the other callbacks keep them."""
import ast

import pytest
from transformers import PrinterCallback, ProgressCallback, TrainerCallback

from tests.trainer.toy_search_problem import make_trainer


class Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


@pytest.mark.parametrize("disable_tqdm", [True, False])
def test_the_console_line_leaves_out_the_probabilities(tmp_path, capsys, disable_tqdm):
    trainer = make_trainer(str(tmp_path), steps=4, training_overrides={"logging_steps": 2, "disable_tqdm": disable_tqdm})
    consoles = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, (PrinterCallback, ProgressCallback))]
    assert [type(cb).__name__ for cb in consoles] == ["QuietPrinterCallback" if disable_tqdm else "QuietProgressCallback"]
    recorder = Recorder()
    trainer.add_callback(recorder)
    capsys.readouterr()
    trainer.train()
    printed = [ast.literal_eval(line[line.index("{"):]) for line in capsys.readouterr().out.splitlines()
               if "'loss'" in line or "'train_loss'" in line]
    decisions = trainer.search_space.decision_names
    probabilities = {f"search/p/{d}/{name}" for d in decisions for name in trainer.search_space.option_names}
    assert len(printed) == 3 and len(recorder.logs) == 3  # steps 2 and 4, and the summary at the end
    for line, logged, history in zip(printed[:2], recorder.logs, trainer.state.log_history):
        assert probabilities <= set(logged) and probabilities <= set(history)  # every other reader gets them
        assert set(line) == set(logged) - probabilities  # the console all but them
        assert {"loss", "search/reward", "search/cost_ratio"} <= set(line)
    assert "train_loss" in printed[2] and set(printed[2]) == set(recorder.logs[2]) - {"total_flos"}

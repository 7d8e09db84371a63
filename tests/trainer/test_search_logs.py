"""The search's metrics as the Trainer's logs carry them: means per window, counts summed."""
from trainer.search_logs import SearchMetrics, is_training_log


def test_a_window_logs_means_and_summed_counts_then_starts_empty():
    metrics = SearchMetrics()
    assert not metrics
    for reward, dropped in ((-1.0, 0.0), (-2.0, 1.0), (-4.5, 1.0)):
        metrics.add("reward", reward)
        metrics.add("non_finite_steps", dropped)
    metrics.add("policy_loss", 0.25)  # recorded on one step of the window only: its own mean
    assert metrics.drain() == {"search/reward": -7.5 / 3, "search/non_finite_steps": 2.0, "search/policy_loss": 0.25}
    assert not metrics and metrics.drain() == {}


def test_only_training_logs_and_the_summary_take_the_metrics():
    assert is_training_log({"loss": 1.0, "learning_rate": 0.1})
    assert is_training_log({"train_loss": 1.0, "train_runtime": 2.0})
    assert not is_training_log({"eval_loss": 1.0, "epoch": 1.0})

"""Compare the two REINFORCE estimators on the synthetic search problem with a known answer.

    python examples/compare_advantage.py [--seeds 0 1 2] [--steps 300]

For each estimator (--advantage global / per_decision) and seed, and for two cost targets
(the known answer's memory, and one far below every configuration), it prints the chosen
formats, each decision's final probability, and the cost ratio. The problem
(tests/trainer/toy_search_problem.py): a sensitive input layer whose inputs need 8 bits, a large
insensitive branch, and a small head.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from transformers.trainer_callback import PrinterCallback  # noqa: E402

from tests.trainer.toy_search_problem import DELAY_STEPS as TOY_DELAY_STEPS  # noqa: E402
from tests.trainer.toy_search_problem import make_trainer  # noqa: E402
from eval.cli_flags import OnceArgumentParser  # noqa: E402


def main() -> None:
    parser = OnceArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="policy and weight seeds")
    parser.add_argument("--steps", type=int, default=300,
                        help=f"training steps (> {TOY_DELAY_STEPS}, the toy problem's delay; default 300)")
    args = parser.parse_args()
    if args.steps <= TOY_DELAY_STEPS:
        parser.error(f"--steps must be > {TOY_DELAY_STEPS} (the policy learns only after the toy problem's "
                     f"{TOY_DELAY_STEPS} delay steps), got {args.steps}")
    torch.set_num_threads(1)
    print(f"{'advantage':<13} {'target':<8} {'seed':>4}  {'ratio':>8}  min p   formats (fc_in, branch_in, branch_out, head)")
    for advantage in ("global", "per_decision"):
        for target_name in ("answer", "far_low"):
            for seed in args.seeds:
                with tempfile.TemporaryDirectory() as tmp:
                    # The plain argmax: this compares what the policies learned, not the final selection.
                    trainer = make_trainer(tmp, seed=seed, steps=args.steps, advantage=advantage,
                                           final_selection="argmax")
                    trainer.remove_callback(PrinterCallback)  # its log lines would split the table
                    if target_name == "far_low":
                        trainer.reinforce_config.cost_target = trainer.cost_table.min_cost() / 1000
                    trainer.train()
                    decisions = trainer.final_decisions()
                    ratio = trainer.final_cost() / trainer.reinforce_config.cost_target
                    min_p = min(max(d.probabilities.values()) for d in decisions.values())
                    chosen = ", ".join(d.format for d in decisions.values())
                    print(f"{advantage:<13} {target_name:<8} {seed:>4}  {ratio:>8.3f}  {min_p:.3f}  {chosen}")


if __name__ == "__main__":
    import transformers

    transformers.logging.set_verbosity_error()
    main()

"""Run by test_ddp_ranks_stay_in_sync under torch.distributed.run with 2 CPU (gloo) processes."""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.trainer.toy_search_problem import make_trainer  # noqa: E402

torch.set_num_threads(1)
out_dir, source, accumulation = sys.argv[1], sys.argv[2], int(sys.argv[3])
trainer = make_trainer(os.path.join(out_dir, "run"), steps=60, reward_source=source, delay_steps=20,
                       training_overrides=dict(ddp_backend="gloo", per_device_train_batch_size=32,
                                               gradient_accumulation_steps=accumulation))
history = []
apply = trainer.apply_option_indices
trainer.apply_option_indices = lambda indices: (history.append(indices.tolist()), apply(indices))[1]
trainer.train()
# train() ends by putting the answer on the layers: one call after the steps' samples.
answer = history.pop()
assert answer == trainer.final_indices().tolist(), (answer, trainer.final_indices())
rank = trainer.args.process_index
with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
    json.dump({"world_size": trainer.args.world_size, "history": history, "answer": answer,
               "logits": trainer.policy.logits.detach().tolist(), "baseline": trainer.baseline.value}, f)
# Without an explicit teardown the gloo process group can keep the interpreter from exiting.
torch.distributed.barrier()
torch.distributed.destroy_process_group()
# Results are on disk; skip interpreter finalization, where gloo's native threads can race the
# teardown of the objects they reference.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)

import socket

import pytest

from eval.launch_command import REPO_ROOT, format_command, free_port, launcher_env, run_command
from eval.launch_devices import CPU, GPU, Slot


def test_one_device_run_is_eval_run():
    assert run_command(["--task", "digits"], 1, python="py") == ["py", "-u", "-m", "eval.eval_run", "--task", "digits"]


def test_multi_gpu_run_goes_through_torch_distributed_run():
    assert run_command(["--seed", "1"], 2, 29533, python="py") == [
        "py", "-u", "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
        "-m", "eval.eval_run", "--seed", "1"]
    assert run_command(["--seed", "1"], 3, 1234, python="py", run_entry=["fake.py"])[-3:] == [
        "fake.py", "--seed", "1"]
    with pytest.raises(ValueError, match=r"needs a master_port"):
        run_command([], 2, None)


def test_launcher_env():
    gpu = Slot(GPU, ("3", "5"), 0)
    assert launcher_env(gpu, 4, cwd=REPO_ROOT) == {"CUDA_VISIBLE_DEVICES": "3,5"}
    assert launcher_env(Slot(CPU, (), 1), 4, cwd=REPO_ROOT) == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "4"}


def test_launcher_env_outside_the_repository_points_pythonpath_at_it(tmp_path, monkeypatch):
    env = launcher_env(Slot(GPU, ("0",), 0), 1, cwd=tmp_path, environ={"PYTHONPATH": "/x"})
    assert env == {"CUDA_VISIBLE_DEVICES": "0", "PYTHONPATH": f"{REPO_ROOT}:/x"}
    # The repository once, first; the caller's other entries, an empty one (the working directory) included.
    for caller, expected in ((f"{REPO_ROOT}", f"{REPO_ROOT}"), (f"/x:{REPO_ROOT}/:/y", f"{REPO_ROOT}:/x:/y"),
                             ("/x::/y", f"{REPO_ROOT}:/x::/y")):
        assert launcher_env(Slot(GPU, ("0",), 0), 1, cwd=tmp_path, environ={"PYTHONPATH": caller})["PYTHONPATH"] == \
            expected
    # An installed project (no checkout: REPO_ROOT is site-packages) is importable without it.
    import eval.launch_command as launch_command

    monkeypatch.setattr(launch_command, "IS_CHECKOUT", False)
    assert launcher_env(Slot(GPU, ("0",), 0), 1, cwd=tmp_path, environ={"PYTHONPATH": "/x"}) == \
        {"CUDA_VISIBLE_DEVICES": "0"}


def test_format_command_quotes_for_the_shell():
    line = format_command(["py", "--config_overrides", "depths=[1,1]", "--exp_name", "a b"],
                          {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
    assert line == "CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 py --config_overrides 'depths=[1,1]' --exp_name 'a b'"


def test_free_port_can_be_bound_and_skips_excluded():
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    assert free_port({port}) != port

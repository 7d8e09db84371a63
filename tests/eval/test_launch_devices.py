import pytest
import torch

from eval.launch_devices import (CPU, GPU, DevicePool, Slot, choose_resources, detect_gpus, parse_gpu_list,
                                 predict_slots, select_gpus, threads_per_worker)
from eval.launch_flags import LaunchError

FOUR = ["0", "1", "2", "3"]


def test_detect_gpus_maps_through_the_launchers_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert detect_gpus({}) == ["0", "1"]
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": "5, 2"}) == ["5", "2"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert detect_gpus({}) == []


def test_select_gpus():
    assert select_gpus(FOUR) == FOUR
    assert select_gpus(FOUR, num_gpus=2) == ["0", "1"]
    assert select_gpus(FOUR, gpus=parse_gpu_list("3,1")) == ["3", "1"]
    assert select_gpus(["5", "2"], gpus=[1]) == ["2"]  # indices of the visible GPUs


@pytest.mark.parametrize("kwargs, message", [
    ({"num_gpus": 5}, r"^--num_gpus 5 asks for more GPUs than there are \(visible GPUs: 0, 1, 2, 3\); give at most "
                      r"--num_gpus 4$"),
    ({"num_gpus": 0}, r"--num_gpus must be >= 1, got 0"),
    ({"gpus": [0, 7]}, r"^--gpus names GPU 7, which does not exist \(visible GPUs: 0, 1, 2, 3\); use indices below "
                       r"4$"),
    ({"gpus": [1], "num_gpus": 1}, r"--num_gpus and --gpus both pick GPUs; give one of them"),
])
def test_select_gpus_errors(kwargs, message):
    with pytest.raises(LaunchError, match=message):
        select_gpus(FOUR, **kwargs)


def test_select_gpus_names_the_physical_ids_behind_indices():
    with pytest.raises(LaunchError, match=r"names GPU 2, which does not exist \(visible GPUs: 0 \(5\), 1 \(2\)\)"):
        select_gpus(["5", "2"], gpus=[2])
    with pytest.raises(LaunchError, match=r"^--gpus names GPU 0, 1, which does not exist \(no GPU is visible\); drop "
                       r"--gpus to run on CPU workers \(--workers N runs N at a time\)$"):
        select_gpus([], gpus=[0, 1])
    with pytest.raises(LaunchError, match=r"^--num_gpus 1 asks for more GPUs than there are \(no GPU is visible\); "
                       r"drop --num_gpus to run on CPU workers \(--workers N runs N at a time\)$"):
        select_gpus([], num_gpus=1)


@pytest.mark.parametrize("text", ["a", "0,,1", "-1", "1,1"])
def test_parse_gpu_list_errors(text):
    with pytest.raises(LaunchError, match=r"--gpus '.*' must "):
        parse_gpu_list(text)


def test_pool_hands_out_lowest_free_devices_and_never_twice():
    pool = DevicePool(FOUR, gpus_per_run=2)
    first, second = pool.acquire(GPU), pool.acquire(GPU)
    assert (first.devices, second.devices) == (("0", "1"), ("2", "3"))
    assert pool.acquire(GPU) is None
    pool.release(second)
    assert pool.acquire(GPU).devices == ("2", "3")
    pool.release(second)
    assert pool.free_gpus == ("2", "3")
    with pytest.raises(ValueError, match=r"is not held; a slot is released once"):
        pool.release(second)


def test_pool_cpu_workers():
    pool = DevicePool([], cpu_workers=2)
    a, b = pool.acquire(CPU), pool.acquire(CPU)
    assert (a, b) == (Slot(CPU, (), 0), Slot(CPU, (), 1))
    assert pool.acquire(CPU) is None
    pool.release(a)
    assert pool.acquire(CPU) == Slot(CPU, (), 0)
    assert a.cuda_visible_devices == "" and a.describe() == "cpu worker 0"


@pytest.mark.parametrize("gpus, k, workers, message", [
    (["0", "1"], 3, 1, r"--gpus_per_run 3 is more than the 2 GPU\(s\) available \(0, 1\)"),
    (["0"], 0, 1, r"--gpus_per_run must be >= 1, got 0"),
    ([], 1, 0, r"--workers must be >= 1, got 0"),
    (["0", "0"], 1, 1, r"names a GPU twice"),
])
def test_pool_errors(gpus, k, workers, message):
    with pytest.raises(LaunchError, match=message):
        DevicePool(gpus, k, workers)


def test_predict_slots_assumes_equal_length_runs():
    slots = predict_slots([GPU] * 5, DevicePool(["0", "1", "2"], gpus_per_run=1))
    assert [s.cuda_visible_devices for s in slots] == ["0", "1", "2", "0", "1"]
    slots = predict_slots([GPU] * 3, DevicePool(FOUR, gpus_per_run=2))
    assert [s.cuda_visible_devices for s in slots] == ["0,1", "2,3", "0,1"]
    slots = predict_slots([CPU, GPU, CPU, CPU], DevicePool(["0"], cpu_workers=2))
    assert [s.describe() for s in slots] == ["cpu worker 0", "gpu 0", "cpu worker 1", "cpu worker 0"]


def test_threads_per_worker():
    assert threads_per_worker(2, 2, {}) == 1
    assert threads_per_worker(1, 2, {}) == 2
    assert threads_per_worker(3, 2, {}) == 1  # at least 1
    assert threads_per_worker(2, 16, {}) == 8
    assert threads_per_worker(2, 16, {"OMP_NUM_THREADS": "3"}) == 3  # the caller's limit wins
    assert threads_per_worker(2, 16, {"OMP_NUM_THREADS": "x"}) == 8


def test_choose_resources_puts_cpu_runs_on_workers_and_the_rest_on_gpus():
    resources = choose_resources(["cpu", None, "cuda"], FOUR, gpus="1,2", workers=2, cores=8, environ={})
    assert resources.kinds == (CPU, GPU, GPU)
    assert resources.pool.gpus == ("1", "2") and resources.pool.cpu_workers == 2
    assert resources.omp_threads == 4
    resources = choose_resources([None, None], [], cores=2, environ={})
    assert resources.kinds == (CPU, CPU) and resources.pool.gpus == () and resources.omp_threads == 2
    resources = choose_resources([None], FOUR, gpus="", cores=2, environ={})  # an empty list: CPU only
    assert resources.kinds == (CPU,) and resources.pool.gpus == ()


@pytest.mark.parametrize("devices, visible, kwargs, message", [
    (["cuda"], [], {}, r"experiment 1 asks for --device cuda but no GPU is visible; use --device cpu"),
    ([None], [], {"gpus_per_run": 2}, r"^--gpus_per_run 2 needs GPU runs, but no GPU is visible; drop --gpus_per_run "
                                      r"to run on CPU workers$"),
    (["cpu"], [], {"gpus": "0", "gpus_flag": "--cuda_visible_devices"},
     r"^--cuda_visible_devices names GPU 0, which does not exist \(no GPU is visible\); drop --cuda_visible_devices "
     r"to run on CPU workers \(--workers N runs N at a time\)$"),
    (["cpu"], FOUR, {"gpus_per_run": 2}, r"--gpus_per_run 2 needs GPU runs, but every run has --device cpu"),
    ([None], FOUR, {"workers": 2}, r"--workers sets how many CPU runs go in parallel, but every run uses a GPU "
                                   r"\(0, 1, 2, 3\); add --device cpu"),
    (["cpu"], FOUR, {"num_gpus": 2}, r"--num_gpus/--gpus pick GPUs but every run has --device cpu"),
    ([None], FOUR, {"gpus": "0,1", "gpus_per_run": 3}, r"--gpus_per_run 3 is more than the 2 GPU\(s\)"),
    ([None], [], {"gpus_per_run": 0}, r"^--gpus_per_run must be >= 1, got 0$"),  # wrong whatever the machine
])
def test_choose_resources_errors(devices, visible, kwargs, message):
    with pytest.raises(LaunchError, match=message):
        choose_resources(devices, visible, cores=2, environ={}, **kwargs)

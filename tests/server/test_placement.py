"""Which GPUs each served model uses: explicit devices lists, automatic placement that says what it
chose, and the one-line refusals (overlaps, too few GPUs). The GPU count is set (this machine has none):
placement is arithmetic on it, and the engines that would use the GPUs are not started."""
import logging

import pytest
import torch

from corral.config import ConfigError
from corral.server.config import build_config
from corral.server.engine_process import visible_devices


@pytest.fixture
def gpus(monkeypatch):
    def visible(count: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    return visible


def config_file(tmp_path, models: str):
    path = tmp_path / "corral.toml"
    path.write_text(models)
    return path


def test_models_on_one_gpu_each_share_the_default_gpu_as_before(gpus, tmp_path):
    gpus(4)
    config = build_config(["a-model", "b-model"])
    assert [s.devices for s in config.models] == [None, None]
    assert [s.gpu_memory_utilization for s in config.models] == [0.45, 0.45]


def test_a_two_gpu_model_and_a_one_gpu_model_are_placed_apart_and_the_placement_is_logged(gpus, tmp_path, caplog):
    gpus(3)
    path = config_file(tmp_path, '[models.a]\nmodel = "a-model"\ntensor_parallel_size = 2\n'
                                 '[models.b]\nmodel = "b-model"\n')
    with caplog.at_level(logging.INFO, logger="corral.server.placement"):
        config = build_config(file=path)
    assert [s.devices for s in config.models] == [[0, 1], [2]]
    assert [s.gpu_memory_utilization for s in config.models] == [0.9, 0.9]  # nothing shared, nothing split
    assert "a: placed on GPUs 0, 1" in caplog.text and "b: placed on GPU 2" in caplog.text


def test_explicit_devices_are_kept_and_the_others_take_the_gpus_left(gpus, tmp_path):
    gpus(4)
    path = config_file(tmp_path, '[models.a]\nmodel = "a-model"\n'
                                 '[models.b]\nmodel = "b-model"\ndevices = [0, 1]\ntensor_parallel_size = 2\n')
    assert [s.devices for s in build_config(file=path).models] == [[2], [0, 1]]


@pytest.mark.parametrize("models, message", [
    ('[models.a]\nmodel = "a"\ndevices = [0, 1]\ntensor_parallel_size = 2\n[models.b]\nmodel = "b"\ndevices = [1]\n',
     r"^GPU 1 is in the devices of both a and b; each GPU serves one model's devices$"),
    ('[models.a]\nmodel = "a"\ndevices = [0]\ntensor_parallel_size = 2\n',
     r"^a: devices \[0\] lists 1 GPU\(s\) but tensor_parallel_size is 2$"),
    ('[models.a]\nmodel = "a"\ntensor_parallel_size = 4\n',
     r"^a: tensor_parallel_size 4 needs 4 GPU\(s\) of its own; 2 are visible, 2 free$"),
    ('[models.a]\nmodel = "a"\ndevices = [0, 1]\ntensor_parallel_size = 2\n[models.b]\nmodel = "b"\n',
     r"^b: tensor_parallel_size 1 needs 1 GPU\(s\) of its own; 2 are visible, 0 free \(2 held by other models\)$"),
    ('[models.a]\nmodel = "a"\ndevices = [2]\n', r"^a: devices \[2\] name GPU 2, but 2 GPU\(s\) are visible$"),
    ('[models.a]\nmodel = "a"\ndevices = ["x"]\n', r"^devices: cannot read \['x'\]; list GPU indices"),
])
def test_bad_placements_are_refused_in_one_line_naming_the_numbers(gpus, tmp_path, models, message):
    gpus(2)
    with pytest.raises(ConfigError, match=message):
        build_config(file=config_file(tmp_path, models))


def test_cpu_models_are_not_placed(tmp_path):
    path = config_file(tmp_path, '[models.a]\nmodel = "a"\ndevice = "cpu"\ntensor_parallel_size = 2\n')
    assert build_config(file=path).models[0].devices is None


def test_an_engine_sees_its_gpus_numbered_as_the_server_sees_them():
    assert visible_devices([0, 1], None) == "0,1"
    assert visible_devices([1, 2], "4,5,6") == "5,6"  # the server itself was given GPUs 4-6

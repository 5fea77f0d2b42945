"""Which GPUs each served model's engine uses. A model lists its own (`devices = [0, 1]`), or is placed:
while every model runs on one GPU and none lists any, they all share the default GPU (memory split by
gpu_memory_utilization); once a model spans several GPUs or one lists its own, every model on CUDA
gets GPUs of its own, the next free ones in the config's order. An engine sees only its GPUs
(CUDA_VISIBLE_DEVICES), so its ranks are cuda:0..N-1 there."""
import logging

import torch

from corral.config import ConfigError

logger = logging.getLogger(__name__)


def parse_devices(value) -> list[int] | None:
    """[0, 1], "0,1" or 0 -> GPU indices."""
    if value is None:
        return None
    items = value if isinstance(value, list) else str(value).split(",") if isinstance(value, str) else [value]
    try:
        devices = [int(str(item).strip()) for item in items]
    except ValueError:
        raise ConfigError(f"devices: cannot read {value!r}; list GPU indices, e.g. [0, 1]") from None
    if not devices or min(devices) < 0 or len(set(devices)) != len(devices):
        raise ConfigError(f"devices: {value!r} must list distinct GPU indices >= 0, e.g. [0, 1]")
    return devices


def uses_cuda(spec) -> bool:
    if spec.device is None:
        return torch.cuda.is_available()
    return spec.device.startswith("cuda")


def place_models(specs: list) -> None:
    """Check each model's `devices` and fill in those of the models placed automatically (logged)."""
    taken: dict[int, str] = {}
    for spec in specs:
        if spec.devices is None:
            continue
        if len(spec.devices) != spec.tensor_parallel_size:
            raise ConfigError(f"{spec.name}: devices {spec.devices} lists {len(spec.devices)} GPU(s) but "
                              f"tensor_parallel_size is {spec.tensor_parallel_size}")
        if spec.device not in (None, "cuda"):
            raise ConfigError(f"{spec.name}: devices {spec.devices} and device {spec.device!r} disagree; "
                              f"give devices alone")
        for d in spec.devices:
            if d in taken:
                raise ConfigError(f"GPU {d} is in the devices of both {taken[d]} and {spec.name}; "
                                  f"each GPU serves one model's devices")
            taken[d] = spec.name
    on_cuda = [s for s in specs if uses_cuda(s)]
    if not on_cuda or (not taken and all(s.tensor_parallel_size == 1 for s in on_cuda)):
        return
    count = torch.cuda.device_count()
    for spec in on_cuda:
        if spec.devices is not None and max(spec.devices) >= count:
            raise ConfigError(f"{spec.name}: devices {spec.devices} name GPU {max(spec.devices)}, "
                              f"but {count} GPU(s) are visible")
    free = [d for d in range(count) if d not in taken]
    for spec in on_cuda:
        if spec.devices is not None:
            continue
        size = spec.tensor_parallel_size
        if len(free) < size:
            held = f" ({len(taken)} held by other models)" if taken else ""
            raise ConfigError(f"{spec.name}: tensor_parallel_size {size} needs {size} GPU(s) of its own; "
                              f"{count} are visible, {len(free)} free{held}")
        spec.devices, free = free[:size], free[size:]
        for d in spec.devices:
            taken[d] = spec.name
        logger.info("%s: placed on GPU%s %s", spec.name, "s" if size > 1 else "", ", ".join(map(str, spec.devices)))


def sharing_groups(specs: list) -> list[list]:
    """Models that share GPUs, whose memory shares are split among them: those without devices of their own
    together, every other model alone."""
    shared = [s for s in specs if s.devices is None]
    return ([shared] if shared else []) + [[s] for s in specs if s.devices is not None]

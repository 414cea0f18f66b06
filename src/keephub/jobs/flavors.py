"""Hardware flavors: the names clients ask for, mapped onto this machine's cores and GPUs."""

from __future__ import annotations

import os
from dataclasses import dataclass

# (name, pretty name, CPUs wanted, memory GB, GPUs)
_CPU_FLAVORS = (
    ("cpu-basic", "CPU Basic", 1, 4, 0),
    ("cpu-upgrade", "CPU Upgrade", 2, 8, 0),
    ("cpu-performance", "CPU Performance", 4, 16, 0),
    ("cpu-xl", "CPU XL", 8, 32, 0),
)
_GPU_FLAVORS = (
    ("t4-small", "GPU T4 small", 4, 15, 1),
    ("l4x1", "GPU L4 x1", 8, 30, 1),
    ("a10g-small", "GPU A10G small", 4, 15, 1),
    ("a10g-large", "GPU A10G large", 12, 46, 1),
    ("a100-large", "GPU A100 large", 12, 142, 1),
    ("h200", "GPU H200", 16, 128, 1),
    ("a10g-largex2", "GPU A10G large x2", 24, 92, 2),
)


@dataclass(frozen=True)
class Flavor:
    name: str
    pretty_name: str
    cpus: int
    memory_gb: int
    gpus: int

    def to_wire(self) -> dict:
        accelerator = None
        if self.gpus:
            accelerator = {"type": "gpu", "model": "local", "quantity": str(self.gpus), "vram": "N/A",
                           "manufacturer": "Nvidia"}
        return {"name": self.name, "prettyName": self.pretty_name, "cpu": f"{self.cpus} vCPU",
                "ram": f"{self.memory_gb} GB", "ephemeralStorage": "N/A", "accelerator": accelerator,
                "unitCostMicroUSD": 0, "unitCostUSD": 0.0, "unitLabel": "minute"}


def machine_flavors(total_cpus: int, gpu_ids: list[str]) -> dict[str, Flavor]:
    """The flavors this machine can honour, each capped at what the machine has."""
    total_cpus = total_cpus or os.cpu_count() or 1
    table = list(_CPU_FLAVORS) + [f for f in _GPU_FLAVORS if f[4] <= len(gpu_ids)]
    return {name: Flavor(name, pretty, min(cpus, total_cpus), memory, gpus)
            for name, pretty, cpus, memory, gpus in table}

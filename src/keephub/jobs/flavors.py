"""Hardware flavors: the names clients ask for, mapped onto this machine's cores and GPUs."""

from __future__ import annotations

import os
from dataclasses import dataclass

# (name, pretty name, CPUs wanted, memory GB, GPUs, disk GB)
_CPU_FLAVORS = (
    ("cpu-basic", "CPU Basic", 1, 4, 0, 50),
    ("cpu-upgrade", "CPU Upgrade", 2, 8, 0, 50),
    ("cpu-performance", "CPU Performance", 4, 16, 0, 100),
    ("cpu-xl", "CPU XL", 8, 32, 0, 200),
)
_GPU_FLAVORS = (
    ("t4-small", "GPU T4 small", 4, 15, 1, 100),
    ("l4x1", "GPU L4 x1", 8, 30, 1, 200),
    ("a10g-small", "GPU A10G small", 4, 15, 1, 100),
    ("a10g-large", "GPU A10G large", 12, 46, 1, 200),
    ("a100-large", "GPU A100 large", 12, 142, 1, 500),
    ("h200", "GPU H200", 16, 128, 1, 1000),
    ("a10g-largex2", "GPU A10G large x2", 24, 92, 2, 400),
)
# Every flavor name keephub knows, whatever this machine has (a cluster executor maps them onto partitions).
FLAVOR_NAMES = tuple(flavor[0] for flavor in _CPU_FLAVORS + _GPU_FLAVORS)
# Processes and threads a job may have at once: room for data-loader workers and BLAS pools, not for a bomb.
PROCESSES_PER_CPU = 256
MIN_PROCESSES = 1024


@dataclass(frozen=True)
class Flavor:
    name: str
    pretty_name: str
    cpus: int
    memory_gb: int
    gpus: int
    disk_gb: int

    @property
    def processes(self) -> int:
        return max(MIN_PROCESSES, PROCESSES_PER_CPU * self.cpus)

    def to_wire(self) -> dict:
        accelerator = None
        if self.gpus:
            accelerator = {"type": "gpu", "model": "local", "quantity": str(self.gpus), "vram": "N/A",
                           "manufacturer": "Nvidia"}
        return {"name": self.name, "prettyName": self.pretty_name, "cpu": f"{self.cpus} vCPU",
                "ram": f"{self.memory_gb} GB", "ephemeralStorage": f"{self.disk_gb} GB", "accelerator": accelerator,
                "unitCostMicroUSD": 0, "unitCostUSD": 0.0, "unitLabel": "minute"}


def machine_flavors(total_cpus: int, gpu_ids: list[str]) -> dict[str, Flavor]:
    """The flavors this machine can honour, each capped at what the machine has."""
    total_cpus = total_cpus or os.cpu_count() or 1
    table = list(_CPU_FLAVORS) + [f for f in _GPU_FLAVORS if f[4] <= len(gpu_ids)]
    return {name: Flavor(name, pretty, min(cpus, total_cpus), memory, gpus, disk)
            for name, pretty, cpus, memory, gpus, disk in table}


def cluster_flavors() -> dict[str, Flavor]:
    """Every flavor, as asked: a cluster executor's scheduler decides where each fits (or refuses it)."""
    return {name: Flavor(name, pretty, cpus, memory, gpus, disk)
            for name, pretty, cpus, memory, gpus, disk in (*_CPU_FLAVORS, *_GPU_FLAVORS)}

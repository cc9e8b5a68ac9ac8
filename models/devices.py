"""Device leases: every visible GPU busy at once, never two model stages on one GPU.

A model stage (LipDub, separation) leases a device for the length of its model calls and loads or
reuses the model resident on that device (`dubflow.models.residency`). A process that sees N GPUs
runs up to N model stages at once, one per GPU; the others wait for a lease. A CPU-only process
has one device, ``cpu``: its model stages run one at a time, each using every core, which on a CPU
is faster than two thrashing each other.

On a Dask cluster every GPU worker is one process that sees its one GPU (``CUDA_VISIBLE_DEVICES``),
declares ``GPU=1`` and receives GPU tasks one at a time; the lease is the same rule inside it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import torch


class DeviceLeaseTimeout(TimeoutError):
    """No device of the kind asked for came free in time."""


@dataclass(frozen=True)
class LeaseRecord:
    """What a pool's leases have done so far: the run's device-seconds, and what tests count."""

    leases: dict[str, int]  # leases granted, per device
    held_seconds: dict[str, float]  # time held, per device


class DevicePool:
    """Leases over a fixed list of devices, one holder per device at a time."""

    def __init__(self, devices: list[str]) -> None:
        if not devices:
            raise ValueError("a device pool needs at least one device")
        self.devices = list(devices)
        self._free = set(self.devices)
        self._changed = threading.Condition()
        self._leases: Counter[str] = Counter()
        self._held: dict[str, float] = {device: 0.0 for device in self.devices}
        self._affinity: dict[str, str | None] = {}

    @contextmanager
    def lease(
        self, device: str | None = None, affinity: str | None = None, timeout: float | None = None
    ) -> Iterator[str]:
        """A free device (``device`` itself if named), held until the block ends (also when it raises).

        Among free devices, the one last leased with the same ``affinity`` (e.g. a shot's content
        hash) comes first: its resident model still holds that shot's reference encodings. A free
        device is never left idle to wait for the preferred one.
        """
        if device is not None and device not in self.devices:
            raise ValueError(f"{device} is not one of this process's devices ({', '.join(self.devices)})")
        wanted = [device] if device is not None else self.devices
        with self._changed:
            if not self._changed.wait_for(lambda: any(d in self._free for d in wanted), timeout):
                raise DeviceLeaseTimeout(f"none of {', '.join(wanted)} came free within {timeout:.0f} s")
            free = [d for d in wanted if d in self._free]
            leased = next((d for d in free if affinity is not None and self._affinity.get(d) == affinity), free[0])
            self._free.remove(leased)
            self._leases[leased] += 1
            self._affinity[leased] = affinity
        start = time.monotonic()
        try:
            yield leased
        finally:
            with self._changed:
                self._held[leased] += time.monotonic() - start
                self._free.add(leased)
                self._changed.notify_all()

    def record(self) -> LeaseRecord:
        with self._changed:
            return LeaseRecord(dict(self._leases), dict(self._held))


def visible_devices(kind: str) -> list[str]:
    """The devices of ``kind`` this process can use: ``cuda`` → every visible GPU; ``cpu`` → the CPU."""
    if kind == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise RuntimeError("CUDA was asked for but this process sees no GPU (check CUDA_VISIBLE_DEVICES)")
        return [f"cuda:{index}" for index in range(count)]
    return [kind]


_pools: dict[str, DevicePool] = {}
_pools_lock = threading.Lock()


def lease_device(
    device: str, affinity: str | None = None, timeout: float | None = None
) -> AbstractContextManager[str]:
    """Lease ``device``: ``cuda`` = any free GPU of this process, ``cuda:1`` = that one, ``cpu`` = the CPU."""
    kind = torch.device(device).type
    with _pools_lock:
        if kind not in _pools:
            _pools[kind] = DevicePool(visible_devices(kind))
        pool = _pools[kind]
    return pool.lease(None if device == kind else str(torch.device(device)), affinity, timeout)


def lease_records() -> dict[str, LeaseRecord]:
    """Every pool of this process, by device kind (what tests read from Dask workers with ``Client.run``)."""
    with _pools_lock:
        return {kind: pool.record() for kind, pool in _pools.items()}

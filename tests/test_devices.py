"""Device leases: with N devices, N holders at once and never two on one device."""

from __future__ import annotations

import threading
import time

import pytest

from dubflow.models.devices import DeviceLeaseTimeout, DevicePool, lease_device, lease_records


def _hammer(pool: DevicePool, tasks: int, hold_s: float, affinity=lambda i: None) -> tuple[list, int]:
    """Run `tasks` threads that each lease a device for `hold_s`; what each got, and the most at once."""
    holders: dict[str, int] = {device: 0 for device in pool.devices}
    lock = threading.Lock()
    got: list[tuple[int, str]] = []
    most = {"overall": 0, "per_device": 0}

    def work(index: int) -> None:
        with pool.lease(affinity=affinity(index)) as device:
            with lock:
                holders[device] += 1
                got.append((index, device))
                most["overall"] = max(most["overall"], sum(holders.values()))
                most["per_device"] = max(most["per_device"], holders[device])
            time.sleep(hold_s)
            with lock:
                holders[device] -= 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(tasks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert most["per_device"] == 1, "two holders on one device"
    return got, most["overall"]


def test_every_device_is_used_and_never_by_two_at_once() -> None:
    pool = DevicePool(["cuda:0", "cuda:1", "cuda:2"])
    got, most = _hammer(pool, tasks=12, hold_s=0.05)
    assert most == 3
    assert {device for _, device in got} == set(pool.devices)
    record = pool.record()
    assert sum(record.leases.values()) == 12
    assert all(record.held_seconds[device] >= 0.05 * record.leases[device] for device in pool.devices)


def test_a_free_device_that_holds_the_shot_is_preferred() -> None:
    pool = DevicePool(["cuda:0", "cuda:1"])
    with pool.lease(affinity="shot-b") as first:
        with pool.lease(affinity="shot-a") as second:
            assert {first, second} == {"cuda:0", "cuda:1"}
    for _ in range(3):  # both free: the one that last held shot-a, every time
        with pool.lease(affinity="shot-a") as device:
            assert device == second


def test_a_named_device_waits_for_itself_and_a_bounded_wait_says_so() -> None:
    pool = DevicePool(["cuda:0", "cuda:1"])
    with pool.lease("cuda:1"):
        with pool.lease() as other:
            assert other == "cuda:0"
        with pytest.raises(DeviceLeaseTimeout, match="cuda:1"):
            with pool.lease("cuda:1", timeout=0.1):
                pass
    with pytest.raises(ValueError, match="cuda:7 is not one of"):
        with pool.lease("cuda:7"):
            pass


def test_the_process_cpu_pool_is_one_device_and_is_reported() -> None:
    with lease_device("cpu") as device:
        assert device == "cpu"
        with pytest.raises(DeviceLeaseTimeout):
            with lease_device("cpu", timeout=0.05):
                pass
    assert lease_records()["cpu"].leases["cpu"] >= 1

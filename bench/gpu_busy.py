"""GPU busy fraction from NVML, polled by a thread: how much of a span the GPU had a kernel running.

NVML's utilisation counter is the share of the last sample period (1/6 s to 1 s, by product) during
which at least one kernel was running, the figure nvidia-smi shows. Polling it every 0.1 s is light
(one NVML call per poll, no kernel tracing), so the timing of what runs beside it is not disturbed.
It counts a kernel on one SM as busy: it measures idle time, not how well the kernels use the GPU.
Without an NVIDIA driver (a CPU machine) there is no figure, and ``unavailable`` says why.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import threading
import time

POLL_S = 0.1


class _Utilization(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class GpuBusy:
    """NVML's GPU utilisation polled from a thread while the block runs; ``fraction`` is their mean / 100."""

    def __init__(self, device: str | None = None) -> None:
        """``device``: an NVML index or UUID; default: the first entry of CUDA_VISIBLE_DEVICES."""
        self.samples: list[int] = []
        self.times: list[float] = []  # time.perf_counter() of each sample
        self.device_name: str | None = None
        self.unavailable: str | None = None  # why there is no figure, when there is none
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        try:
            self._nvml = ctypes.CDLL("libnvidia-ml.so.1")
        except OSError as error:
            self.unavailable = f"NVML not available: {error}"
            return
        self._handle = ctypes.c_void_p()
        visible = device or os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
        status = self._nvml.nvmlInit_v2()
        if not status and visible.startswith(("GPU-", "MIG-")):
            status = self._nvml.nvmlDeviceGetHandleByUUID(visible.encode(), ctypes.byref(self._handle))
        elif not status:
            status = self._nvml.nvmlDeviceGetHandleByIndex_v2(int(visible), ctypes.byref(self._handle))
        name = ctypes.create_string_buffer(96)
        status = status or self._nvml.nvmlDeviceGetName(self._handle, name, len(name))
        if status:
            self.unavailable = f"NVML set-up failed with status {status}"
        self.device_name = name.value.decode() or None

    def _poll(self) -> None:
        utilization = _Utilization()
        while not self._stop.wait(POLL_S):
            status = self._nvml.nvmlDeviceGetUtilizationRates(self._handle, ctypes.byref(utilization))
            if status:
                self.unavailable = f"nvmlDeviceGetUtilizationRates failed with status {status}"
                return
            self.times.append(time.perf_counter())
            self.samples.append(utilization.gpu)

    def __enter__(self) -> GpuBusy:
        if self.unavailable is None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()

    @property
    def fraction(self) -> float | None:
        if self.unavailable is not None or not self.samples:
            return None
        return statistics.fmean(self.samples) / 100

    def fraction_between(self, start: float, end: float) -> float | None:
        """Mean utilisation of the samples taken in [start, end] (perf_counter times), / 100. A sample
        averages the driver's last period (up to 1 s), so short spans blur into their neighbours."""
        inside = [sample for t, sample in zip(self.times, self.samples) if start <= t <= end]
        return statistics.fmean(inside) / 100 if inside else None

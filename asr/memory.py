"""Memory accounting for training: resident memory now and at its peak, and glibc's allocator
settings (`malloc_trim`, `mallopt`). Linux with glibc; elsewhere the readings are 0 and the
allocator calls do nothing."""

from __future__ import annotations

import ctypes
import os
import resource
import sys
import threading
from dataclasses import dataclass

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h


def _load_libc() -> ctypes.CDLL | None:
    """The C library this process already uses, if it is glibc (musl and macOS have no malloc_trim)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()


def release_free_memory() -> None:
    """Hand the allocator's free pages back to the OS (glibc's malloc_trim). Batches of varying
    shapes leave freed blocks scattered over the heap; glibc keeps them, so without this the
    resident memory creeps up over the first tens of epochs although nothing is leaked."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse: large blocks come from the heap instead of a fresh
    mmap each (M_MMAP_THRESHOLD 256 MB), and the heap's top is trimmed only past 1 GB (M_TRIM_THRESHOLD,
    M_TOP_PAD). By default each large tensor is mapped, zero-filled page by page and unmapped, which
    costs system time on every batch. Lasts for the process; False where the C library is not glibc."""
    if _LIBC is None or not hasattr(_LIBC, "mallopt"):
        return False
    settings = ((_M_MMAP_THRESHOLD, 256 << 20), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 256 << 20))
    return all(_LIBC.mallopt(param, value) == 1 for param, value in settings)


def rss_mb() -> int:
    """Resident memory now, in MB (Linux /proc; 0 elsewhere): with the peak, shows whether memory grows."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20)
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_mb() -> int:
    """The kernel's high-water mark of resident memory for this process, in MB (ru_maxrss)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


@dataclass(frozen=True)
class EpochMemory:
    """Resident memory in MB at the end of an epoch (`now`), its highest during the epoch, and the
    highest since training started."""

    now: int
    epoch_peak: int
    run_peak: int


class PeakMemory:
    """Highest resident memory since the last `restart`, sampled by a daemon thread. (Linux's own
    high-water mark can be reset, but only together with the ru_maxrss that `/usr/bin/time`
    reports for the whole run, so it is left alone.)"""

    def __init__(self, interval: float = 0.05):
        """`interval`: seconds between samples."""
        self.peak = self.run_peak = rss_mb()
        # A sample read before a restart must not land after it, or one epoch's peak leaks into the next.
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True, name="peak-memory")
        self._thread.start()

    def _sample(self, interval: float) -> None:
        while not self._done.wait(interval):
            with self._lock:
                self.peak = max(self.peak, rss_mb())

    def restart(self) -> int:
        """The peak since the last restart (MB); a new one starts from the memory now.
        `run_peak` keeps the highest of them."""
        with self._lock:
            now = rss_mb()
            peak, self.peak = max(self.peak, now), now
            self.run_peak = max(self.run_peak, peak)
        return peak

    def end_epoch(self) -> EpochMemory:
        """Release free memory to the OS, then read the epoch's memory and start the next epoch's peak."""
        release_free_memory()
        now = rss_mb()
        epoch_peak = max(self.restart(), now)
        run_peak = max(self.run_peak, epoch_peak, peak_rss_mb())  # the kernel's high-water mark can miss a sampled peak
        return EpochMemory(now, epoch_peak, run_peak)

    def __enter__(self) -> PeakMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

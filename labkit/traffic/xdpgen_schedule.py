"""The frames one CPU sends for the in-kernel generator (`labkit.traffic.xdpgen`), paced
into chunks of the schedule, and what it measured of its own sends."""

from __future__ import annotations

import threading
import time

from labkit import bpf

CHUNK_SECONDS = 0.005  # at a target rate, one system call sends this much of the schedule
MAX_CHUNK = 1 << 18  # frames per system call when unpaced (bounds the reaction to stop/timeout)


class CpuSchedule:
    """The frames one CPU sends, shared by the THREADS_PER_CPU threads pinned to it:
    a thread claims the next chunk, sleeps until the chunk is due (frames before it /
    rate), sends it, and repeats until the CPU's quota is sent."""

    def __init__(self, index: int, cpu: int | None, quota: int, rate: float | None, batch_size: int):
        self.index, self.cpu, self.quota, self.rate, self.batch_size = index, cpu, quota, rate, batch_size
        self.phase = 0.0  # CPUs' chunks are staggered so their bursts do not meet in one receive ring
        self.chunk = MAX_CHUNK if rate is None else max(1, min(MAX_CHUNK, int(rate * CHUNK_SECONDS)))
        self.claimed = self.sent = 0
        self.cpu_seconds = 0.0
        self.kernel_seconds = 0.0  # the kernel's own timing of the send loops
        self.first_send = self.last_end = self.last_begin = None
        self.last_n = 0
        self.stopped = False
        self.t0 = None
        self._lock = threading.Lock()
        self._started = threading.Event()

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._started.set()

    def _claim(self):
        with self._lock:
            if self.claimed >= self.quota:
                return None
            n = min(self.chunk, self.quota - self.claimed)
            due = None if self.rate is None else self.t0 + self.phase + self.claimed / self.rate
            self.claimed += n
            return n, due

    def run(self, fn, frame, ctx, deadline, stop) -> None:
        self._started.wait(30)
        cpu0 = time.thread_time()
        try:
            while True:
                job = self._claim()
                if job is None:
                    return
                n, due = job
                if due is not None:
                    while not stop.is_set() and time.monotonic() < min(due, deadline):
                        time.sleep(min(0.005, max(0.0, due - time.monotonic())))
                if stop.is_set() or time.monotonic() >= deadline:
                    with self._lock:
                        self.stopped = True
                    return
                begin = time.monotonic()
                res = bpf.test_run(
                    fn, frame, repeat=n, ctx=ctx, flags=bpf.BPF_F_TEST_XDP_LIVE_FRAMES, batch_size=self.batch_size
                )
                end = time.monotonic()
                loop = res.duration_ns * n / 1e9
                with self._lock:
                    self.sent += n
                    self.kernel_seconds += loop
                    self.first_send = begin if self.first_send is None else min(self.first_send, begin)
                    self.last_end = end if self.last_end is None else max(self.last_end, end)
                    if self.last_begin is None or begin > self.last_begin:
                        self.last_begin, self.last_n = begin, n
        finally:
            with self._lock:
                self.cpu_seconds += time.thread_time() - cpu0

    def schedule_end(self) -> float:
        """When the last chunk's slot in the schedule ended (rate-controlled sends)."""
        if self.last_begin is None:
            return self.t0 or 0.0
        return self.last_begin + self.last_n / self.rate

    def result(self) -> dict:
        seconds = 0.0
        if self.sent and self.first_send is not None:
            if self.rate is None:
                seconds = max(self.last_end - self.first_send, 1e-9)
            else:
                seconds = max(self.schedule_end() - self.first_send, 1e-9)
        return {
            "cpu": self.cpu,
            "packets": self.sent,
            "seconds": seconds,
            "pps": self.sent / seconds if seconds else float("nan"),
            "cpu_seconds": self.cpu_seconds,
            "kernel_seconds": self.kernel_seconds,
        }

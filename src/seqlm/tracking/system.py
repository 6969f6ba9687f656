"""MLflow's system metrics in the training run: CPU, memory, disk and network (GPU where nvidia-ml-py
is installed), sampled every ``train.system_metrics_seconds`` while train runs, as ``system/*``.

MLflow's monitors measure (those of its ``SystemMetricsMonitor``, under the names MLflow gives them);
the thread that paces them and sends their averages is ours. MLflow's own loop asks the store for the
run's status after every sample, waits for its last request however long a lost server takes to
refuse it, and numbers its samples from step 0, which ``log_model`` copies onto the logged model with
the evaluation's metrics. Ours stops on the stage's word, gives up after ``STOP_WAIT_S``, numbers from
1 (after the run's last sample, when a run resumes), and never fails training: system metrics are a
view of it, not a result.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from seqlm.core.redact import redact_url

if TYPE_CHECKING:
    from seqlm.tracking.run import RunHandle

PREFIX = "system/"
STOP_WAIT_S = 5.0


@contextlib.contextmanager
def system_metrics(run: RunHandle | None, every_seconds: float) -> Iterator[None]:
    """Sample system metrics into ``run`` while the block runs; nothing without a run or at 0 seconds."""
    if run is None or not every_seconds:
        yield
        return
    sampler = SystemSampler(run, every_seconds)
    sampler.start()
    try:
        yield
    except BaseException:
        sampler.stop(last_sample=False)  # a failing store must not hold up the failure's report
        raise
    sampler.stop(last_sample=True)


def next_step(run: RunHandle) -> int:
    """1 on a new run; after the last ``system/*`` step on a resumed one."""
    steps = [m.step for m in run.get().data.to_proto().metrics if m.key.startswith(PREFIX)]
    return max(steps, default=0) + 1


class SystemSampler:
    """A daemon thread that samples MLflow's system monitors every ``every_seconds`` into the run."""

    def __init__(self, run: RunHandle, every_seconds: float):
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # "Skip logging GPU metrics" and the like at INFO would interleave with the stage's own lines
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        monitor = SystemMetricsMonitor(run.run_id, sampling_interval=every_seconds)
        self.monitors = monitor.monitors
        # MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL and _NODE_ID, when set, win as they do in MLflow
        self.every_seconds = float(monitor.sampling_interval)
        self.prefix = PREFIX + (f"{monitor.node_id}/" if monitor.node_id else "")
        self.run = run
        self.step = next_step(run)
        self.first_step = self.step
        self.sampled_at = time.monotonic()
        self.stopping = threading.Event()
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._loop, name="seqlm-system-metrics", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.wait(self.every_seconds):
            if not self._sample():
                return

    def _sample(self) -> bool:
        """One sample (CPU averaged since the last) sent to the run; False once anything failed."""
        from seqlm.tracking.metrics import metric_list

        try:
            values = {}
            for monitor in self.monitors:
                monitor.collect_metrics()
                values |= {self.prefix + k: v for k, v in monitor.aggregate_metrics().items()}
                monitor.clear_metrics()
            self.run.log_metrics(metric_list(values, self.step))
        except Exception as exc:  # the store went away or a monitor broke: stop sampling, keep training
            self.error = exc
            return False
        self.step += 1
        self.sampled_at = time.monotonic()
        return True

    def stop(self, last_sample: bool = True) -> None:
        """End the thread; with ``last_sample``, send the time since the last sample and say in one line
        when sampling had stopped early."""
        self.stopping.set()
        self.thread.join(STOP_WAIT_S)
        if self.thread.is_alive() or not last_sample:
            return
        # a sample just taken leaves a tail too short to average CPU over; a run shorter than one
        # interval still gets its one
        recent = time.monotonic() - self.sampled_at < self.every_seconds / 2
        if self.error is None and not (recent and self.step > self.first_step):
            self._sample()
        if self.error is not None:
            first = (str(self.error).strip().splitlines() or [type(self.error).__name__])[0][:200]
            print(f"train: system metrics stopped early: {redact_url(first)}")

"""Prometheus metrics of a worker: images classified, errors by reason, batch latency, queue depth.

A Celery prefork worker runs its batches in child processes, so the metrics use
prometheus_client's multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set: each child
writes its values to files in that folder, and the worker's main process serves their sum.
Without that variable, the process that calls `start_metrics_server` serves its own values,
which suits a solo or threads pool.

How a worker uses this module:
- in the main process before the pool starts (`worker_init`): `start_metrics_server(settings)`;
- after each batch: `observe_batch(result, model_version)`;
- when a child exits (`worker_process_shutdown`): `mark_process_dead(os.getpid())`.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from dermbatch.settings import Settings
from dermbatch.worker.batch import BatchResult

logger = logging.getLogger(__name__)

#: Queue whose length is exported as dermbatch_queue_depth.
INFERENCE_QUEUE = "inference"
#: Address the metrics server listens on unless the settings name another; a container
#: that Prometheus scrapes from another container needs 0.0.0.0.
DEFAULT_METRICS_ADDRESS = "127.0.0.1"
#: Upper bounds in seconds of the batch-duration histogram buckets, from a 32-image batch on
#: a GPU (well under 0.1 s) to a large batch read slowly from S3 (minutes).
BATCH_DURATION_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, float("inf"))
#: Seconds a Redis LLEN may take before a scrape reports no queue depth.
QUEUE_DEPTH_TIMEOUT_S = 2.0
#: Seconds between repeated warnings about an unreachable broker during scrapes.
QUEUE_DEPTH_WARNING_INTERVAL_S = 300.0
# kombu 5's Redis transport keeps priority steps 0, 3, 6 and 9 by default: step 0 in the
# list "<queue>", and each other step p in "<queue>\x06\x16<p>".
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


@dataclass
class WorkerMetrics:
    """The metric objects of one registry."""

    images_classified: Counter
    image_errors: Counter
    batch_duration: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry | None = REGISTRY) -> WorkerMetrics:
        return cls(
            images_classified=Counter(
                "dermbatch_images_classified", "Images given a prediction, new or reused, by model version.",
                ["model_version"], registry=registry,
            ),
            image_errors=Counter(
                "dermbatch_image_errors", "Images recorded as errors, by reason code.", ["reason"],
                registry=registry,
            ),
            batch_duration=Histogram(
                "dermbatch_batch_duration_seconds", "Seconds from claiming a batch to recording its results.",
                ["model_version"], buckets=BATCH_DURATION_BUCKETS_S, registry=registry,
            ),
        )

    def observe_batch(self, result: BatchResult, model_version: str) -> None:
        """Add one batch's outcome to the metrics."""
        classified = result.predicted + result.reused
        if classified:
            self.images_classified.labels(model_version=model_version).inc(classified)
        for reason, count in result.error_reasons.items():
            self.image_errors.labels(reason=reason).inc(count)
        if result.claimed:
            self.batch_duration.labels(model_version=model_version).observe(result.seconds)


_default_metrics: WorkerMetrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> WorkerMetrics:
    """Return the process's metrics on the default registry, created on first use.

    Creating them lazily keeps a worker's main process from writing multiprocess files
    before `start_metrics_server` has prepared the folder.
    """
    global _default_metrics
    with _default_lock:
        if _default_metrics is None:
            _default_metrics = WorkerMetrics.create()
        return _default_metrics


def observe_batch(result: BatchResult, model_version: str) -> None:
    """Record a batch in the metrics and log its one summary line."""
    default_metrics().observe_batch(result, model_version)
    logger.info("%s", format_batch_line(result, model_version))


def format_batch_line(result: BatchResult, model_version: str) -> str:
    """Return the one-line summary of a batch: job id, size, throughput, errors and model version."""
    reasons = ",".join(f"{reason}:{count}" for reason, count in sorted(result.error_reasons.items()))
    return (
        f"job {result.job_id} batch of {result.claimed} images: {result.predicted} predicted, "
        f"{result.reused} reused, {result.errors} errors{f' ({reasons})' if reasons else ''}, "
        f"{result.seconds:.2f} s, {result.images_per_second:.1f} images/s, model {model_version}"
    )


class QueueDepthCollector(Collector):
    """Reports the number of messages waiting in a Redis-backed Celery queue at each scrape."""

    def __init__(self, broker_url: str, queue: str = INFERENCE_QUEUE) -> None:
        self.broker_url = broker_url
        self.queue = queue
        self._last_warning = 0.0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("dermbatch_queue_depth", "Messages waiting in a Celery queue on Redis.",
                                   labels=["queue"])
        depth = self._read_depth()
        if depth is not None:
            family.add_metric([self.queue], depth)
        yield family

    def _read_depth(self) -> int | None:
        import redis

        try:
            return queue_depth(redis.Redis.from_url(
                self.broker_url, socket_timeout=QUEUE_DEPTH_TIMEOUT_S, socket_connect_timeout=QUEUE_DEPTH_TIMEOUT_S,
            ), self.queue)
        except (redis.RedisError, OSError) as error:
            now = time.monotonic()
            if now - self._last_warning >= QUEUE_DEPTH_WARNING_INTERVAL_S:
                self._last_warning = now
                logger.warning("could not read the length of queue %r from the broker: %s", self.queue, error)
            return None


def queue_depth(client, queue: str = INFERENCE_QUEUE) -> int:
    """Return the messages waiting in `queue` on a Redis broker, summed over kombu's priority lists."""
    names = [queue] + [f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS]
    pipeline = client.pipeline(transaction=False)
    for name in names:
        pipeline.llen(name)
    return sum(pipeline.execute())


def start_metrics_server(settings: Settings, *, address: str | None = None) -> int | None:
    """Serve the metrics on `settings.metrics_port`; return the port, or None when metrics are off.

    Call once per worker, in the main process before the pool starts: in multiprocess mode
    this also empties PROMETHEUS_MULTIPROC_DIR, because files left by an earlier run would
    add that run's counts to this one's.
    """
    if settings.metrics_port is None:
        return None
    address = address or settings.metrics_address or DEFAULT_METRICS_ADDRESS

    multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if multiprocess_dir:
        registry = _multiprocess_registry(Path(multiprocess_dir))
    else:
        registry = REGISTRY
        default_metrics()
    if settings.broker_url.startswith(("redis://", "rediss://")):
        registry.register(QueueDepthCollector(settings.broker_url))

    start_http_server(settings.metrics_port, addr=address, registry=registry)
    logger.info("serving Prometheus metrics on %s:%d%s", address, settings.metrics_port,
                " (multiprocess mode)" if multiprocess_dir else "")
    return settings.metrics_port


def _multiprocess_registry(folder: Path) -> CollectorRegistry:
    from prometheus_client import multiprocess

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(folder))
    return registry


def mark_process_dead(pid: int) -> None:
    """Tell multiprocess mode that a pool process has exited; a no-op without PROMETHEUS_MULTIPROC_DIR."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)

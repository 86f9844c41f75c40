"""Worker metrics: counters per batch, multiprocess aggregation, queue depth read from Redis."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from prometheus_client import CollectorRegistry

from dermbatch.worker.batch import BatchResult
from dermbatch.worker.metrics import QueueDepthCollector, WorkerMetrics, format_batch_line, queue_depth
from services import free_port


def sample(registry: CollectorRegistry, name: str, **labels) -> float | None:
    return registry.get_sample_value(name, labels)


def make_result(**values) -> BatchResult:
    defaults = {"job_id": 7, "claimed": 32, "predicted": 29, "reused": 1, "errors": 2,
                "error_reasons": {"read_failed": 1, "invalid_image": 1}, "seconds": 0.5}
    return BatchResult(**{**defaults, **values})


def test_observe_batch_counts_images_errors_and_latency():
    registry = CollectorRegistry()
    metrics = WorkerMetrics.create(registry)

    metrics.observe_batch(make_result(), "mobilenetv2-1")
    metrics.observe_batch(make_result(predicted=10, reused=0, errors=0, error_reasons={}, seconds=2.0),
                          "mobilenetv2-1")

    assert sample(registry, "dermbatch_images_classified_total", model_version="mobilenetv2-1") == 40
    assert sample(registry, "dermbatch_image_errors_total", reason="read_failed") == 1
    assert sample(registry, "dermbatch_image_errors_total", reason="invalid_image") == 1
    assert sample(registry, "dermbatch_batch_duration_seconds_count", model_version="mobilenetv2-1") == 2
    assert sample(registry, "dermbatch_batch_duration_seconds_sum", model_version="mobilenetv2-1") == 2.5
    assert sample(registry, "dermbatch_batch_duration_seconds_bucket", model_version="mobilenetv2-1",
                  le="0.5") == 1


def test_observe_batch_skips_empty_batch_latency():
    registry = CollectorRegistry()
    metrics = WorkerMetrics.create(registry)

    metrics.observe_batch(BatchResult(job_id=3), "v1")

    assert sample(registry, "dermbatch_batch_duration_seconds_count", model_version="v1") is None
    assert sample(registry, "dermbatch_images_classified_total", model_version="v1") is None


def test_batch_line_contents():
    line = format_batch_line(make_result(), "mobilenetv2-1")

    assert line == ("job 7 batch of 32 images: 29 predicted, 1 reused, 2 errors "
                    "(invalid_image:1,read_failed:1), 0.50 s, 64.0 images/s, model mobilenetv2-1")


MULTIPROCESS_SCRIPT = textwrap.dedent("""
    import multiprocessing, os, sys, urllib.request
    from dermbatch.settings import Settings
    from dermbatch.worker.batch import BatchResult
    from dermbatch.worker import metrics

    port, broker_url = int(sys.argv[1]), sys.argv[2]
    metrics.start_metrics_server(Settings(metrics_port=port, broker_url=broker_url))

    def run_batches(count):
        for _ in range(count):
            metrics.observe_batch(BatchResult(job_id=1, claimed=8, predicted=8, seconds=0.2), "v1")
        metrics.mark_process_dead(os.getpid())

    context = multiprocessing.get_context("fork")
    children = [context.Process(target=run_batches, args=(count,)) for count in (2, 3)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    print(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode())
""")


def test_multiprocess_mode_sums_pool_processes(tmp_path, redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.rpush("inference", "message-1", "message-2", "message-3")
    port = free_port()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "PATH": "/usr/bin:/bin"}

    try:
        completed = subprocess.run([sys.executable, "-c", MULTIPROCESS_SCRIPT, str(port), redis_url], env=env,
                                   capture_output=True, text=True, timeout=120)
    finally:
        client.delete("inference")

    assert completed.returncode == 0, completed.stderr
    assert 'dermbatch_images_classified_total{model_version="v1"} 40.0' in completed.stdout
    assert 'dermbatch_batch_duration_seconds_count{model_version="v1"} 5.0' in completed.stdout
    assert 'dermbatch_queue_depth{queue="inference"} 3.0' in completed.stdout


def test_queue_depth_sums_priority_lists(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.rpush("inference", "a", "b")
    client.rpush("inference\x06\x166", "c")
    try:
        depth = queue_depth(client, "inference")
    finally:
        client.delete("inference", "inference\x06\x166")

    assert depth == 3


def test_queue_depth_collector_omits_value_when_broker_is_down():
    # A port that nothing listens on, on this machine only.
    collector = QueueDepthCollector(f"redis://127.0.0.1:{free_port()}/0")

    families = list(collector.collect())

    assert [family.name for family in families] == ["dermbatch_queue_depth"]
    assert families[0].samples == []


def test_metrics_server_disabled_without_port():
    from dermbatch.settings import Settings
    from dermbatch.worker.metrics import start_metrics_server

    assert start_metrics_server(Settings(metrics_port=None)) is None


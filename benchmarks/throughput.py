"""Throughput and memory of dermbatch against a plain loop and the naive one-task-per-image pattern.

Runs, one after another on this machine and on the same images (the 245 full-resolution
HAM10000 JPEGs repeated to --images files):

1. ceiling: `benchmarks/ceiling.py`, a plain multi-process loop with the same model and preprocessing;
2. embedded: `dermbatch classify` on the folder, SQLite;
3. distributed: `dermbatch submit s3://...` from SeaweedFS, Redis and PostgreSQL, one worker
   with one process per core;
4. distributed-folder: the same with the folder as the source, which separates the cost of S3;
5. naive: one Celery task per image with `load_img` and `model.predict` (on --naive-images files);
6. producer: `dermbatch submit` of a prefix of --producer-keys objects with no worker running.

Writes the results to docs/benchmarks.md (--out). Needs Redis and PostgreSQL on 127.0.0.1
and the HAM10000 data; starts SeaweedFS and the workers itself.

    .venv/bin/python benchmarks/throughput.py --images 5000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tests"))
sys.path.insert(0, str(REPO_ROOT))

from conftest import HAM10000_DIR, full_resolution_image_ids  # noqa: E402
from services import S3Server, WorkerFactory  # noqa: E402

PYTHON = sys.executable
DERMBATCH = str(Path(PYTHON).parent / "dermbatch")


@dataclass
class Measurement:
    """One run: `seconds` is wall time with start-up; `steady_seconds` covers only the classifying."""

    name: str
    images: int
    seconds: float
    steady_seconds: float | None = None
    steady_images: int | None = None
    peak_rss_mib: list[float] = field(default_factory=list)
    rss_growth: float | None = None
    note: str = ""

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds

    @property
    def steady_images_per_second(self) -> float | None:
        if not self.steady_seconds:
            return None
        return (self.steady_images or self.images) / self.steady_seconds


class RssSampler:
    """Samples the RSS of a set of processes and a progress count, twice a second, in a thread."""

    def __init__(self, pids_of, progress_of) -> None:
        self.pids_of, self.progress_of = pids_of, progress_of
        self.samples: list[tuple[int, dict[int, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            rss = {pid: value for pid in self.pids_of() if (value := rss_mib(pid)) is not None}
            try:
                progress = self.progress_of()
            except Exception:  # noqa: BLE001 - a failed progress query only skips one sample
                continue
            if rss:
                self.samples.append((progress, rss))

    def peak(self) -> list[float]:
        peaks: dict[int, float] = {}
        for _, rss in self.samples:
            for pid, value in rss.items():
                peaks[pid] = max(peaks.get(pid, 0.0), value)
        return [round(value) for value in peaks.values()]

    def growth(self, first: int = 1000) -> float | None:
        """Relative RSS growth per process from the sample after `first` images to the last sample (max)."""
        after_first = [rss for progress, rss in self.samples if progress >= first]
        if len(after_first) < 2:
            return None
        start, end = after_first[0], after_first[-1]
        changes = [(end[pid] - start[pid]) / start[pid] for pid in start if pid in end]
        return max(changes) if changes else None


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def child_pids(pid: int) -> list[int]:
    try:
        return [int(value) for value in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def spawned_classify_pids(pid: int) -> list[int]:
    """Return the classifying children of a `dermbatch classify` process, leaving out multiprocessing's tracker."""
    found = []
    for child in child_pids(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            found.append(child)
    return found


def repeated_folder(folder: Path, count: int) -> list[Path]:
    """Fill `folder` with `count` symbolic links cycling over the 245 full-resolution images."""
    ids = full_resolution_image_ids()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image_id = ids[index % len(ids)]
        path = folder / f"r{index:06d}_{image_id}.jpg"
        path.symlink_to(HAM10000_DIR / "images" / f"{image_id}.jpg")
        paths.append(path)
    return paths


def default_model() -> str:
    from dermbatch.settings import DEFAULT_MODEL_DIR

    return str(DEFAULT_MODEL_DIR)


def run_ceiling(folder: Path, model: str, count: int) -> Measurement:
    started = time.perf_counter()
    completed = subprocess.run([PYTHON, str(REPO_ROOT / "benchmarks" / "ceiling.py"), str(folder), "--model", model],
                               capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return Measurement("ceiling: plain loop, one process per core", report["images"], seconds,
                       steady_seconds=report["seconds"], peak_rss_mib=report["peak_rss_mib"],
                       note="steady state timed from the moment every process has loaded the model")


def steady_state(database_url: str) -> tuple[int, float]:
    """Return (images, seconds) between the first and the last batch written, from the database."""
    from sqlalchemy import text

    from dermbatch.db.engine import get_engine

    with get_engine(database_url).connect() as connection:
        first, last = connection.execute(text("SELECT min(updated_at), max(updated_at) FROM images")).one()
        if isinstance(first, str):
            first, last = datetime.fromisoformat(first), datetime.fromisoformat(last)
        first_batch = connection.execute(
            text("SELECT count(*) FROM images WHERE updated_at = (SELECT min(updated_at) FROM images)")
        ).scalar_one()
        total = connection.execute(text("SELECT count(*) FROM images")).scalar_one()
    return total - first_batch, (last - first).total_seconds()


def count_done(database_url: str, job_id_holder: dict) -> int:
    """Return how many images are finished, reading SQLite without taking its write lock."""
    if database_url.startswith("sqlite:///"):
        import sqlite3

        path = database_url.removeprefix("sqlite:///")
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute("SELECT count(*) FROM images WHERE status <> 'pending'").fetchone()[0]

    from sqlalchemy import text

    from dermbatch.db.engine import get_engine

    with get_engine(database_url).connect() as connection:
        return connection.execute(text("SELECT count(*) FROM images WHERE status <> 'pending'")).scalar_one()


def run_embedded(folder: Path, model: str, count: int, workdir: Path) -> Measurement:
    database_url = f"sqlite:///{workdir / 'embedded.db'}"
    env = {**os.environ, "DERMBATCH_DATABASE_URL": database_url, "DERMBATCH_MODEL_PATH": model}
    started = time.perf_counter()
    process = subprocess.Popen([DERMBATCH, "classify", str(folder)], env=env, cwd=workdir,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # `classify` spawns one process per core; with one, it classifies in its own process.
    with RssSampler(lambda: spawned_classify_pids(process.pid) or [process.pid], lambda: count_done(database_url, {})) as sampler:
        _, stderr = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"dermbatch classify failed: {stderr[-2000:]}")
    steady_images, steady_seconds = steady_state(database_url)
    return Measurement("dermbatch, embedded (`dermbatch classify`)", count, seconds, steady_seconds, steady_images,
                       sampler.peak(), sampler.growth(),
                       note="steady state from the first batch written to the last")


def fresh_postgres_database() -> tuple[str, callable]:
    import psycopg

    name = f"dermbatch_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        from dermbatch.db.engine import dispose_engines

        dispose_engines()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", drop


def free_redis_url() -> str:
    import redis

    for number in range(15, 0, -1):
        client = redis.Redis(host="127.0.0.1", port=6379, db=number)
        if client.dbsize() == 0:
            client.set("dermbatch-bench:owner", "1")
            return f"redis://127.0.0.1:6379/{number}"
    raise RuntimeError("no empty Redis database number between 1 and 15")


def release_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def run_distributed(paths: list[Path], model: str, workdir: Path, server: S3Server | None) -> Measurement:
    """Time `submit --wait` with one worker of one process per core: from S3, or from the folder without a server."""
    if server is not None:
        bucket = server.create_bucket()
        upload_repeated(server, bucket, "bench/", paths)
        source, s3_env, label = f"s3://{bucket}/bench/", server.env(), "S3"
    else:
        source, s3_env, label = str(paths[0].parent), {}, "folder"
    database_url, drop_database = fresh_postgres_database()
    broker_url = free_redis_url()
    env = {**os.environ, **s3_env, "DERMBATCH_DATABASE_URL": database_url, "DERMBATCH_BROKER_URL": broker_url,
           "DERMBATCH_MODEL_PATH": model}
    factory = WorkerFactory(workdir)
    try:
        subprocess.run([DERMBATCH, "db", "upgrade"], env=env, check=True, capture_output=True)
        worker = factory.start(env, concurrency=os.cpu_count())
        started = time.perf_counter()
        process = subprocess.Popen([DERMBATCH, "submit", source, "--wait"], env=env, cwd=workdir,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        with RssSampler(lambda: worker.pool_pids(), lambda: count_done(database_url, {})) as sampler:
            _, stderr = process.communicate()
        seconds = time.perf_counter() - started
        if process.returncode != 0:
            raise RuntimeError(f"dermbatch submit failed: {stderr[-2000:]}")
        steady_images, steady_seconds = steady_state(database_url)
    finally:
        factory.stop_all()
        release_redis(broker_url)
        drop_database()
    return Measurement(f"dermbatch, distributed ({label}, Redis, PostgreSQL, {os.cpu_count()} worker processes)",
                       len(paths), seconds, steady_seconds, steady_images, sampler.peak(), sampler.growth(),
                       note="wall time from `submit` to the job's end with workers already running; "
                            "steady state from the first batch written to the last")


def upload_repeated(server: S3Server, bucket: str, prefix: str, paths: list[Path]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    client = server.client()
    contents = {path.resolve(): path.resolve().read_bytes() for path in paths}
    with ThreadPoolExecutor(max_workers=16) as executor:
        list(executor.map(lambda path: client.put_object(Bucket=bucket, Key=f"{prefix}{path.name}",
                                                          Body=contents[path.resolve()]), paths))


def run_naive(paths: list[Path], model: str, workdir: Path) -> Measurement:
    broker_url = free_redis_url()
    env = {**os.environ, "NAIVE_BROKER_URL": broker_url, "NAIVE_MODEL_PATH": model, "PYTHONPATH": str(REPO_ROOT)}
    log = (workdir / "naive-worker.log").open("wb")
    worker = subprocess.Popen([PYTHON, "-m", "celery", "-A", "benchmarks.naive_celery", "worker", "--concurrency",
                               str(os.cpu_count()), "--loglevel", "INFO"], env=env, cwd=REPO_ROOT, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_text(workdir / "naive-worker.log", "ready.")
        os.environ.update({"NAIVE_BROKER_URL": broker_url, "NAIVE_MODEL_PATH": model})
        from benchmarks.naive_celery import classify_image

        warm = classify_image.delay(str(paths[0]))
        warm.get(timeout=600)
        started = time.perf_counter()
        with RssSampler(lambda: child_pids(worker.pid), lambda: 0) as sampler:
            pending = [classify_image.delay(str(path)) for path in paths]
            for result in pending:
                result.get(timeout=600)
        seconds = time.perf_counter() - started
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        release_redis(broker_url)
    return Measurement(f"naive Celery: one task per image, `load_img` + `model.predict`, "
                       f"{os.cpu_count()} processes", len(paths), seconds, seconds, peak_rss_mib=sampler.peak(),
                       note="after one warm-up task; results through the Redis result backend")


def wait_for_text(path: Path, text: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{text!r} did not appear in {path} within {timeout_s} s")


def run_producer(keys: int, model: str, workdir: Path, server: S3Server) -> Measurement:
    from concurrent.futures import ThreadPoolExecutor

    bucket = server.create_bucket()
    client = server.client()
    names = [f"many/{index:07d}.jpg" for index in range(keys)]
    with ThreadPoolExecutor(max_workers=32) as executor:
        list(executor.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=b"x"), names))

    database_url, drop_database = fresh_postgres_database()
    broker_url = free_redis_url()
    env = {**os.environ, **server.env(), "DERMBATCH_DATABASE_URL": database_url, "DERMBATCH_BROKER_URL": broker_url,
           "DERMBATCH_MODEL_PATH": model}
    try:
        subprocess.run([DERMBATCH, "db", "upgrade"], env=env, check=True, capture_output=True)
        started = time.perf_counter()
        subprocess.run([DERMBATCH, "submit", f"s3://{bucket}/many/"], env=env, check=True, capture_output=True)
        seconds = time.perf_counter() - started
        steady_seconds = submission_seconds(database_url)
    finally:
        release_redis(broker_url)
        drop_database()
    return Measurement(f"producer: `dermbatch submit` of a {keys:,}-object prefix, no worker", keys, seconds,
                       steady_seconds, note="list from S3, record in PostgreSQL and enqueue in Redis")


def submission_seconds(database_url: str) -> float:
    """Return the seconds from recording the job to marking it running, which `submit` does after the last batch."""
    from sqlalchemy import text

    from dermbatch.db.engine import get_engine

    with get_engine(database_url).connect() as connection:
        created, started = connection.execute(text("SELECT created_at, started_at FROM jobs")).one()
    return (started - created).total_seconds()


def write_report(path: Path, measurements: dict[str, Measurement], model: str, command: str) -> None:
    from dermbatch.model.bundle import load_bundle

    bundle = load_bundle(model)
    ceiling = measurements["ceiling"].steady_images_per_second
    ceiling_wall = measurements["ceiling"].images_per_second
    naive = measurements.get("naive")
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}, {cpu_model()}), Python {platform.python_version()}, "
        f"model `{bundle.version}` ({bundle.contract.input_height}x{bundle.contract.input_width} input), "
        "on the 245 full-resolution HAM10000 JPEGs (600x450) repeated.",
        "",
        "Command:",
        "",
        "```bash",
        command,
        "```",
        "",
        "Two rates per run: **steady** counts only the time spent classifying (after start-up,"
        " model loading and listing); **wall** is the whole command, start-up included.",
        "",
        "| run | images | steady images/s | steady ratio to ceiling | wall s | wall images/s | wall ratio to ceiling "
        "| peak RSS per process (MiB) | RSS growth, 1,000th image to last | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for key in ("ceiling", "embedded", "distributed", "distributed-folder", "naive"):
        if key not in measurements:
            continue
        item = measurements[key]
        growth = "" if item.rss_growth is None else f"{item.rss_growth:+.1%}"
        steady = item.steady_images_per_second
        lines.append(
            f"| {item.name} | {item.images} | {steady:.1f} | {steady / ceiling:.2f} | {item.seconds:.1f} | "
            f"{item.images_per_second:.1f} | {item.images_per_second / ceiling_wall:.2f} | "
            f"{', '.join(map(str, item.peak_rss_mib))} | {growth} | {item.note} |"
        )
    if naive is not None:
        for key in ("embedded", "distributed", "distributed-folder"):
            if key in measurements:
                ratio = measurements[key].steady_images_per_second / naive.steady_images_per_second
                lines.append("")
                lines.append(f"{measurements[key].name}: {ratio:.1f} times the naive pattern (steady rates).")
    lines += ["", "Peak RSS lists each classifying process. In the embedded run, samples taken before "
                  "`dermbatch classify` spawned its children measure the parent, which loads no model.",
              "SeaweedFS, Redis and PostgreSQL run on the same cores as the workers in the distributed runs."]
    lines += ["", "Targets:", ""] + [f"- {check}" for check in target_checks(measurements)]
    if "producer" in measurements:
        item = measurements["producer"]
        lines += ["", f"{item.name} ({item.note}): {item.steady_images_per_second:,.0f} keys/s from recording "
                      f"the job to the last batch queued ({item.steady_seconds:.1f} s).",
                  f"The whole command with start-up took {item.seconds:.1f} s, {item.images_per_second:,.0f} keys/s."]
    hand_written = ""
    if path.exists() and NOTES_MARKER in path.read_text():
        hand_written = path.read_text().split(NOTES_MARKER, 1)[1]
    path.write_text("\n".join(lines) + "\n\n" + NOTES_MARKER + hand_written.rstrip("\n") + "\n")


#: Everything after this line in the report is written by hand and kept when the benchmark runs again.
NOTES_MARKER = "<!-- notes written by hand below; kept by benchmarks/throughput.py -->"


def target_checks(measurements: dict[str, Measurement]) -> list[str]:
    """Compare the steady rates with the targets: embedded 0.9 and distributed 0.85 of the ceiling, 10x naive."""
    ceiling = measurements["ceiling"].steady_images_per_second
    checks = []
    for key, target in (("embedded", 0.9), ("distributed", 0.85)):
        if key in measurements:
            ratio = measurements[key].steady_images_per_second / ceiling
            checks.append(f"{key} {ratio:.2f} of the ceiling against {target} ({'met' if ratio >= target else 'missed'})")
    if "naive" in measurements:
        naive = measurements["naive"].steady_images_per_second
        for key in ("embedded", "distributed"):
            if key in measurements:
                times = measurements[key].steady_images_per_second / naive
                checks.append(f"{key} {times:.1f} times naive against 10 ({'met' if times >= 10 else 'missed'})")
    for key in ("embedded", "distributed"):
        growth = measurements[key].rss_growth if key in measurements else None
        if growth is not None:
            checks.append(f"{key} RSS growth {growth:+.1%} against 10% ({'met' if growth < 0.10 else 'missed'})")
    if "producer" in measurements:
        rate = measurements["producer"].steady_images_per_second
        checks.append(f"producer {rate:,.0f} keys/s against 5,000 ({'met' if rate >= 5000 else 'missed'})")
    return checks


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure dermbatch's throughput against a plain loop.")
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--naive-images", type=int, default=500)
    parser.add_argument("--producer-keys", type=int, default=100_000)
    parser.add_argument("--model", default=None, help="Model bundle folder; the shipped default if omitted.")
    parser.add_argument("--only", default="ceiling,embedded,distributed,distributed-folder,naive,producer")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--json", type=Path, default=None, help="Also write the raw measurements here.")
    args = parser.parse_args()

    model = args.model or default_model()
    selected = set(args.only.split(","))
    workdir = Path(tempfile.mkdtemp(prefix="dermbatch-bench-"))
    paths = repeated_folder(workdir / "images", args.images)
    measurements: dict[str, Measurement] = {}
    server = None
    try:
        if "ceiling" in selected:
            measurements["ceiling"] = run_ceiling(workdir / "images", model, args.images)
            print(measurements["ceiling"], flush=True)
        if "embedded" in selected:
            measurements["embedded"] = run_embedded(workdir / "images", model, args.images, workdir)
            print(measurements["embedded"], flush=True)
        if selected & {"distributed", "producer"}:
            server = S3Server(data_dir=workdir / "seaweedfs")
            server.start()
        if "distributed" in selected:
            measurements["distributed"] = run_distributed(paths, model, workdir, server)
            print(measurements["distributed"], flush=True)
        if "distributed-folder" in selected:
            measurements["distributed-folder"] = run_distributed(paths, model, workdir, None)
            print(measurements["distributed-folder"], flush=True)
        if "naive" in selected:
            measurements["naive"] = run_naive(paths[: args.naive_images], model, workdir)
            print(measurements["naive"], flush=True)
        if "producer" in selected:
            measurements["producer"] = run_producer(args.producer_keys, model, workdir, server)
            print(measurements["producer"], flush=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    command = ".venv/bin/python benchmarks/throughput.py " + " ".join(sys.argv[1:])
    if "ceiling" in measurements:
        write_report(args.out, measurements, model, command.strip())
    if args.json:
        args.json.write_text(json.dumps({key: vars(value) for key, value in measurements.items()}, indent=2))


if __name__ == "__main__":
    main()

"""The throughput ceiling: a plain in-process loop with dermbatch's model and preprocessing.

No database, no queue: each of P processes (one TensorFlow thread each) reads its share of
the files, decodes them on a thread that runs one batch ahead, and runs one forward pass
per batch. Prints one JSON line: images, seconds from the moment every process is ready,
and each process's peak RSS.

    python benchmarks/ceiling.py FOLDER --model BUNDLE [--processes 2] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def classify_share(paths: list[str], bundle_dir: str, batch_size: int, barrier, results) -> None:
    import numpy as np

    from dermbatch.model.bundle import load_bundle
    from dermbatch.model.classifier import Classifier, configure_tensorflow
    from dermbatch.model.preprocess import decode_image, scale_pixels

    configure_tensorflow(intra_op_threads=1, device="cpu")
    classifier = Classifier(load_bundle(bundle_dir))
    contract = classifier.contract
    height, width = contract.input_size
    classifier.predict(np.zeros((batch_size, height, width, 3), dtype=np.float32))

    def load(batch: list[str]):
        pixels = [decode_image(Path(path).read_bytes(), contract) for path in batch]
        return scale_pixels(np.stack(pixels), contract.pixel_scaling)

    batches = [paths[start:start + batch_size] for start in range(0, len(paths), batch_size)]
    barrier.wait()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as prefetcher:
        upcoming = prefetcher.submit(load, batches[0])
        for index in range(len(batches)):
            inputs = upcoming.result()
            if index + 1 < len(batches):
                upcoming = prefetcher.submit(load, batches[index + 1])
            classifier.predict(inputs)
    finished = time.perf_counter()
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results.put({"images": len(paths), "started": started, "finished": finished, "peak_rss_mib": peak_rss_mib})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--processes", type=int, default=os.cpu_count())
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    paths = sorted(str(path) for path in args.folder.iterdir())
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(args.processes + 1)
    results = context.Queue()
    shares = [paths[index::args.processes] for index in range(args.processes)]
    processes = [context.Process(target=classify_share, args=(share, args.model, args.batch_size, barrier, results))
                 for share in shares]
    for process in processes:
        process.start()
    barrier.wait()
    started = time.perf_counter()
    reports = [results.get() for _ in processes]
    seconds = time.perf_counter() - started
    for process in processes:
        process.join()

    print(json.dumps({
        "images": sum(report["images"] for report in reports),
        "seconds": seconds,
        "peak_rss_mib": [round(report["peak_rss_mib"]) for report in reports],
    }))


if __name__ == "__main__":
    main()

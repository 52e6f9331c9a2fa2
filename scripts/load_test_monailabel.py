"""Load test of a running MONAI Label server for this bundle (see bundle/monailabel): real images uploaded to
`/infer/<model>?output=json`, first one at a time, then `concurrency` at a time, then corrupt uploads (truncated
JPEGs and text files) that must all be answered 4xx. Prints per phase: requests, failures, p50/p95 latency (ms) and
throughput (requests/s), then one JSON line with date, command, the client's device, versions and one row per phase
(also written to `--results_file` if given).

    .venv-monailabel/bin/python scripts/load_test_monailabel.py --url http://127.0.0.1:8000 \\
        --images ../shared/data/pediatric_cxr/test --results_file docs/results/monailabel_load.json
"""

import json
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle, islice
from pathlib import Path

import fire
import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".dcm")


def post(url: str, name: str, content: bytes, timeout: float) -> tuple[float, int, str]:
    """One upload -> (latency in s, HTTP status or 0 on a connection error, error text or "")."""
    start = time.perf_counter()
    try:
        response = requests.post(url, params={"output": "json"}, files={"file": (name, content)}, timeout=timeout)
        status, error = response.status_code, ("" if response.ok else response.text[:300])
    except requests.RequestException as err:
        status, error = 0, f"{type(err).__name__}: {err}"
    return time.perf_counter() - start, status, error


def run_phase(url: str, uploads: list[tuple[str, bytes]], concurrency: int, timeout: float) -> tuple[dict, list]:
    """Sends every upload with `concurrency` in flight; returns wall-clock summary and the (latency, status, error)s."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda u: post(url, u[0], u[1], timeout), uploads))
    wall = time.perf_counter() - start
    latencies_ms = np.array([r[0] for r in results]) * 1000.0
    return {"requests": len(results), "concurrency": concurrency,
            "p50_ms": round(float(np.percentile(latencies_ms, 50)), 1),
            "p95_ms": round(float(np.percentile(latencies_ms, 95)), 1),
            "throughput_per_s": round(len(results) / wall, 2), "wall_s": round(wall, 1)}, results


def corrupt_uploads(images: list[Path], n: int) -> list[tuple[str, bytes]]:
    """n bad uploads alternating a real JPEG cut to half its bytes and a text file named like an image."""
    bad = []
    for i, image in enumerate(islice(cycle(images), n)):
        if i % 2 == 0:
            data = image.read_bytes()
            bad.append((f"truncated_{image.name}", data[: len(data) // 2]))
        else:
            bad.append((f"notes_{i}.png", b"radiology report text, not an image\n" * 10))
    return bad


def main(url: str = "http://127.0.0.1:8000", model: str = "cxr_pneumonia_classification",
         images: str = "../shared/data/pediatric_cxr/test", requests_per_phase: int = 200, concurrency: int = 8,
         corrupt: int = 20, timeout: float = 120.0, device: str = "", results_file: str = "", output: str = "") -> None:
    """Args: url of the server; model id; images: folder searched recursively for real images (cycled);
    requests_per_phase: uploads in the sequential and in the concurrent phase; corrupt: bad uploads;
    device: free text naming the server's machine (recorded as `server`; `device` describes this client's machine);
    results_file: JSON path written atomically with what is printed; output: older name of results_file."""
    from custom.evaluation.timing import run_record
    from custom.io import write_json

    files = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{images}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    requests.get(f"{url.rstrip('/')}/info/", timeout=timeout).raise_for_status()
    infer_url = f"{url.rstrip('/')}/infer/{model}"
    uploads = [(p.name, p.read_bytes()) for p in islice(cycle(files), requests_per_phase)]

    rows = []
    for phase, workers in (("sequential", 1), ("concurrent", concurrency)):
        summary, results = run_phase(infer_url, uploads, workers, timeout)
        failures = [r for r in results if r[1] != 200]
        rows.append({"run": phase, **summary, "failures": len(failures),
                     "first_failure": failures[0][2] if failures else ""})
        print(f"{phase:>10}: {summary['requests']} requests x{workers}: p50 {summary['p50_ms']} ms, "
              f"p95 {summary['p95_ms']} ms, {summary['throughput_per_s']} req/s, failures {len(failures)}")

    summary, results = run_phase(infer_url, corrupt_uploads(files, corrupt), concurrency, timeout)
    statuses = [r[1] for r in results]
    bad = {"4xx": sum(400 <= s < 500 for s in statuses), "5xx": sum(s >= 500 for s in statuses),
           "other": sum(s < 400 for s in statuses),
           "statuses": {str(k): v for k, v in sorted(Counter(statuses).items())}}
    rows.append({"run": "corrupt", **summary, **bad})
    print(f"{'corrupt':>10}: {summary['requests']} requests x{concurrency}: 4xx {bad['4xx']}, 5xx {bad['5xx']}, "
          f"other {bad['other']} (statuses {bad['statuses']})")
    report = {**run_record(), "server": device or f"server at {url}", "url": url, "model": model,
              "images": len(files), "rows": rows}
    print(json.dumps(report))
    if results_file or output:
        write_json(report, results_file or output)


if __name__ == "__main__":
    fire.Fire(main)

"""Benchmark: publish and fetch through the OCI client against a local registry.

Input: nothing (it makes an artifact holding ``--mb`` MiB of random bytes, which zstd
cannot shrink). Output, one JSON object: seconds and MiB/s for a first publish
(monolithic PUT vs PATCH chunks), a re-publish (every blob already there), a fetch,
a fetch with the tarball already in place, and the peak RSS of this process (the
client streams: memory stays flat in the tarball size).

    .venv/bin/python benchmarks/registry.py [--mb 512]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.support.artifacts import make_artifact  # noqa: E402
from tests.support.registry import local_registry  # noqa: E402

from swstack import oci  # noqa: E402
from swstack.publish import publish_artifact  # noqa: E402


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_client(
    registry: str, art: Path, work: Path, mib: float, out: multiprocessing.Queue[dict[str, float]]
) -> None:
    """The measured part, in a fresh process so its peak RSS is the client's alone."""
    big = oci.RegistryClient(registry, chunk_size=1 << 40)  # one PUT per blob
    chunked = oci.RegistryClient(registry)  # 32 MiB PATCHes
    results = {
        "publish_monolithic_s": timed(lambda: publish_artifact(art, f"{registry}/b/mono:1", client=big)),
        "publish_chunked_s": timed(lambda: publish_artifact(art, f"{registry}/b/chunk:1", client=chunked)),
        "republish_s": timed(lambda: publish_artifact(art, f"{registry}/b/chunk:1")),
        "fetch_s": timed(lambda: oci.fetch_artifact(f"{registry}/b/chunk:1", work / "out")),
        "fetch_again_s": timed(lambda: oci.fetch_artifact(f"{registry}/b/chunk:1", work / "out")),
    }
    for key in ("publish_monolithic_s", "publish_chunked_s", "fetch_s"):
        results[key.replace("_s", "_mib_per_s")] = mib / results[key]
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec from the (big) parent.
    hwm = next(
        line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")
    )
    results["client_peak_rss_mib"] = int(hwm.split()[1]) / 1024
    out.put(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512, help="MiB of incompressible payload")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        art = make_artifact(work / "art", "bench", "1.0", payload=args.mb << 20)
        mib = sum(p.stat().st_size for p in art.iterdir()) / (1 << 20)
        ctx = multiprocessing.get_context("spawn")
        queue: multiprocessing.Queue[dict[str, float]] = ctx.Queue()
        with local_registry(work / "registry") as reg:
            child = ctx.Process(target=run_client, args=(reg.host, art, work, mib, queue))
            child.start()
            results = queue.get(timeout=1800)
            child.join()
        print(
            json.dumps(
                {"artifact_mib": round(mib, 1), **{k: round(v, 3) for k, v in results.items()}}, indent=2
            )
        )


if __name__ == "__main__":
    main()

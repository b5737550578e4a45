"""Benchmark: bytes an image push sends after a one-package change, layered vs. one layer.

Input: an artifact directory (argument; default: a generated pack-like environment of
python, numpy, openblas, jupyterlab, small packages and one pip package, ``--scale``
times the test sizes). Output: a table of what the first push and the update push send
for the layered image (the stack's ``max_layers``) and for a naive image holding the
same environment in one layer, and the ratio the issue targets (update push of the
layered image <= 5% of the naive one's).

A local registry (Debian's docker-registry on 127.0.0.1) and the engine (to push the
debootstrapped base there once) are started or used as the tests do.

    scripts/with-engine .venv/bin/python benchmarks/image_push.py [--scale 8] [--max-layers 12]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.imagekit import (  # noqa: E402
    DEFAULT_PIP,
    make_env_artifact,
    offline_site,
    push_base,
    py3_stack,
)
from tests.support.registry import local_registry  # noqa: E402

from swstack import log  # noqa: E402
from swstack.engine import DockerEngine  # noqa: E402
from swstack.image import build_image, push_image  # noqa: E402
from swstack.spec import Stack  # noqa: E402


def with_layers(stack: Stack, max_layers: int) -> Stack:
    return replace(stack, image=stack.image.model_copy(update={"max_layers": max_layers}))


def measure(stack: Stack, site: object, root: Path, scale: int, label: str) -> dict[str, float]:
    """Build and push v1, then v2 (one pip package bumped); the bytes each push sent."""
    v1 = make_env_artifact(root / label, "2026.11.21", scale=scale)
    bumped = {"labclient": ("1.0.1", DEFAULT_PIP["labclient"][1])}
    v2 = make_env_artifact(root / label, "2026.11.22", pip=bumped, scale=scale)
    started = time.monotonic()
    first = build_image(stack, site, REPO, v1)  # type: ignore[arg-type]
    build_seconds = time.monotonic() - started
    # A repository of its own per variant, so the naive image shares no env layer with the layered one.
    repository = f"{first.repository}-{label}"
    push1 = push_image(first, repository=repository)
    second = build_image(stack, site, REPO, v2)  # type: ignore[arg-type]
    push2 = push_image(second, repository=repository)
    base = sum(layer.size for layer in first.layers if layer.base)
    return {
        "layers": sum(1 for layer in first.layers if not layer.base),
        "build_s": build_seconds,
        "image": push1.bytes_total,
        "env": push1.bytes_total - base,
        "first_push": push1.bytes_uploaded,
        "update_push": push2.bytes_uploaded,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=8, help="multiply the generated file sizes")
    parser.add_argument("--max-layers", type=int, default=12)
    args = parser.parse_args(argv)
    log.setup(verbose=False)
    with (
        tempfile.TemporaryDirectory(prefix="swstack-bench-") as tmp,
        local_registry(Path(tmp) / "reg") as reg,
    ):
        push_base(DockerEngine(), reg.host)
        site = offline_site(reg.host)
        stack = py3_stack()
        layered = measure(with_layers(stack, args.max_layers), site, Path(tmp), args.scale, "layered")
        naive = measure(with_layers(stack, 2), site, Path(tmp), args.scale, "naive")
    mib = 1 << 20
    print(
        f"{'image':<10} {'env layers':>10} {'build s':>8} {'image MiB':>10} {'env MiB':>8} "
        f"{'1st push MiB':>12} {'update MiB':>10}"
    )
    for name, row in (("layered", layered), ("naive", naive)):
        print(
            f"{name:<10} {row['layers']:>10.0f} {row['build_s']:>8.1f} {row['image'] / mib:>10.2f} "
            f"{row['env'] / mib:>8.2f} {row['first_push'] / mib:>12.2f} {row['update_push'] / mib:>10.3f}"
        )
    to_full = layered["update_push"] / layered["image"]
    to_naive = layered["update_push"] / naive["update_push"]
    print(f"update push / full layered image: {to_full:.2%}")
    print(f"update push / naive one-layer update push: {to_naive:.2%} (target <= 5%)")
    return 0 if to_naive <= 0.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())

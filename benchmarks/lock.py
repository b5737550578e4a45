"""Benchmark: locking. Prints, measured side by side in one run on the offline site:

- a no-op lock (the lockfile is current) as a ratio to a real lock of the same stack;
- our real lock as a ratio to a bare ``rattler.solve`` of the same specs against the same
  channels (our overhead: staleness check, conda-lock models, pip resolution, writing);
- a warm rebuild (package cache filled) as a ratio to a cold one (empty package cache).

    .venv/bin/python benchmarks/lock.py [--stack py3] [--repeat 3] [--no-build]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from swstack import log
from swstack.lock import lock, plan_lock, virtual_package_specs
from swstack.site import Site, load_site
from swstack.spec import Stack, load_stack

REPO = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def bare_solve(stack: Stack, site: Site) -> None:
    import rattler

    plan = plan_lock(stack, site, REPO)
    virtual = [rattler.GenericVirtualPackage(rattler.PackageName(n), rattler.Version(v), rattler.BuildString(b))
               for n, v, b in virtual_package_specs(stack.lock.virtual_packages_for("linux-64"))]
    asyncio.run(rattler.solve(
        sources=[rattler.Channel(u) for u in plan.channel_urls], specs=list(stack.conda),
        gateway=rattler.Gateway(cache_dir=site.cache / "repodata"),
        platforms=["linux-64", "noarch"], virtual_packages=virtual))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", default="py3")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-build", action="store_true", help="skip the warm/cold rebuild comparison")
    args = parser.parse_args()
    log.setup()
    site = load_site(REPO / "sites/offline.toml", REPO)
    stack = load_stack(REPO / "stacks" / f"{args.stack}.toml")
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        shutil.copytree(REPO / "stacks", project / "stacks")
        (project / "pyproject.toml").write_text("")
        stack = replace(stack, source=project / "stacks" / f"{args.stack}.toml")
        lock(stack, site, project, force=True)  # warm the repodata cache once
        real = timed(lambda: lock(stack, site, project, force=True), args.repeat)
        noop = timed(lambda: lock(stack, site, project), args.repeat)
        solve = timed(lambda: bare_solve(stack, site), args.repeat)
        print(f"\nlocking {stack.stack_id} ({args.repeat} runs each, median)")
        print(f"  real lock          {real:8.3f} s")
        print(f"  no-op lock         {noop:8.3f} s   ratio to real lock: {noop / real:.3f}")
        print(f"  bare rattler.solve {solve:8.3f} s   our lock / bare solve: {real / solve:.2f}x")
        if args.no_build:
            return
        from swstack.build import run_build
        from swstack.sandbox import NamespaceSandbox

        cold_cache = project / "cold-cache"
        builds = []
        for label, cache in (("cold", cold_cache), ("warm", cold_cache)):
            built_site = replace(site, artifacts=project / f"artifacts-{label}", cache=cache)
            # the channel and lockfile stay where the site has them; only the package cache moves
            (cache / "pkgs").mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            run_build(stack, built_site, project, version=label, sandbox=NamespaceSandbox(), relock=False)
            builds.append((label, time.perf_counter() - started))
        (_, cold), (_, warm) = builds
        print(f"\nbuilding {stack.stack_id} (namespace sandbox)")
        print(f"  cold package cache {cold:8.1f} s")
        print(f"  warm package cache {warm:8.1f} s   ratio warm/cold: {warm / cold:.2f}")


if __name__ == "__main__":
    main()

"""Benchmark: swstack's pack against conda-pack (tar.zst, tar.gz) and ``tar | zstd -T0 -3``.

Every method runs as a process of its own, start-up included: ours as the build runs it
(``python -m swstack.pack``, its modules byte-compiled as an install has them), conda-pack's
CLI, and ``tar`` piped to ``zstd``. "swstack, scan given" is the exception: our pack called
in this process with conda-pack's scan of the prefix done before the timing, to show what
our writer costs apart from conda-pack's pure-Python scan. "the same + scan beside" is
``tar | zstd`` with conda-pack's scan (as our pack runs it) in a process beside it: the floor
of any pack that runs that scan, on the cores zstd wants too.

Input: a conda prefix (argument; default: the conda packages of the py3 stack, solved from
the offline channel ``doit channel`` builds in the cache, when it exists, else a sample
prefix made of one package holding a copy of this virtualenv's site-packages: the same mix
of .py, .pyc and .so files). Output: a table of median time, CPU and size per method, measured
side by side in rounds on the same warm page cache, and the ratios the issue sets targets for.

    .venv/bin/python benchmarks/pack.py [PREFIX] [--levels 1,3,6] [--skip-gzip] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bytecode import with_bytecode
from guards import positive, refuse_production_root

from swstack import log, pack, paths, proc

CHANNEL = paths.cache_dir() / "offline-channel"
# stacks/py3.toml's conda dependencies: the real py3 prefix but for its one pip package.
PY3_SPECS = ["python 3.11.*", "ipykernel >=6", "numpy >=1.26", "jupyterlab 4.*", "ipywidgets >=8",
             "jupyterhub-singleuser", "sitepaths"]
SDE = 1_700_000_000


@dataclass(frozen=True)
class Row:
    method: str
    seconds: float  # median
    cpu: float  # median user + system seconds, this process's threads and its children
    size: int


def run_once(method: str, run: Callable[[Path], Path], out_dir: Path, i: int) -> tuple[float, float, int]:
    """One run into a fresh directory: (seconds, cpu seconds, output size)."""
    work = out_dir / f"{method.replace(' ', '_')}-{i}"
    work.mkdir(parents=True)
    cpu0, started = cpu_seconds(), time.perf_counter()
    output = run(work)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu0
    size = output.stat().st_size
    shutil.rmtree(work)
    return seconds, cpu, size


def timed_rounds(methods: dict[str, Callable[[Path], Path]], repeat: int, out_dir: Path) -> list[Row]:
    """Medians over ``repeat`` rounds, each running every method once, in turn: a busy
    neighbour slows every method of a round alike instead of one method's every run."""
    runs: dict[str, list[tuple[float, float, int]]] = {m: [] for m in methods}
    for i in range(repeat):
        for method, run in methods.items():
            runs[method].append(run_once(method, run, out_dir, i))
    return [
        Row(m, statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs), rs[-1][2])
        for m, rs in runs.items()
    ]


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and its waited-for children: robust to a busy machine."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def swstack_pack(prefix: Path, compression: pack.Compression, level: int) -> Callable[[Path], Path]:
    """Our pack as the build runs it: ``python -m swstack.pack`` in a process of its own,
    its start-up included, as the other methods' commands are."""
    fmt = "tar.zst" if compression == "zstd" else "tar.gz"

    def run(work: Path) -> Path:
        argv = [sys.executable, "-m", "swstack.pack", "--prefix", prefix, "--out", work, "--stack", "bench",
                "--version", "1", "--format", fmt, "--level", str(level), "--source-date-epoch", str(SDE)]  # fmt: skip
        manifest = Path(proc.run(argv, what="swstack pack").stdout.strip())
        return next(manifest.parent.glob(f"*.{fmt}"))

    return run


def swstack_pack_here(prefix: Path, level: int) -> Callable[[Path], Path]:
    """Our pack called in this process (``pack_prefix``): what the "scan given" row changes."""

    def run(work: Path) -> Path:
        options = pack.PackOptions(SDE, compression="zstd", level=level)
        info = pack.ArtifactInfo(stack="bench", version="1")
        return pack.pack_prefix(prefix, work, options=options, info=info).tarball

    return run


def swstack_writer_only(prefix: Path, level: int) -> Callable[[Path], Path]:
    """Our pack with conda-pack's scan done beforehand, outside the timing: what the
    writer costs on its own (guess, plan, chunks, compression, checksums, fsync)."""
    from unittest import mock

    recorded = pack._pack_records(prefix, True, SDE)

    class ScanDone:
        def __init__(self, *args: object) -> None:
            pass

        def result(self, *args: object) -> list[pack.Entry]:
            return recorded

        def stop(self) -> None:
            pass

    def run(work: Path) -> Path:
        with mock.patch.object(pack, "_BackgroundScan", ScanDone):
            return swstack_pack_here(prefix, level)(work)

    return run


def conda_pack_cli(prefix: Path, fmt: str) -> Callable[[Path], Path]:
    exe = Path(sys.executable).parent / "conda-pack"

    def run(work: Path) -> Path:
        out = work / f"env.{fmt}"
        proc.run([exe, "-p", prefix, "-o", out, "--format", fmt, "--quiet"], what=f"conda-pack {fmt}")
        return out

    return run


def tar_zstd(prefix: Path) -> Callable[[Path], Path]:
    def run(work: Path) -> Path:
        out = work / "env.tar.zst"
        proc.run(
            ["tar", "--sort=name", "--use-compress-program=zstd -T0 -3", "-cf", out, "-C", prefix, "."],
            what="tar | zstd",
        )
        return out

    return run


def tar_zstd_beside_the_scan(prefix: Path) -> Callable[[Path], Path]:
    """``tar | zstd -T0 -3`` with conda-pack's scan of the prefix (as our pack runs it, in a
    process of its own, start-up included) running at the same time: the floor for any pack
    that lets conda-pack decide what the tarball holds, on the cores zstd also wants."""
    scan = [sys.executable, "-c", "import sys, gc; from pathlib import Path; from swstack import pack; gc.disable(); "
            f"pack._scan_prefix(Path(sys.argv[1]), True, {SDE})", prefix]  # fmt: skip
    compress = tar_zstd(prefix)

    def run(work: Path) -> Path:
        scanning = proc.spawn(scan)
        try:
            out = compress(work)
        finally:
            if scanning.wait() != 0:
                raise SystemExit("conda-pack's scan failed beside tar | zstd")
        return out

    return run


def default_prefix(scratch: Path) -> Path:
    """An env from the offline channel if it exists, else the sample prefix."""
    import rattler

    if (CHANNEL / "noarch" / "repodata.json").is_file():
        channel, specs = CHANNEL, PY3_SPECS
    else:
        channel, specs = sample_channel(scratch), ["bench-payload"]
    records = asyncio.run(
        rattler.solve([rattler.Channel(channel.as_uri())], specs, platforms=["linux-64", "noarch"])
    )
    prefix = scratch / "env"
    asyncio.run(rattler.install(records, prefix, cache_dir=scratch / "pkgs", show_progress=False))
    return prefix


def sample_channel(scratch: Path) -> Path:
    """A channel with one package copying this virtualenv's site-packages (~470 MiB, ~17k files)."""
    import rattler_build

    site = sysconfig.get_paths()["purelib"]
    recipe = scratch / "bench-payload" / "recipe.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text(
        "package: {name: bench-payload, version: '1.0'}\n"
        "build:\n  number: 0\n  script:\n"
        "    - mkdir -p $PREFIX/lib/python3.11\n"
        f"    - cp -a {site} $PREFIX/lib/python3.11/site-packages\n"
    )
    log.step(f"building the sample package from {site}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        rattler_build.build_recipes([recipe], output_dir=scratch / "channel", test="skip")
    return scratch / "channel"


def prefix_size(prefix: Path) -> tuple[int, int]:
    files = [p for p in prefix.rglob("*") if p.is_file() and not p.is_symlink()]
    return len(files), sum(p.stat().st_size for p in files)


def zstd_levels(text: str) -> list[int]:
    """An argparse type: comma-separated zstd levels, each 1 to 22."""
    try:
        levels = [int(x) for x in text.split(",")]
    except ValueError:
        levels = []
    if not levels or not all(1 <= lv <= 22 for lv in levels):
        raise argparse.ArgumentTypeError(f"{text!r}: give zstd levels 1 to 22, separated by commas")
    return levels


def conda_prefix(text: str) -> Path:
    """An argparse type: an existing conda prefix (conda-pack needs its conda-meta/)."""
    prefix = Path(text).resolve()
    if not (prefix / "conda-meta").is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not a conda prefix (no conda-meta/ directory)")
    return prefix


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prefix", nargs="?", type=conda_prefix, help="a conda prefix (holding conda-meta/)")
    parser.add_argument(
        "--levels", type=zstd_levels, default="1,3,6",
        help=f"zstd levels to measure for swstack; the default level, {pack.DEFAULT_ZSTD_LEVEL}, is always "
        "measured (the ratios are its)",
    )  # fmt: skip
    parser.add_argument("--repeat", type=positive, default=3, help="rounds; the report gives medians")
    parser.add_argument("--skip-gzip", action="store_true", help="skip the slow gzip rows (ours and conda-pack's)")
    args = parser.parse_args()
    log.setup(False)
    refuse_production_root()
    levels = sorted({*args.levels, pack.DEFAULT_ZSTD_LEVEL})
    with tempfile.TemporaryDirectory(prefix="swstack-bench-") as tmp:
        scratch = Path(tmp)
        with_bytecode(scratch / "pycache")
        prefix = args.prefix or default_prefix(scratch)
        count, size = prefix_size(prefix)
        print(f"prefix {prefix}: {count} files, {log.human_bytes(size)}; {len(levels)} zstd levels")
        out = scratch / "out"
        run_once("warm page cache", tar_zstd(prefix), out, 0)
        methods = {f"swstack zstd -{lv}": swstack_pack(prefix, "zstd", lv) for lv in levels}
        if not args.skip_gzip:
            methods["swstack gzip -6"] = swstack_pack(prefix, "gzip", 6)
        methods["swstack, scan given"] = swstack_writer_only(prefix, pack.DEFAULT_ZSTD_LEVEL)
        methods["conda-pack tar.zst"] = conda_pack_cli(prefix, "tar.zst")
        if not args.skip_gzip:
            methods["conda-pack tar.gz"] = conda_pack_cli(prefix, "tar.gz")
        methods["tar | zstd -T0 -3"] = tar_zstd(prefix)
        methods["the same + scan beside"] = tar_zstd_beside_the_scan(prefix)
        rows = timed_rounds(methods, args.repeat, out)
    print_report(rows, size, default_level=pack.DEFAULT_ZSTD_LEVEL)
    return 0


def print_report(rows: list[Row], tree_size: int, default_level: int) -> None:
    print(f"\n{'method':<22}{'seconds':>9}{'cpu s':>8}{'size':>12}{'ratio':>8}{'MiB/s':>8}")
    for r in rows:
        print(
            f"{r.method:<22}{r.seconds:>9.2f}{r.cpu:>8.2f}{log.human_bytes(r.size):>12}"
            f"{tree_size / r.size:>8.2f}{tree_size / r.seconds / 2**20:>8.0f}"
        )
    by = {r.method: r for r in rows}
    ours = by[f"swstack zstd -{default_level}"]
    cp, limit = by["conda-pack tar.zst"], by["tar | zstd -T0 -3"]
    print(f"\nswstack zstd -{default_level} (the default) against:")
    print(f"  conda-pack tar.zst: {cp.seconds / ours.seconds:.2f}x faster (target >= 2), "
          f"cpu {cp.cpu / ours.cpu:.2f}x less, size {ours.size / cp.size:.3f}x (target <= 1.15)")  # fmt: skip
    if "conda-pack tar.gz" in by:
        gz = by["conda-pack tar.gz"]
        print(
            f"  conda-pack tar.gz:  {gz.seconds / ours.seconds:.2f}x faster, size {ours.size / gz.size:.3f}x"
        )
    print(f"  tar | zstd -T0 -3:  time {ours.seconds / limit.seconds:.2f}x (target <= 1.1), "
          f"cpu {ours.cpu / limit.cpu:.2f}x, size {ours.size / limit.size:.3f}x")  # fmt: skip
    if "the same + scan beside" in by:
        floor = by["the same + scan beside"]
        print(f"  the floor of a pack that runs conda-pack's scan: tar | zstd -T0 -3 with the scan running "
              f"beside it takes {floor.seconds / limit.seconds:.2f}x tar | zstd alone")  # fmt: skip
    if "swstack, scan given" in by:
        given = by["swstack, scan given"]
        print(f"  the same with conda-pack's scan done beforehand: time {given.seconds / limit.seconds:.2f}x, "
              f"cpu {given.cpu / limit.cpu:.2f}x tar | zstd -T0 -3")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())

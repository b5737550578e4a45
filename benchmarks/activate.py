"""Benchmark: ``swstack activate`` against the seed's manual procedure, memory, and switch atomicity.

Input: nothing (it makes conda-pack-like artifacts with the test support: 1 MiB random
blobs plus a site-packages-like mass of small files, packed by pack's own chunked writer
and built for the scratch root's live path, as production artifacts are built for
/data0/sw/<name>, so nothing is relocated). Output, measured side by side in one run
under scratch roots whose sw.tmpfs lives on /dev/shm (a real tmpfs), each time the median
of ``--repeat`` rounds alternating the order, every tarball read into the page cache before
each round (RSS and bytes are from one run):

1. time from tarball to active: ours vs ``tar --zstd -xf`` into sw.<version> then
   ``rsync -a`` to the ramdisk (the seed's S2/P1 steps); target <= 0.7x. The same tree in
   an unchunked tarball (older artifacts) is activated too, for reference, and, as root
   with ``mkfs.erofs`` installed, a mount-based way (tree on the ramdisk, an EROFS image of
   it on disk, mounted read-only in a private mount namespace), measured only;
2. a one-package update (one small package's files rewritten, repacked with pack's own
   chunked writer) activated over the live version, against the full activation: target
   <= 0.1x; and the ramdisk bytes of the two versions kept side by side (a process holds
   the old copy) against one version: target <= 1.1x;
3. peak RSS of ``swstack activate`` for two tarball sizes (flat in size);
4. a probe reading <root>/sw/py3 in a loop while versions switch, counting missing and
   mixed observations: ours (``swstack set-version``) vs ``ln -sfn``, ``rm -f`` + ``ln -s``
   and ``rsync --delete``; target 0 missing, 0 mixed for ours.

With ``--artifact DIR`` (a built artifact, e.g. ``artifacts/py3/<version>``), sections 1 and 2
run on that real tree instead, and 3 and 4 are skipped: the artifact is packed again by pack's
writer as version 2.0 and, with every file of one of its packages (``--package``, from its
conda-meta record) rewritten, as 2.1. A real artifact is built for its production prefix
(/data0/sw/<name>), so each run (the seed's, and ours: full activation, then the update with
the old copy held) happens in a private mount namespace (bubblewrap) where a scratch root is
/data0 and a fresh tmpfs is its sw.tmpfs: nothing is relocated, and the machine's own /data0
is never touched.

Scratch trees go to the temporary directory and /dev/shm and are removed at the end,
after a failure or a Ctrl-C too; it refuses to run with the temporary directory under /data0.

    .venv/bin/python benchmarks/activate.py [--small-mb 32] [--big-mb 256] [--files 3000] [--switches 20] [--repeat 3]
    .venv/bin/python benchmarks/activate.py --artifact artifacts/py3/<version> [--package packaging] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bytecode import with_bytecode  # noqa: E402
from guards import positive, refuse_production_root  # noqa: E402
from tests.support.host import bwrap_argv, make_artifact, repack_tree, swstack_argv, unpack_artifact  # noqa: E402

from swstack.manifest import Manifest, TarballChunk  # noqa: E402


def scratch_root(base: Path, name: str) -> Path:
    root = base / name
    root.mkdir()
    shm = Path(tempfile.mkdtemp(prefix=f"swstack-bench-{name}-", dir="/dev/shm"))
    (root / "sw.tmpfs").symlink_to(shm)
    return root


LOAD: list[float] = []  # the load average when the run started: the machine may be shared
CPU: dict[str, list[float]] = {}  # what -> CPU seconds (user + system, children included) per run


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(argv: list[str], what: str = "") -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of one child process; its CPU time goes to ``CPU[what]``.

    The RSS comes from GNU time, not from wait4 here: a child forked from this process
    would report our own (large, artifact-building) RSS as its peak until it execs.
    """
    rss_file = Path(tempfile.mktemp(prefix="swstack-rss-"))
    try:
        start = time.perf_counter()
        subprocess.run(
            ["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss_file), *argv],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        elapsed = time.perf_counter() - start
        rss, user, system = rss_file.read_text().split()[-3:]
    finally:  # GNU time writes the file even when the command fails or is interrupted
        rss_file.unlink(missing_ok=True)
    if what:
        CPU.setdefault(what, []).append(float(user) + float(system))
    return elapsed, int(rss)


def seed_procedure(tarball: Path, root: Path, version: str, stack: str = "py3") -> float:
    cpu, start = children_cpu(), time.perf_counter()
    vdir = root / f"sw.{version}" / stack
    vdir.mkdir(parents=True)
    subprocess.run(["tar", "--zstd", "-xf", str(tarball), "-C", str(vdir)], check=True)
    (root / "sw.hdd").unlink(missing_ok=True)
    (root / "sw.hdd").symlink_to(f"sw.{version}")
    subprocess.run(["rsync", "-a", f"{root}/sw.{version}/", f"{root}/sw.tmpfs/"], check=True)
    elapsed = time.perf_counter() - start
    CPU.setdefault("seed", []).append(children_cpu() - cpu)
    return elapsed


def one_package_update(artifact: Path, work: Path, version: str) -> tuple[Path, int]:
    """``artifact`` again as ``version`` with one package's modules rewritten; (artifact, files changed)."""
    tree = work / f"tree-{version}"
    manifest = unpack_artifact(artifact, tree)
    package = tree / "lib/python3.11/site-packages/pkg000"
    changes = {
        str(f.relative_to(tree)): f.read_bytes() + f"# {version}\n".encode() for f in sorted(package.iterdir())
    }
    out = repack_tree(tree, manifest, work / f"art-{version}", version, changes)
    set_aside(tree, work)
    return out, len(changes)


def chunked(artifact: Path, work: Path, version: str) -> Path:
    """The same tree packed again by pack's own (chunked) writer."""
    tree = work / f"tree-{version}"
    manifest = unpack_artifact(artifact, tree)
    out = repack_tree(tree, manifest, work / f"art-{version}", version, {})
    set_aside(tree, work)
    return out


def set_aside(tree: Path, work: Path) -> None:
    """Move a tree out of the way, deleted with the rest at the end: on an ext4 without a
    journal, every file created within a minute or more of a mass deletion pays for
    stepping over the deleted inodes, which would slow the timed runs after it."""
    trash = work / "trash"
    trash.mkdir(exist_ok=True)
    tree.rename(trash / tree.name)


def chunks_read(old: Path, new: Path) -> tuple[int, int, int, int]:
    """(chunks, bytes) of ``new`` that ``old`` does not have, and (chunks, bytes) in all."""
    have = {c.sha256 for c in _chunks(old)}
    table = _chunks(new)
    fresh = [c for c in table if c.sha256 not in have]
    return len(fresh), sum(c.size for c in fresh), len(table), sum(c.size for c in table)


def _chunks(artifact: Path) -> tuple[TarballChunk, ...]:
    tarball = Manifest.load(artifact / "manifest.json").tarball
    assert tarball is not None
    return tarball.chunks


def tree_bytes(*trees: Path) -> int:
    """Bytes of the files under ``trees``, a hardlinked inode counted once (du -b semantics)."""
    res = subprocess.run(["du", "-s", "-b", "-c", *map(str, trees)], check=True, capture_output=True, text=True)
    return int(res.stdout.splitlines()[-1].split()[0])


def verdict(value: float, target: float) -> str:
    return f"{value:.2f}x (target <= {target}x: {'met' if value <= target else 'NOT MET'})"


def probe_loop(live: str, stop_file: str) -> None:
    """Read version.txt and the in-tree manifest through one directory fd until ``stop_file`` appears."""
    reads = missing = mixed = 0
    while reads % 256 or not os.path.exists(stop_file):
        reads += 1
        try:
            fd = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            missing += 1
            continue
        try:
            with open(os.open("share/version.txt", os.O_RDONLY, dir_fd=fd)) as fh:
                a = fh.read().strip()
            with open(os.open("conda-meta/swstack-manifest.json", os.O_RDONLY, dir_fd=fd)) as fh:
                b = json.load(fh)["version"]
            if a != b:
                mixed += 1
        except (FileNotFoundError, ValueError, KeyError):
            missing += 1
        finally:
            os.close(fd)
    print(json.dumps({"reads": reads, "missing": missing, "mixed": mixed}))


class Probe:
    """A separate process (no shared GIL with the switching) running ``probe_loop``."""

    def __init__(self, live: Path):
        self.stop_file = Path(tempfile.mktemp(prefix="swstack-probe-stop-"))
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--probe", str(live), str(self.stop_file)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.reads = self.missing = self.mixed = 0

    def __enter__(self) -> Probe:
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_file.touch()
        out, _ = self.proc.communicate(timeout=60)
        self.stop_file.unlink()
        data = json.loads(out)
        self.reads, self.missing, self.mixed = data["reads"], data["missing"], data["mixed"]


def erofs_mode(artifact: Path, base: Path, i: int) -> float | None:
    """Tarball -> tree on the ramdisk (swstack, minimal configuration on /dev/shm) -> EROFS image of it
    on disk (mkfs.erofs) -> mounted read-only (a private mount namespace): the persistent copy is one
    file instead of a tree. None where mkfs.erofs or the mount is unavailable."""
    if shutil.which("mkfs.erofs") is None or os.geteuid() != 0:
        return None
    shm = Path(tempfile.mkdtemp(prefix="swstack-bench-erofs-", dir="/dev/shm"))
    root = base / "ours"
    root.symlink_to(shm)  # the live path stays <base>/ours/sw/py3, as the artifacts were built for
    image, mnt = base / f"erofs-{i}.img", base / f"erofs-{i}.mnt"
    mnt.mkdir()
    version = Manifest.load(artifact / "manifest.json").version
    try:
        start = time.perf_counter()
        subprocess.run(swstack_argv("activate", str(artifact), "--root", str(root)), check=True, capture_output=True)
        subprocess.run(
            ["mkfs.erofs", "--quiet", "--preserve-mtime", str(image), str(shm / f"sw.{version}" / "py3")],
            check=True,
        )
        mounted = subprocess.run(
            ["unshare", "-m", "sh", "-c", f"mount -t erofs -o ro {image} {mnt} && cat {mnt}/share/version.txt"],
            capture_output=True, text=True,
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        return elapsed if mounted.returncode == 0 else None
    finally:
        root.unlink()
        shutil.rmtree(shm, ignore_errors=True)


class Roots:
    """Scratch roots; every run of ours uses the same path, <base>/ours, so the artifacts built for
    its live path need no relocation (a finished root is renamed away, never deleted mid-run:
    deleting thousands of files slows the next ones' creation on ext4)."""

    def __init__(self, base: Path):
        self.base = base
        self.shm: list[Path] = []

    def new(self, name: str) -> Path:
        root = scratch_root(self.base, name)
        self.shm.append(Path(os.readlink(root / "sw.tmpfs")))
        return root

    def retire(self, root: Path) -> None:
        root.rename(self.base / f"{root.name}-done-{len(self.shm)}")


def file_creation_ms(base: Path, count: int = 2000) -> float:
    """What creating an empty file costs on the benchmark's disk now, in milliseconds: on an
    ext4 without a journal it grows for a while after a mass deletion (docs/host.md), and
    both procedures put some 3,300 files there, so it says how to read the run."""
    probe = base / "creation-probe"
    probe.mkdir()
    start = time.perf_counter()
    for i in range(count):
        os.close(os.open(probe / str(i), os.O_CREAT | os.O_WRONLY, 0o644))
    return (time.perf_counter() - start) * 1000 / count


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small-mb", type=positive, default=32, help="MiB of blobs in the small artifact (RSS only)")
    ap.add_argument("--big-mb", type=positive, default=256, help="MiB of blobs in the timed artifact")
    ap.add_argument("--files", type=positive, default=3000, help="small files per artifact")
    ap.add_argument("--switches", type=positive, default=20, help="version switches the readers watch")
    ap.add_argument("--repeat", type=positive, default=3, help="runs of each timing; medians are reported")
    ap.add_argument("--artifact", type=Path, help="a built artifact directory: sections 1 and 2 on its real tree")
    ap.add_argument("--package", default="packaging", help="with --artifact: the package whose files the update "
                    "rewrites (default: %(default)s)")
    args = ap.parse_args()
    refuse_production_root()
    if args.artifact is not None:
        real_artifact_runs(args.artifact, check_real_artifact(args.artifact, args.package), args.package, args.repeat)
        return
    LOAD.append(os.getloadavg()[0])
    base = Path(tempfile.mkdtemp(prefix="swstack-bench-"))
    roots = Roots(base)
    try:
        with_bytecode(base / "pycache")
        create_ms = file_creation_ms(base)
        live = str(base / "ours" / "sw" / "py3")
        plain = make_artifact(
            base / "art-big", version="2.0", prefix=live, payload=args.big_mb << 20, small_files=args.files
        )
        big = chunked(plain, base, "2.0")
        small = chunked(
            make_artifact(
                base / "art-small", version="1.0", prefix=live, payload=args.small_mb << 20, small_files=args.files
            ),
            base,
            "1.0",
        )
        update, changed = one_package_update(big, base, "2.1")
        big_tar, plain_tar = next(big.glob("*.tar.zst")), next(plain.glob("*.tar.zst"))
        print(
            f"artifacts: big {big_tar.stat().st_size >> 20} MiB compressed in {len(_chunks(big))} chunks "
            f"(pack's writer), {args.files} small files; small {args.small_mb} MiB; median of {args.repeat} runs"
        )

        seed_t: list[float] = []
        full_t: list[float] = []
        update_t: list[float] = []
        plain_t: list[float] = []
        erofs_t: list[float] = []
        rss_big = one_version = two_versions = 0
        for i in range(args.repeat):
            for tarball in (big_tar, plain_tar, next(update.glob("*.tar.zst"))):
                tarball.read_bytes()  # the same page cache state for every method

            def seed(i: int = i) -> None:
                seed_t.append(seed_procedure(big_tar, roots.new(f"seed-{i}"), "2.0"))

            def ours() -> None:
                nonlocal rss_big, one_version, two_versions
                root = roots.new("ours")
                elapsed, rss_big = timed(swstack_argv("activate", str(big), "--root", str(root)), "full")
                full_t.append(elapsed)
                tmpfs = Path(os.readlink(root / "sw.tmpfs"))
                one_version = tree_bytes(tmpfs / ".py3@2.0")
                holder = subprocess.Popen(["sleep", "600"], cwd=tmpfs / ".py3@2.0")
                try:
                    update_t.append(timed(swstack_argv("activate", str(update), "--root", str(root)), "update")[0])
                    two_versions = tree_bytes(tmpfs / ".py3@2.0", tmpfs / ".py3@2.1")
                finally:
                    holder.kill()
                    holder.wait()
                roots.retire(root)

            for run in (seed, ours) if i % 2 == 0 else (ours, seed):
                run()
            root = roots.new("ours")
            plain_t.append(timed(swstack_argv("activate", str(plain), "--root", str(root)))[0])
            roots.retire(root)
            if (mounted := erofs_mode(big, base, i)) is not None:
                erofs_t.append(mounted)

        t_seed, t_ours, t_update, t_plain = map(median, (seed_t, full_t, update_t, plain_t))
        print(f"\n1. tarball -> active ({args.big_mb} MiB + {args.files} files)")
        print(f"   seed (tar --zstd -xf, then rsync -a to the ramdisk): {t_seed:6.2f} s")
        print(f"   swstack activate (verify + extract + copy + switch): {t_ours:6.2f} s")
        print(f"   ratio ours/seed: {verdict(t_ours / t_seed, 0.7)}")
        print(
            f"   CPU (user + system, children included): seed {median(CPU['seed']):.2f} s, "
            f"ours {median(CPU['full']):.2f} s; load average before: {LOAD[0]:.1f}, after: {os.getloadavg()[0]:.1f}; "
            f"creating a file on this disk before the runs: {create_ms:.3f} ms"
        )
        print(f"   (reference: the same tree as an unchunked tarball: {t_plain:.2f} s, {t_plain / t_seed:.2f}x)")
        if erofs_t:
            t_erofs = median(erofs_t)
            print(
                f"   (mount-based, not a product mode: extract to the ramdisk, mkfs.erofs image on disk, mount: "
                f"{t_erofs:.2f} s, {t_erofs / t_seed:.2f}x)"
            )

        fresh, fresh_bytes, total, total_bytes = chunks_read(big, update)
        manifest = Manifest.load(update / "manifest.json")
        print(f"\n2. one-package update ({changed} of {manifest.file_count} files changed), old copy kept in use")
        print(f"   chunks read: {fresh} of {total} ({fresh_bytes / (1 << 20):.1f} of {total_bytes >> 20} MiB)")
        print(f"   CPU of the update: {median(CPU['update']):.2f} s")
        print(f"   full activation {t_ours:6.2f} s, update activation {t_update:6.2f} s: "
              f"{verdict(t_update / t_ours, 0.1)}")
        print(f"   ramdisk bytes: one version {one_version >> 20} MiB, both kept {two_versions >> 20} MiB: "
              f"{verdict(two_versions / one_version, 1.1)}")

        root = roots.new("ours")
        _, rss_small = timed(swstack_argv("activate", str(small), "--root", str(root)))
        roots.retire(root)
        ratio_size = big_tar.stat().st_size / next(small.glob("*.tar.zst")).stat().st_size
        print("\n3. peak RSS of swstack activate")
        print(
            f"   small tarball: {rss_small / 1024:6.1f} MiB   big tarball ({ratio_size:.1f}x larger): "
            f"{rss_big / 1024:6.1f} MiB   ratio {rss_big / rss_small:.2f} (target: flat)"
        )

        # 4. atomicity probe. Both versions on the host (relocated there: not timed).
        mem_root = roots.new("mem")
        for art in (small, big):
            subprocess.run(
                swstack_argv("activate", str(art), "--root", str(mem_root)), check=True, capture_output=True
            )
        probe_switches(mem_root, args.switches)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        for d in roots.shm:
            shutil.rmtree(d, ignore_errors=True)


def probe_switches(mem_root: Path, switches: int) -> None:
    """Readers of <root>/sw/py3 while versions 1.0 and 2.0 switch: ours, then three baselines."""
    live = mem_root / "sw" / "py3"
    results: dict[str, tuple[Probe, int]] = {}
    with Probe(live) as probe:
        for i in range(switches):
            subprocess.run(
                swstack_argv("set-version", "1.0" if i % 2 == 0 else "2.0", "--root", str(mem_root)),
                check=True,
                capture_output=True,
            )
    results["swstack set-version"] = probe, switches
    tmpfs = Path(os.path.realpath(mem_root / "sw.tmpfs"))
    # The two ramdisk copies stay as a pair of trees for the baselines (set-version dropped 1.0's).
    if not (tmpfs / ".py3@1.0").exists():
        subprocess.run(["cp", "-a", str(mem_root / "sw.1.0" / "py3"), str(tmpfs / ".py3@1.0")], check=True)
    n = switches * 10
    with Probe(live) as probe:
        script = f"for i in $(seq {n}); do ln -sfn .py3@1.0 py3; ln -sfn .py3@2.0 py3; done"
        subprocess.run(["sh", "-c", script], cwd=tmpfs, check=True)
    results["ln -sfn (coreutils 9)"] = probe, 2 * n
    with Probe(live) as probe:
        script = f"for i in $(seq {n}); do rm -f py3; ln -s .py3@1.0 py3; rm -f py3; ln -s .py3@2.0 py3; done"
        subprocess.run(["sh", "-c", script], cwd=tmpfs, check=True)
    results["rm + ln -s (ln -sfn < 9)"] = probe, 2 * n
    rs_live = tmpfs / "rsync-live"
    subprocess.run(["cp", "-a", str(mem_root / "sw.2.0" / "py3"), str(rs_live)], check=True)
    os.replace(tmpfs / "py3", tmpfs / "py3.bak")
    (tmpfs / "py3").symlink_to("rsync-live")
    with Probe(live) as probe:
        for i in range(switches):
            src = mem_root / ("sw.1.0" if i % 2 == 0 else "sw.2.0") / "py3"
            subprocess.run(["rsync", "-a", "-I", "--delete", f"{src}/", f"{rs_live}/"], check=True)
    results["rsync --delete (seed S3)"] = probe, switches
    print("\n4. readers of <root>/sw/py3 while versions switch (fd-relative reads of two files)")
    for name, (p, count) in results.items():
        print(f"   {name:<26} switches {count:>5}  reads {p.reads:>8}  missing {p.missing:>6}  mixed {p.mixed:>6}")
    ours = results["swstack set-version"][0]
    bad = ours.missing + ours.mixed
    print(f"   swstack set-version: target 0 missing, 0 mixed: {'met' if bad == 0 else 'NOT MET'}")


# ---------------------------------------------------------------- a real artifact (--artifact)

PRIVATE_ROOT = Path("/data0")  # inside the private mount namespace only
RAMDISK_SIZE = 8 << 30  # the namespace's own tmpfs: an upper bound, it holds only what is written


def check_real_artifact(artifact: Path, package: str) -> Manifest:
    """The artifact's manifest, or exit naming what is wrong (before any work)."""
    try:
        manifest = Manifest.load(artifact / "manifest.json")
    except (OSError, ValueError) as exc:
        sys.exit(f"{sys.argv[0]}: --artifact {artifact}: no readable manifest.json ({exc})")
    if manifest.tarball is None or not manifest.prefix.startswith(f"{PRIVATE_ROOT}/sw/"):
        sys.exit(f"{sys.argv[0]}: --artifact {artifact}: built for {manifest.prefix}, not a chunked tarball "
                 f"built for {PRIVATE_ROOT}/sw/<name>")
    if package not in {p.name for p in manifest.packages if p.manager == "conda"}:
        sys.exit(f"{sys.argv[0]}: --package {package}: {artifact} has no conda package of that name")
    if shutil.which("bwrap") is None:
        sys.exit(f"{sys.argv[0]}: --artifact needs bubblewrap (bwrap) for its private {PRIVATE_ROOT}")
    return manifest


def real_pair(artifact: Path, work: Path, package: str) -> tuple[Path, Path, int]:
    """The artifact packed again as 2.0 and, with every regular file of ``package`` rewritten, as 2.1."""
    tree = work / "tree-real"
    manifest = unpack_artifact(artifact, tree)
    records = sorted(tree.glob(f"conda-meta/{package}-[0-9]*.json"))
    old = repack_tree(tree, manifest, work / "art-real-2.0", "2.0", {})
    changes = {}
    for name in json.loads(records[0].read_text())["files"]:
        path = tree / name
        if path.is_file() and not path.is_symlink():
            changes[name] = path.read_bytes() + b"\n"  # a trailing newline: valid in text and ignored after a pyc
    new = repack_tree(tree, manifest, work / "art-real-2.1", "2.1", changes)
    set_aside(tree, work)
    return old, new, len(changes)


def in_private_root(work: Path, argv: list[str]) -> dict[str, float]:
    """Run this script's ``argv`` (an --inside mode) with a fresh scratch root as /data0; its JSON answer."""
    root = Path(tempfile.mkdtemp(prefix="root-", dir=work))
    cmd = [sys.executable, __file__, "--inside", *argv]
    out = subprocess.run(bwrap_argv(root, cmd, tmpfs_size=RAMDISK_SIZE), check=True, capture_output=True, text=True)
    set_aside(root, work)  # renamed, not deleted: see set_aside
    answer: dict[str, float] = json.loads(out.stdout.splitlines()[-1])
    return answer


def inside(mode: str, old: Path, new: Path) -> None:
    """In the private namespace: the seed's procedure, or ours (full activation, then the update with
    the old ramdisk copy held by a process); prints the timings as one JSON line."""
    root = PRIVATE_ROOT
    stack = Manifest.load(old / "manifest.json").stack_id
    if mode == "seed":
        tarball = next(old.glob("*.tar.zst"))
        elapsed = seed_procedure(tarball, root, "2.0", stack)
        print(json.dumps({"seed": elapsed, "seed_cpu": CPU["seed"][0]}))
        return
    argv = swstack_argv("activate", str(old), "--root", str(root))
    full, _ = timed(argv, "full")
    old_copy = root / "sw.tmpfs" / f".{stack}@2.0"
    one = tree_bytes(old_copy)
    holder = subprocess.Popen(["sleep", "600"], cwd=old_copy)
    try:
        update, _ = timed(swstack_argv("activate", str(new), "--root", str(root)), "update")
        two = tree_bytes(old_copy, root / "sw.tmpfs" / f".{stack}@2.1")
    finally:
        holder.kill()
        holder.wait()
    # The floor of any update that gives each version a tree of its own by hardlinks: only the
    # links and directories, by cp (C, nothing read, nothing checked), on disk and on the ramdisk.
    link_disk = timed(["cp", "-al", str(root / "sw.2.0" / stack), str(root / "cp-al")])[0]
    link_ram = timed(["cp", "-al", str(old_copy), str(root / "sw.tmpfs" / "cp-al")])[0]
    print(json.dumps({"full": full, "full_cpu": CPU["full"][0], "update": update, "update_cpu": CPU["update"][0],
                      "one": one, "two": two, "link_disk": link_disk, "link_ram": link_ram}))  # fmt: skip


def real_artifact_runs(artifact: Path, manifest: Manifest, package: str, repeat: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="swstack-bench-"))
    try:
        with_bytecode(base / "pycache")
        assert manifest.tarball is not None
        print(f"artifact: {manifest.stack_id} {manifest.version}, {manifest.file_count} files, "
              f"{manifest.total_size >> 20} MiB, built for {manifest.prefix}; packing it again as 2.0 and 2.1 ...")
        old, new, changed = real_pair(artifact, base, package)
        print(f"\n== {PRIVATE_ROOT} on this machine's disk ({fs_type(base)}, {percent_used(base)}% used)")
        real_rounds(base, old, new, manifest, package, changed, repeat)
        with fresh_ext4(base, manifest.total_size * (2 * repeat + 2)) as disk:
            if disk is not None:
                print(f"\n== {PRIVATE_ROOT} on a fresh ext4 file system (a loop-mounted image), "
                      f"as a host's own data disk")
                real_rounds(disk, old, new, manifest, package, changed, repeat)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def real_rounds(work: Path, old: Path, new: Path, manifest: Manifest, package: str, changed: int,
                repeat: int) -> None:  # fmt: skip
    """The seed and ours, ``repeat`` rounds alternating the order, each run in a fresh private root under ``work``."""
    runs: dict[str, list[float]] = {}
    for i in range(repeat):
        for tarball in (*old.glob("*.tar.zst"), *new.glob("*.tar.zst")):
            tarball.read_bytes()  # the same page cache state for every method
        for mode in ("seed", "ours") if i % 2 == 0 else ("ours", "seed"):
            for key, value in in_private_root(work, [mode, str(old), str(new)]).items():
                runs.setdefault(key, []).append(value)
    t_seed, t_full, t_update = median(runs["seed"]), median(runs["full"]), median(runs["update"])
    print(f"1. tarball -> active (the real tree, {manifest.total_size >> 20} MiB in {manifest.file_count} "
          f"files; median of {repeat} runs, each in a private {PRIVATE_ROOT})")
    print(f"   seed (tar --zstd -xf, then rsync -a to the ramdisk): {t_seed:6.2f} s")
    print(f"   swstack activate (verify + extract + copy + switch): {t_full:6.2f} s")
    print(f"   ratio ours/seed: {verdict(t_full / t_seed, 0.7)}")
    print(f"   CPU: seed {median(runs['seed_cpu']):.2f} s, ours {median(runs['full_cpu']):.2f} s")
    fresh, fresh_bytes, total, total_bytes = chunks_read(old, new)
    print(f"2. one-package update ({package}: {changed} of {manifest.file_count} files changed), "
          f"old copy kept in use")
    print(f"   chunks read: {fresh} of {total} ({fresh_bytes / (1 << 20):.1f} of {total_bytes >> 20} MiB)")
    print(f"   CPU of the update: {median(runs['update_cpu']):.2f} s")
    print(f"   full activation {t_full:6.2f} s, update activation {t_update:6.2f} s: "
          f"{verdict(t_update / t_full, 0.1)}")
    t_disk, t_ram = median(runs["link_disk"]), median(runs["link_ram"])
    print(f"   the floor of a tree of hardlinks per version: cp -al of the tree {t_disk:.2f} s on disk, "
          f"{t_ram:.2f} s on the ramdisk: {max(t_disk, t_ram) / t_full:.2f}x a full activation "
          f"if both ran at once, {(t_disk + t_ram) / t_full:.2f}x one after the other")
    one, two = runs["one"][-1], runs["two"][-1]
    print(f"   ramdisk bytes: one version {int(one) >> 20} MiB, both kept {int(two) >> 20} MiB: "
          f"{verdict(two / one, 1.1)}")


def fs_type(path: Path) -> str:
    res = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(path)], capture_output=True, text=True)
    return res.stdout.strip() or "unknown"


def percent_used(path: Path) -> int:
    """As ``df`` counts it: used blocks over those a user may fill (the root's reserve left out)."""
    st = os.statvfs(path)
    used = st.f_blocks - st.f_bfree
    return round(100 * used / (used + st.f_bavail)) if used + st.f_bavail else 0


@contextlib.contextmanager
def fresh_ext4(base: Path, size: int) -> Iterator[Path | None]:
    """A new ext4 file system in a sparse image under ``base``, mounted (loop) for the block; None,
    with a line saying why, where that cannot be done (not root, no mkfs.ext4, no loop device)."""
    image, mount = base / "ext4.img", base / "ext4"
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        print("\n== a fresh ext4 file system: skipped (it needs root and mkfs.ext4)")
        yield None
        return
    mount.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(size + (1 << 30))
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    mounted = made.returncode == 0 and subprocess.run(
        ["mount", "-o", "loop", str(image), str(mount)], capture_output=True, text=True
    ).returncode == 0
    if not mounted:
        print(f"\n== a fresh ext4 file system: skipped (mkfs.ext4 or the loop mount failed: {made.stderr.strip()})")
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--probe":
        probe_loop(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "--inside":
        inside(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()

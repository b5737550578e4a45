"""Install plan (JSON) -> populated prefix at its production path. Runs *inside* the sandbox.

The host side (``build.py``) turns the lockfile into a plain JSON plan, so this step needs
nothing but the standard library, py-rattler and the prefix's own pip: conda packages are
fetched (file:// or http), checked against the locked sha256, linked by py-rattler with a
shared package cache; pip packages go in with ``--no-deps`` and ``--require-hashes``; then
kernel specs, foreign kernel-spec directories and the owner. Never solves.

    python -m swstack.install PLAN.json
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import log, proc
from .errors import BuildError, SwstackError
from .fsutil import atomic_output
from .manifest import dist_info_name_version, normalise_pip_name


@dataclass(frozen=True)
class CondaItem:
    name: str
    url: str  # the canonical URL the lockfile names (recorded in conda-meta)
    sha256: str
    md5: str
    fetch: str = ""  # where this site fetches it (its mirror); "" = from ``url``

    @property
    def source(self) -> str:
        return self.fetch or self.url


@dataclass(frozen=True)
class PipItem:
    name: str
    url: str  # the canonical URL the lockfile names: a file's URL, an index-relative name, or "git+URL@sha"
    sha256: str | None
    fetch: str = ""  # a URL pip installs directly (a site's wheelhouse file, the git mirror)
    version: str = ""
    index: str = ""  # else: install ``name==version`` from this index, hash-checked


@dataclass(frozen=True)
class KernelItem:
    name: str
    display_name: str
    language: str
    argv: list[str]
    env: dict[str, str]
    interrupt_mode: str


@dataclass(frozen=True)
class InstallPlan:
    prefix: str
    platform: str
    conda: list[CondaItem]
    pip: list[PipItem]
    kernels: list[KernelItem]
    kernel_spec_dirs: list[str]  # paths inside the sandbox
    owner: str | None  # "uid:gid" or "user:group"
    package_cache: str
    extensions: list[str]

    def to_json(self) -> str:
        from dataclasses import asdict

        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> InstallPlan:
        data = json.loads(text)
        return cls(
            prefix=data["prefix"],
            platform=data["platform"],
            conda=[CondaItem(**c) for c in data["conda"]],
            pip=[PipItem(**p) for p in data["pip"]],
            kernels=[KernelItem(**k) for k in data["kernels"]],
            kernel_spec_dirs=data["kernel_spec_dirs"],
            owner=data["owner"],
            package_cache=data["package_cache"],
            extensions=data["extensions"],
        )


# ---- conda ---------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _mirror_of(url: str) -> str:
    """A package URL -> its channel (or directory) URL, for messages."""
    return url.rsplit("/", 2)[0] if url.endswith((".conda", ".tar.bz2")) else url.rsplit("/", 1)[0]


def _fetch(item: CondaItem, downloads: Path) -> Path:
    """The package archive on local disk, its sha256 checked against the lockfile."""
    parsed = urllib.parse.urlparse(item.source)
    file_name = Path(parsed.path).name
    cached = downloads / item.sha256[:16] / file_name
    if cached.is_file() and _sha256(cached) == item.sha256:
        return cached
    mirror = _mirror_of(item.source)
    # The package cache is shared by every build: two builds fetching one package each write
    # their own partial file, and a refused one removes only its own.
    with atomic_output(cached) as partial:
        if parsed.scheme == "file":
            check_local_file(item.name, item.url, item.source, None)
            shutil.copyfile(urllib.parse.unquote(parsed.path), partial)
        else:
            try:
                with urllib.request.urlopen(item.source, timeout=60) as response, open(partial, "wb") as out:
                    shutil.copyfileobj(response, out)
            except OSError as exc:
                raise BuildError(f"{item.name}: cannot fetch {file_name} from the mirror {mirror}: {exc}") from None
        actual = _sha256(partial)
        if actual != item.sha256:
            raise BuildError(
                f"{item.name}: {file_name} from the mirror {mirror} has sha256 {actual}, the lockfile says "
                f"{item.sha256}; the mirror is not a copy of what was locked: rebuild it or re-lock"
            )
    return cached


def _record(archive: Path) -> Any:
    """The package's record, read from the fetched archive (which the linker then reads)."""
    import rattler

    record: Any = rattler.RepoDataRecord.from_package_archive(archive)
    if asyncio.iscoroutine(record):
        record = asyncio.run(record)
    record.url = archive.as_uri()
    record.channel = archive.parent.as_uri()
    return record


def record_origins(prefix: Path, items: list[CondaItem]) -> None:
    """Write each package's canonical URL and channel into its ``conda-meta`` record.

    The linker saw the fetched copy (a mirror's file, the download cache); the installed
    environment names where the package really comes from, as the lockfile does.
    """
    by_file = {item.url.rsplit("/", 1)[-1]: item for item in items}
    for path in sorted((prefix / "conda-meta").glob("*.json")):
        data = json.loads(path.read_text())
        item = by_file.get(str(data.get("fn", "")))
        if item is None:
            continue
        data["url"] = item.url
        data["channel"] = item.url.rsplit("/", 2)[0]
        # extracted_package_dir and link.source stay: conda-pack finds the package cache
        # through them (and blanks them in what it packs).
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _package_cache(path: Path) -> Any:
    """The shared cache of extracted packages, each file checked against its package's
    ``paths.json`` (sha256) before it is linked: rattler's default check is that the files exist, so
    an extracted file edited in place went into every later build unseen; a
    package that fails the check is extracted again from its sha256-checked archive."""
    import rattler

    return rattler.PackageCache.new_layered([path], validation_mode=rattler.ValidationMode.full())


def install_conda(plan: InstallPlan) -> None:
    import rattler

    cache = Path(plan.package_cache)
    downloads = cache / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    records = []
    with log.progress("fetching conda packages", total=len(plan.conda)) as bar:
        for item in plan.conda:
            records.append(_record(_fetch(item, downloads)))
            bar.advance()
    log.info(f"linking {len(records)} conda packages into {plan.prefix}")
    try:
        asyncio.run(
            rattler.install(
                records,
                target_prefix=plan.prefix,
                package_cache=_package_cache(cache / "pkgs"),
                platform=rattler.Subdir(plan.platform) if hasattr(rattler, "Subdir") else None,
                execute_link_scripts=True,
                show_progress=False,
            )
        )
    except SwstackError:
        raise
    except Exception as exc:
        raise BuildError(f"installing conda packages into {plan.prefix} failed: {exc}") from None
    record_origins(Path(plan.prefix), plan.conda)


# ---- pip -----------------------------------------------------------------------------------------------


def check_local_file(name: str, locked_url: str, fetch: str, sha256: str | None) -> None:
    """A file a local (file://) mirror should hold for a package: present, with the locked bytes.

    Raises one line naming the package and the mirror; URLs of other schemes are left to the fetch.
    """
    parsed = urllib.parse.urlparse(fetch)
    if parsed.scheme != "file":
        return
    path = Path(urllib.parse.unquote(parsed.path))
    mirror = _mirror_of(fetch)
    if not path.is_file():
        raise BuildError(f"{name}: the mirror {mirror} has no {path.name} (locked as {locked_url}); "
                         "rebuild the mirror or re-lock")
    if sha256:
        actual = _sha256(path)
        if actual != sha256:
            raise BuildError(f"{name}: {path.name} in the mirror {mirror} has sha256 {actual}, the lockfile says "
                             f"{sha256}; the mirror is not a copy of what was locked: rebuild it or re-lock")


def _pip_requirement(item: PipItem) -> str:
    if item.fetch:
        return f"{item.name} @ {item.fetch} --hash=sha256:{item.sha256}"
    return f"{item.name}=={item.version} --hash=sha256:{item.sha256}"


def install_pip(plan: InstallPlan) -> None:
    if not plan.pip:
        return
    python = Path(plan.prefix) / "bin" / "python"
    hashed = [p for p in plan.pip if p.sha256]
    vcs = [p for p in plan.pip if not p.sha256]
    # Only what the plan names: no index, no user or machine pip configuration.
    quiet_env = {"PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INPUT": "1"}
    common = [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
              "--disable-pip-version-check", "--no-cache-dir", "--no-warn-script-location", "--no-compile"]
    base = [*common, "--no-index"]
    for item in hashed:
        check_local_file(item.name, item.url, item.fetch, item.sha256)
    # Files named by URL go in together; files named by index and version, one index at a time.
    groups: dict[str, list[PipItem]] = {}
    for item in hashed:
        groups.setdefault("" if item.fetch else item.index, []).append(item)
    for index, items in sorted(groups.items()):
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as reqs:
            for item in items:
                reqs.write(_pip_requirement(item) + "\n")
        where = f" from {index}" if index else ""
        log.info(f"pip: installing {len(items)} locked packages{where} with hash checking")
        argv = [*common, "--index-url", index] if index else base
        proc.run([*argv, "--require-hashes", "-r", reqs.name], extra_env=quiet_env, error=BuildError,
                 what=f"pip install (locked files{where})")
        os.unlink(reqs.name)
    for item in vcs:
        # A git dependency is pinned by its commit sha (pip cannot hash-check a checkout). It is
        # built into a wheel with the sandbox's own Python and build tools, which the stack's
        # environment need not contain, then installed like any wheel.
        source = item.fetch or item.url
        log.info(f"pip: building and installing {item.name} from {source}")
        with tempfile.TemporaryDirectory() as wheels:
            proc.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation",
                      "--disable-pip-version-check", "--no-cache-dir", "-w", wheels, f"{source}#egg={item.name}"],
                     extra_env=quiet_env, error=BuildError, what=f"building {item.name} from git")
            built = sorted(Path(wheels).glob("*.whl"))
            if len(built) != 1:
                raise BuildError(f"building {item.name} from {source} gave {len(built)} wheels, expected one")
            proc.run([*base, str(built[0])], extra_env=quiet_env, error=BuildError, what=f"pip install {item.name}")
    for item in plan.pip:
        record_origin(Path(plan.prefix), item)


# pip records where a package installed from a URL came from (``direct_url.json``, PEP 610):
# here a site's mirror file, or a wheel built in a temporary directory from the git mirror.
# That is a path of the building machine, different in every build; the record says instead
# what the lockfile names, as conda-meta does for conda packages.


def canonical_direct_url(item: PipItem) -> dict[str, Any] | None:
    """The PEP 610 record of where ``item`` comes from, by the lockfile; None for a package
    installed by name from an index (pip writes no record for those)."""
    if item.url.startswith("git+"):
        repository, _, commit = item.url[len("git+"):].rpartition("@")
        return {"url": repository, "vcs_info": {"commit_id": commit, "vcs": "git"}}
    if item.fetch:
        return {"url": item.url, "archive_info": {"hash": f"sha256={item.sha256}", "hashes": {"sha256": item.sha256}}}
    return None


def dist_info_of(prefix: Path, name: str) -> Path:
    """The ``*.dist-info`` directory pip installed ``name`` into (by its METADATA's Name)."""
    for dist_info in sorted(prefix.glob("lib/python*/site-packages/*.dist-info")):
        if normalise_pip_name(dist_info_name_version(dist_info)[0]) == normalise_pip_name(name):
            return dist_info
    raise BuildError(f"pip reported {name} installed, but no {name}*.dist-info with its metadata is in {prefix}")


def record_origin(prefix: Path, item: PipItem) -> None:
    """Write ``item``'s ``direct_url.json`` as the lockfile names its origin, and its line in RECORD."""
    import base64
    import csv
    import io

    origin = canonical_direct_url(item)
    if origin is None:
        return
    dist_info = dist_info_of(prefix, item.name)
    data = (json.dumps(origin, sort_keys=True) + "\n").encode()
    (dist_info / "direct_url.json").write_bytes(data)
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    entry = f"{dist_info.name}/direct_url.json"
    record = dist_info / "RECORD"
    line = [entry, f"sha256={digest}", str(len(data))]
    rows = [row for row in csv.reader(io.StringIO(record.read_text(encoding="utf-8"))) if row]
    if any(row[0] == entry for row in rows):  # pip lists the record it wrote: replaced in its place
        rows = [line if row[0] == entry else row for row in rows]
    else:
        rows.append(line)
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    record.write_text(out.getvalue(), encoding="utf-8")


# ---- kernels, owner ------------------------------------------------------------------------------------


# Kernels start python through this script so that the interpreter's path is the tree's
# resolved, versioned directory (sw.tmpfs/.py3@V), not the live link sw/py3. CPython keeps
# the path it was started through as sys.prefix, so a kernel started through the live link
# would import the next version's files after a switch; through the resolved path it keeps
# importing from its own tree until it restarts. The script holds no prefix, so packing and
# relocation leave it as it is, and a host keeps the tree alive while the process maps it.
LAUNCHER = "bin/swstack-launch"
LAUNCHER_TEXT = """\
#!/bin/sh
# Written by swstack: run this tree's python through the tree's resolved directory, so a
# process started before a version switch keeps importing from its own version.
bin=$(cd -P -- "$(dirname -- "$0")" && pwd) || exit 1
exec "$bin/python" "$@"
"""
_PYTHONS = ("{prefix}/bin/python", "{prefix}/bin/python3")


def kernel_argv(argv: list[str], prefix: str, launcher: bool = True) -> list[str]:
    """A spec's argv with the tree's python started through the launcher, if there is one (pure)."""
    if launcher and argv and argv[0] in _PYTHONS:
        argv = ["{prefix}/" + LAUNCHER, *argv[1:]]
    return [a.replace("{prefix}", prefix) for a in argv]


def write_launcher(prefix: Path) -> None:
    path = prefix / LAUNCHER
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(LAUNCHER_TEXT)
    path.chmod(0o755)


def check_kernel_program(name: str, argv: list[str], prefix: str, spec_file: Path | None = None) -> None:
    """A ``[[kernels]]`` entry (or a ``kernel_spec_dirs`` spec, ``spec_file``) must start a program the
    tree has: one that names a path in the prefix that was not installed would only fail when a user
    opens the kernel."""
    program = argv[0] if argv else ""
    if program.startswith(prefix.rstrip("/") + "/"):
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            where, fix = ((f" ({spec_file})", "the argv in that kernel.json") if spec_file
                          else ("", "the kernel's argv in [[kernels]]"))
            raise BuildError(
                f"kernel {name!r}{where}: its argv starts {program}, which the installed tree does not have (or may "
                f"not run); add the package that provides it to the stack's dependencies, or fix {fix}"
            )
    elif "/" not in program and shutil.which(program, path=os.path.join(prefix, "bin")) is None:
        log.warn(f"kernel {name!r}: {program!r} is not in {prefix}/bin; it is looked up on the user's PATH "
                 f"when the kernel starts (write {{prefix}}/bin/{program} to start this tree's)")


def install_kernels(plan: InstallPlan) -> list[str]:
    """Write the stack's kernel specs and copy foreign ones; return the installed kernel names."""
    kernels_dir = Path(plan.prefix) / "share" / "jupyter" / "kernels"
    kernels_dir.mkdir(parents=True, exist_ok=True)
    launcher = (Path(plan.prefix) / "bin" / "python").exists()
    if launcher:
        write_launcher(Path(plan.prefix))
    names = []
    spec_files = _spec_files(plan)
    for kernel in plan.kernels:
        argv = kernel_argv(list(kernel.argv), plan.prefix, launcher)
        check_kernel_program(kernel.name, argv, plan.prefix)
        spec = {
            "argv": argv,
            "display_name": kernel.display_name,
            "language": kernel.language,
            "interrupt_mode": kernel.interrupt_mode,
            "env": kernel.env,
            "metadata": {"debugger": True},
        }
        target = kernels_dir / kernel.name
        target.mkdir(parents=True, exist_ok=True)
        (target / "kernel.json").write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
        names.append(kernel.name)
    for spec_file in spec_files:
        try:
            json.loads(spec_file.read_text())
        except ValueError as exc:
            raise BuildError(f"{spec_file}: not valid JSON ({exc}); fix or remove this kernel spec") from None
        target = kernels_dir / spec_file.parent.name
        if target.exists():  # a package's spec of that name (ipykernel's python3): the directory's wins
            shutil.rmtree(target)
        shutil.copytree(spec_file.parent, target)
        if _start_through_launcher(target / "kernel.json", plan.prefix, launcher):
            log.info(f"kernel {target.name} (from {spec_file.parent}): starts this tree's python through {LAUNCHER}")
        kept = json.loads((target / "kernel.json").read_text())  # as rewritten: the launcher is the tree's
        kept_argv = kept.get("argv") if isinstance(kept, dict) else None
        if isinstance(kept_argv, list) and all(isinstance(a, str) for a in kept_argv):
            check_kernel_program(target.name, kept_argv, plan.prefix, spec_file)
        names.append(spec_file.parent.name)
    names += _packages_kernels(kernels_dir, set(names), plan.prefix, launcher)
    return sorted(names)


def _spec_files(plan: InstallPlan) -> list[Path]:
    """The ``kernel.json`` files of the spec directories, checked: a kernel name comes from one
    place (a ``[[kernels]]`` entry and a directory, or two directories, giving the same one would
    silently replace each other)."""
    seen = {k.name: "[[kernels]]" for k in plan.kernels}
    found = []
    for directory in plan.kernel_spec_dirs:
        for spec_file in sorted(Path(directory).glob("*/kernel.json")):
            name = spec_file.parent.name
            if name in seen:
                raise BuildError(f"kernel {name!r} comes from {seen[name]} and from {spec_file}; keep one of them")
            seen[name] = str(spec_file)
            _refuse_symlinks(spec_file.parent)
            found.append(spec_file)
    return found


def _refuse_symlinks(kernel_dir: Path) -> None:
    """A kernel spec directory is copied into the tree, which is packed and published: a symlink in it
    (to the site's signing key, say) would put a file of the building machine there, so none is taken."""
    links = [kernel_dir] if kernel_dir.is_symlink() else []
    for root, dirs, files in os.walk(kernel_dir):
        links += [Path(root) / n for n in (*dirs, *files) if (Path(root) / n).is_symlink()]
    if links:
        raise BuildError(f"kernel_spec_dirs: {links[0]} is a symlink; put the file itself in the kernel's "
                         "directory (a kernel spec is copied into the tree, never what a link points at)")


def _packages_kernels(kernels_dir: Path, ours: set[str], prefix: str, launcher: bool) -> list[str]:
    """Kernel specs a package ships (ipykernel's ``python3``) and the stack does not write: served
    by the tree too, so one that starts a bare ``python`` (the first on the user's PATH, maybe
    another stack's) is made to start this tree's, as the stack's own kernels do."""
    names = []
    for spec_file in sorted(kernels_dir.glob("*/kernel.json")):
        name = spec_file.parent.name
        if name in ours:
            continue
        try:
            spec = json.loads(spec_file.read_text())
        except ValueError as exc:
            raise BuildError(f"{spec_file}: not valid JSON ({exc}); a package shipped it broken") from None
        if _start_through_launcher(spec_file, prefix, launcher, spec):
            log.info(f"kernel {name} (shipped by a package): starts this tree's python, not the first on PATH")
        names.append(name)
    return names


def _start_through_launcher(spec_file: Path, prefix: str, launcher: bool, spec: object = None) -> bool:
    """Rewrite a spec whose argv starts the tree's python (a bare ``python``, or the prefix's
    ``bin/python``, as a hand-kept spec writes it) to start it through the launcher, as the stack's
    own kernels do: started through the live link, a kernel imports the next version's files
    after a host switches. Whether the spec was rewritten."""
    if spec is None:
        try:
            spec = json.loads(spec_file.read_text())
        except ValueError:
            return False  # checked (and refused) where the spec is read first
    argv = spec.get("argv") if isinstance(spec, dict) else None
    pythons = ("python", "python3", *(p.replace("{prefix}", prefix) for p in _PYTHONS), *_PYTHONS)
    if not (isinstance(spec, dict) and isinstance(argv, list) and argv and argv[0] in pythons):
        return False
    new = kernel_argv([_PYTHONS[0], *argv[1:]], prefix, launcher)
    if new == argv:
        return False
    spec["argv"] = new
    spec_file.write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    return True


def check_extensions(plan: InstallPlan) -> None:
    """Prebuilt JupyterLab extensions are packages: each one named must be installed and ship a labextension."""
    if not plan.extensions:
        return
    labext = Path(plan.prefix) / "share" / "jupyter" / "labextensions"
    if not labext.is_dir() or not any(labext.iterdir()):
        raise BuildError(f"{labext}: no JupyterLab extension was installed, though the stack names {plan.extensions}")
    installed = {p.name.split("-")[0].lower() for p in (Path(plan.prefix) / "conda-meta").glob("*.json")}
    for site in (Path(plan.prefix) / "lib").glob("python*/site-packages"):
        installed |= {p.name.split("-")[0].lower().replace("_", "-") for p in site.glob("*.dist-info")}
    missing = [e for e in plan.extensions
               if e.lower() not in installed and e.lower().replace("-", "_") not in installed]
    if missing:
        raise BuildError(f"JupyterLab extension package(s) not installed: {', '.join(missing)}")


def compile_bytecode(plan: InstallPlan) -> None:
    """Byte-compile the tree once, here: a read-only /data0/sw would otherwise make every
    process recompile on import. Hash-based pycs keep the tree the same from build to build
    (timestamp pycs would embed the install time) and are never re-validated against sources,
    which cannot change in a released tree. A file that does not compile fails the build:
    shipped, it would fail on import on every host."""
    python = Path(plan.prefix) / "bin" / "python"
    if not python.exists():
        return
    log.info("byte-compiling the tree")
    lib = plan.prefix + "/lib"
    argv = [str(python), "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash"]
    result = proc.run([*argv, "-j", "0", lib], error=BuildError, what="compileall", check=False)
    if result.returncode != 0:
        # Parallel workers share one stdout, so their error reports can interleave; once more in one
        # process (everything good is compiled already) gives a report that names each file cleanly.
        result = proc.run([*argv, lib], error=BuildError, what="compileall", check=False)
        raise BuildError(compile_failure(result.stdout + result.stderr, lib, result.returncode))


_COMPILE_ERROR = re.compile(r"^\*\*\* Error compiling '(?P<path>.+)'\.\.\.$", re.MULTILINE)


def compile_failure(output: str, lib: str, returncode: int) -> str:
    """One message naming each file compileall could not compile and the error it gave (pure)."""
    blocks = list(_COMPILE_ERROR.finditer(output))
    if not blocks:
        tail = output.strip().splitlines()[-1:] or ["no output"]
        return f"byte-compiling {lib} failed (exit {returncode}): {tail[0]}"
    failures = []
    for i, match in enumerate(blocks):
        end = blocks[i + 1].start() if i + 1 < len(blocks) else len(output)
        lines = [line.strip() for line in output[match.end():end].splitlines() if line.strip()]
        error = lines[-1] if lines else ""  # "SyntaxError: invalid syntax"
        where = next((m.group(1) for m in (re.search(r", line (\d+)", line) for line in lines) if m), "")
        failures.append(f"{match.group('path')}" + (f":{where}" if where else "") + (f": {error}" if error else ""))
    shown = "; ".join(failures[:5]) + (f"; and {len(failures) - 5} more" if len(failures) > 5 else "")
    return (f"byte-compiling {lib} failed for {len(failures)} file(s): {shown}; "
            "fix or drop the package that ships it")


def remove_install_litter(plan: InstallPlan) -> None:
    """Files the installer leaves that do not belong in a released tree."""
    # A CACHEDIR.TAG would make backup tools skip the deployed tree.
    tag = Path(plan.prefix) / "CACHEDIR.TAG"
    if tag.exists():
        tag.unlink()


def apply_owner(plan: InstallPlan) -> None:
    # Only root can give files away; otherwise the owner is set in the tarball's headers.
    if plan.owner and os.geteuid() == 0:
        proc.run(["chown", "-R", "--no-dereference", plan.owner, plan.prefix], error=BuildError,
                 what=f"chown {plan.owner}")


def run(plan: InstallPlan) -> list[str]:
    prefix = Path(plan.prefix)
    if prefix.exists() and any(prefix.iterdir()):
        raise BuildError(f"{prefix} is not empty: a build always starts from an empty prefix")
    install_conda(plan)
    install_pip(plan)
    kernels = install_kernels(plan)
    check_extensions(plan)
    compile_bytecode(plan)
    remove_install_litter(plan)
    apply_owner(plan)
    return kernels


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    log.setup()
    if len(args) != 1:
        print("usage: python -m swstack.install PLAN.json", file=sys.stderr)
        return 2
    try:
        plan = InstallPlan.from_json(Path(args[0]).read_text())
        kernels = run(plan)
    except SwstackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    log.info(f"installed {plan.prefix} (kernels: {', '.join(kernels) or 'none'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The artifact tarball -> layer blobs: one streaming pass sends each member to its planned
layer's deterministic tar (gzip, no timestamp); the user layer; the OCI layout's index.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, BinaryIO

from .. import log
from ..layers import Layer, ancestors, layer_of
from ..oci import OCI_INDEX, OCI_MANIFEST, canonical_json
from ..tarwriter import TarStream, copy_header, dir_header, header
from .plan import ImagePlan, LayerBlob
from .tarball import member_path, open_tarball

GZIP_LEVEL = 6  # what docker itself uses; zstd layers need engines newer than Debian 12's
REF_NAME = "org.opencontainers.image.ref.name"


class _HashWriter:
    """A write-only file that hashes and counts what passes through to ``sink``."""

    def __init__(self, sink: BinaryIO | _HashWriter | gzip.GzipFile | None) -> None:
        self.sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        if self.sink is not None:
            self.sink.write(data)
        return len(data)

    def flush(self) -> None:
        return None

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class LayerWriter:
    """One layer being written: deterministic tar -> (diff_id hash) -> gzip -> (digest hash) -> file."""

    def __init__(self, path: Path, level: int = GZIP_LEVEL) -> None:
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._compressed = _HashWriter(self._file)
        # No file name and mtime 0 in the gzip header: the blob depends on the content only.
        self._gzip = gzip.GzipFile(
            filename="", mode="wb", fileobj=self._compressed, compresslevel=level, mtime=0
        )
        self._plain = _HashWriter(self._gzip)
        self._tar = TarStream(self._plain)

    def add(self, info: tarfile.TarInfo, data: IO[bytes] | None = None) -> None:
        self._tar.add(info, data)

    def has_dir(self, name: str) -> bool:
        return self._tar.has_dir(name)

    def close(self) -> tuple[str, str, int]:
        """Finish the blob; return (digest, diff_id, size)."""
        self._tar.close()
        self._gzip.close()
        self._file.close()
        return self._compressed.digest, self._plain.digest, self._compressed.size

    def abort(self) -> None:
        """Drop the blob. The tar and gzip streams are closed here, writing nowhere: left open, each
        writes its last bytes into the closed file when collected, and fails (a Ctrl-C would end in
        a traceback per layer)."""
        self._compressed.sink = None
        for stream in (self._tar, self._gzip, self._file):
            with contextlib.suppress(Exception):
                stream.close()


def write_env_layers(
    tarball: Path, layers: Sequence[Layer], prefix: str, epoch: int, blobs: Path, level: int = GZIP_LEVEL
) -> list[LayerBlob]:
    """Stream the tarball once, sending each member to its planned layer's tar under ``prefix``."""
    where = layer_of(layers)
    root = prefix.strip("/")
    prefix_dirs = [*ancestors(root), root]
    tmp = [blobs / f".layer-{i}.partial" for i in range(len(layers))]
    writers = [LayerWriter(path, level) for path in tmp]
    dirs: dict[str, tarfile.TarInfo] = {d: dir_header(d, epoch) for d in prefix_dirs}
    try:
        with open_tarball(tarball) as tar, log.progress("image layers", total=None, unit="files") as bar:
            for member in tar:
                rel = member_path(member.name)
                target = f"{root}/{rel}" if rel else root
                if member.isdir():
                    dirs[target] = copy_header(member, target)
                if rel not in where:
                    continue  # a directory some file needs: written with that file
                writer = writers[where[rel]]
                for parent in [*prefix_dirs, *(f"{root}/{a}" for a in ancestors(rel))]:
                    if not writer.has_dir(parent):
                        writer.add(dirs.get(parent) or dir_header(parent, epoch))
                info = copy_header(member, target)
                writer.add(info, tar.extractfile(member) if member.isfile() else None)
                bar.advance()
        results = []
        for layer, writer, path in zip(layers, writers, tmp, strict=True):
            digest, diff_id, size = writer.close()
            os.replace(path, blobs / digest.removeprefix("sha256:"))
            results.append(LayerBlob(layer.name, digest, diff_id, size))
        return results
    except BaseException:
        for writer, path in zip(writers, tmp, strict=True):
            writer.abort()
            path.unlink(missing_ok=True)
        raise


def write_user_layer(passwd: str, group: str, plan: ImagePlan, epoch: int, blobs: Path) -> LayerBlob:
    """``/etc/passwd``, ``/etc/group`` and the home directory of the notebook user."""
    path = blobs / ".layer-user.partial"
    writer = LayerWriter(path)
    try:
        writer.add(dir_header("etc", epoch))
        for name, text in (("etc/group", group), ("etc/passwd", passwd)):
            data = text.encode()
            writer.add(header(name, size=len(data), mtime=epoch), io.BytesIO(data))
        writer.add(dir_header("home", epoch))
        writer.add(dir_header(plan.home.strip("/"), epoch, plan.uid, plan.uid, 0o750))
        digest, diff_id, size = writer.close()
    except BaseException:
        writer.abort()
        path.unlink(missing_ok=True)
        raise
    os.replace(path, blobs / digest.removeprefix("sha256:"))
    return LayerBlob("user", digest, diff_id, size)


def write_layout(root: Path, digest: str, size: int, tags: Sequence[str]) -> None:
    """``oci-layout`` and ``index.json``: the layout other tools (skopeo, crane) read."""
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    manifests = [
        {"mediaType": OCI_MANIFEST, "digest": digest, "size": size, "annotations": {REF_NAME: tag}}
        for tag in tags
    ]
    (root / "index.json").write_bytes(
        canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})
    )

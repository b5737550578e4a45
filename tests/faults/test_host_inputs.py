"""Broken and hostile inputs other than archive members: empty and non-tar tarballs, manifests of the
wrong shape, bad names and versions, release files, host config files, OCI references and state files.

Each one, run against a host with a version live, ends in exit 11 and one error line, with no
traceback; the live version, the staging directory and the ramdisk are left as they were. After the
corpus: ``set-version``'s arguments, ``--wait``, and tarballs without their ``.sha256`` side file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tests.support.host import make_artifact, seal, swstack_argv
from tests.support.registry import Route, artifact_routes, scripted_registry

from swstack.manifest import Manifest  # noqa: E402
from swstack.oci import OCI_INDEX, OCI_MANIFEST


def _tarball(art: Path) -> Path:
    return next(art.glob("*.tar.zst"))


def _reseal_with(art: Path, data: bytes) -> None:
    tarball = _tarball(art)
    tarball.write_bytes(data)
    seal(art, tarball, Manifest.load(art / "manifest.json"))


def _edit_manifest(art: Path, **changes: object) -> None:
    raw = json.loads((art / "manifest.json").read_text())
    raw.update(changes)
    (art / "manifest.json").write_text(json.dumps(raw))


def empty_tarball(art: Path, tmp: Path) -> list[str]:
    _reseal_with(art, b"")
    return [str(art)]


def not_a_tar(art: Path, tmp: Path) -> list[str]:
    _reseal_with(art, os.urandom(4096))
    return [str(art)]


def zstd_of_garbage(art: Path, tmp: Path) -> list[str]:
    import zstandard

    _reseal_with(art, zstandard.ZstdCompressor().compress(os.urandom(10_000)))
    return [str(art)]


def manifest_not_json(art: Path, tmp: Path) -> list[str]:
    (art / "manifest.json").write_text("{not json")
    return [str(art)]


def manifest_not_utf8(art: Path, tmp: Path) -> list[str]:
    (art / "manifest.json").write_bytes(b'{"stack": "\xff\xfe"}')
    return [str(art)]


def manifest_list(art: Path, tmp: Path) -> list[str]:
    (art / "manifest.json").write_text("[1, 2]")
    return [str(art)]


def version_is_a_number(art: Path, tmp: Path) -> list[str]:
    _edit_manifest(art, version=20260101)
    return [str(art)]


def version_with_slash(art: Path, tmp: Path) -> list[str]:
    _edit_manifest(art, version="../../etc")
    return [str(art)]


def version_with_newline(art: Path, tmp: Path) -> list[str]:
    _edit_manifest(art, version="2026.01.02\nswstack: all good")
    return [str(art)]


def stack_reserved(art: Path, tmp: Path) -> list[str]:
    _edit_manifest(art, stack="tmpfs")
    return [str(art)]


def prefix_relative(art: Path, tmp: Path) -> list[str]:
    _edit_manifest(art, prefix="sw/py3")
    return [str(art)]


def prefix_root(art: Path, tmp: Path) -> list[str]:
    _edit_manifest(art, prefix="/")
    return [str(art)]


def packages_wrong_type(art: Path, tmp: Path) -> list[str]:
    _edit_manifest(art, packages={"numpy": "1"})
    return [str(art)]


def tarball_name_escapes(art: Path, tmp: Path) -> list[str]:
    raw = json.loads((art / "manifest.json").read_text())
    raw["tarball"]["name"] = "../../../../etc/passwd"
    (art / "manifest.json").write_text(json.dumps(raw))
    return [str(art)]


def huge_total_size(art: Path, tmp: Path) -> list[str]:
    _edit_manifest(art, total_size=1 << 60)
    return [str(art)]


def release_bad_toml(art: Path, tmp: Path) -> list[str]:
    (tmp / "release.toml").write_text("[stacks\npy3 = ")
    return ["--release", str(tmp / "release.toml")]


def release_wrong_shape(art: Path, tmp: Path) -> list[str]:
    (tmp / "release.json").write_text(json.dumps({"stacks": ["py3"]}))
    return ["--release", str(tmp / "release.json")]


def release_missing(art: Path, tmp: Path) -> list[str]:
    return ["--release", str(tmp / "no-such-release.toml")]


def release_json_list(art: Path, tmp: Path) -> list[str]:
    (tmp / "release.json").write_text("[]")
    return ["--release", str(tmp / "release.json")]


def release_not_utf8(art: Path, tmp: Path) -> list[str]:
    (tmp / "release.toml").write_bytes(b'[stacks]\npy3 = "caf\xe9"\n')
    return ["--release", str(tmp / "release.toml")]


def release_source_a_number(art: Path, tmp: Path) -> list[str]:
    (tmp / "release.toml").write_text(f'# the release\n[stacks]\npy3 = "{art}"\nantares = 5\n')
    return ["--release", str(tmp / "release.toml")]


def release_json_source_a_list(art: Path, tmp: Path) -> list[str]:
    (tmp / "release.json").write_text(json.dumps({"stacks": {"py3": [str(art)]}}))
    return ["--release", str(tmp / "release.json")]


def release_unknown_key(art: Path, tmp: Path) -> list[str]:
    (tmp / "release.toml").write_text(f'stack = "py3"\n[stacks]\npy3 = "{art}"\n')
    return ["--release", str(tmp / "release.toml")]


def release_names_another_stack(art: Path, tmp: Path) -> list[str]:
    (tmp / "release.toml").write_text(f'[stacks]\nantares = "{art}"\n')  # it holds py3
    return ["--release", str(tmp / "release.toml")]


def side_file_empty(art: Path, tmp: Path) -> list[str]:
    next(art.glob("*.sha256")).write_text("")
    return [str(art)]


def _host_config(art: Path, tmp: Path, text: str | bytes) -> list[str]:
    config = tmp / "host.toml"
    if isinstance(text, bytes):
        config.write_bytes(text)
    else:
        config.write_text(text)
    return [str(art), "--host-config", str(config)]


# Host config files (--host-config), each refused in one line. ``require = "false"`` is a string,
# not a boolean: refused, never taken as true (or false); ``[signature]`` read as no policy at
# all would check nothing.
HOST_CONFIGS: dict[str, str | bytes] = {
    "config_signatures_a_number": "signatures = 5\n",
    "config_trusted_keys_numbers": "[signatures]\nrequire = true\ntrusted_keys = [1]\n",
    "config_trusted_keys_a_string": '[signatures]\ntrusted_keys = "keys/site.pub"\n',
    "config_require_a_string": '[signatures]\nrequire = "false"\n',
    "config_not_utf8": b"# h\xf4te\n[signatures]\nrequire = false\n",
    "config_not_toml": "[signatures]\nrequire = yes\n",
    "config_misspelt_table": "[signature]\nrequire = true\n",
    "config_misspelt_key": "[signatures]\nrequired = true\n",
}


def oci_unreachable(art: Path, tmp: Path) -> list[str]:
    return ["127.0.0.1:9/swstack/py3:2026.01.02"]


def oci_bad_reference(art: Path, tmp: Path) -> list[str]:
    return ["oci://registry.example.org:5000/Py3:bad tag"]


def url_bad_host(art: Path, tmp: Path) -> list[str]:  # urllib's ValueError, not a network failure
    return ["http://[artifacts/py3/py3-2026.01.02-linux-64.tar.zst"]


def url_bad_port(art: Path, tmp: Path) -> list[str]:
    return ["https://artifacts.example.org:80a/py3/py3-2026.01.02-linux-64.tar.zst"]


def source_with_newline(art: Path, tmp: Path) -> list[str]:
    return [f"{art}\nswstack: all good"]


def state_corrupt(art: Path, tmp: Path) -> list[str]:
    (tmp / "root" / ".swstack" / "state.json").write_text('{"stacks": {"py3": 5}}')
    return [str(art)]


def state_misspelt_stacks(art: Path, tmp: Path) -> list[str]:
    # A hand edit's typo: read as "nothing recorded", restore would reload nothing and exit 3.
    state = tmp / "root" / ".swstack" / "state.json"
    state.write_text(state.read_text().replace('"stacks"', '"stack"'))
    return [str(art)]


def _chunked(art: Path, tmp: Path) -> tuple[Path, dict[str, object]]:
    """``art`` packed again by pack's chunked writer (same version); its manifest as raw JSON."""
    from tests.support.host import repack_tree, unpack_artifact

    manifest = unpack_artifact(art, tmp / "tree")
    out = repack_tree(tmp / "tree", manifest, tmp / "chunked", manifest.version, {})
    return out, json.loads((out / "manifest.json").read_text())


def _chunks_edited(art: Path, tmp: Path, edit: Callable[[list[dict[str, object]]], None]) -> list[str]:
    out, raw = _chunked(art, tmp)
    tarball = raw["tarball"]
    assert isinstance(tarball, dict) and len(tarball["chunks"]) > 1
    edit(tarball["chunks"])
    (out / "manifest.json").write_text(json.dumps(raw))
    return [str(out)]


def chunk_table_short_of_the_file(art: Path, tmp: Path) -> list[str]:
    return _chunks_edited(art, tmp, lambda chunks: chunks.pop())


def chunk_table_overlapping(art: Path, tmp: Path) -> list[str]:
    def edit(chunks: list[dict[str, object]]) -> None:
        chunks[1]["offset"] = int(chunks[1]["offset"]) - 16  # type: ignore[call-overload]
        chunks[1]["size"] = int(chunks[1]["size"]) + 16  # type: ignore[call-overload]

    return _chunks_edited(art, tmp, edit)


def chunk_table_past_the_end(art: Path, tmp: Path) -> list[str]:
    def edit(chunks: list[dict[str, object]]) -> None:
        chunks[-1]["size"] = int(chunks[-1]["size"]) + 512  # type: ignore[call-overload]

    return _chunks_edited(art, tmp, edit)


def chunk_with_a_flipped_byte(art: Path, tmp: Path) -> list[str]:
    """One byte of the largest chunk flipped; the whole file's sha256 re-sealed, so only the chunk's
    own sha256 can catch it."""
    from swstack.fsutil import sha256_file

    out, raw = _chunked(art, tmp)
    tarball = raw["tarball"]
    assert isinstance(tarball, dict)
    chunk = max(tarball["chunks"], key=lambda c: c["size"])
    path = out / tarball["name"]
    data = bytearray(path.read_bytes())
    data[chunk["offset"] + chunk["size"] // 2] ^= 0x01
    path.write_bytes(bytes(data))
    tarball["sha256"] = sha256_file(path)
    (out / "manifest.json").write_text(json.dumps(raw))
    (out / f"{path.name}.sha256").write_text(f"{tarball['sha256']}  {path.name}\n")
    return [str(out)]


def chunk_cut_inside_a_member(art: Path, tmp: Path) -> list[str]:
    """Two zstd frames, correctly listed and hashed, but cut in the middle of a member."""
    import hashlib
    import io

    import zstandard

    from swstack.manifest import TarballChunk

    tarball = _tarball(art)
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(tarball.read_bytes()), read_across_frames=True).read()
    cut = len(raw) // 2 // 512 * 512 + 100
    frames = [zstandard.ZstdCompressor().compress(part) for part in (raw[:cut], raw[cut:])]
    tarball.write_bytes(b"".join(frames))
    chunks = (
        TarballChunk(0, len(frames[0]), hashlib.sha256(frames[0]).hexdigest()),
        TarballChunk(len(frames[0]), len(frames[1]), hashlib.sha256(frames[1]).hexdigest()),
    )
    seal(art, tarball, Manifest.load(art / "manifest.json"))
    manifest = Manifest.load(art / "manifest.json")
    assert manifest.tarball is not None
    (art / "manifest.json").write_text(replace(manifest, tarball=replace(manifest.tarball, chunks=chunks)).to_json())
    return [str(art)]


CASES: dict[str, Callable[[Path, Path], list[str]]] = {f.__name__: f for f in (
    chunk_table_short_of_the_file, chunk_table_overlapping, chunk_table_past_the_end, chunk_with_a_flipped_byte,
    chunk_cut_inside_a_member,
    empty_tarball, not_a_tar, zstd_of_garbage, manifest_not_json, manifest_not_utf8, manifest_list,
    version_is_a_number, version_with_slash, version_with_newline, stack_reserved, prefix_relative,
    prefix_root, packages_wrong_type, tarball_name_escapes, huge_total_size, release_bad_toml,
    release_wrong_shape, release_missing, oci_unreachable, oci_bad_reference, source_with_newline,
    state_corrupt, state_misspelt_stacks, release_json_list, release_not_utf8, release_source_a_number,
    release_json_source_a_list, release_unknown_key, release_names_another_stack, side_file_empty, url_bad_host,
    url_bad_port,
)}
CASES.update({name: functools.partial(_host_config, text=text) for name, text in HOST_CONFIGS.items()})


MESSAGES = {  # what the one line says: the cause, not just any error
    "chunk_cut_inside_a_member": "continues past the end of its chunk",
    "chunk_table_overlapping": "tarball.chunks[1]",
    "chunk_table_past_the_end": "tarball.chunks: they cover",
    "chunk_table_short_of_the_file": "tarball.chunks: they cover",
    "chunk_with_a_flipped_byte": "sha256 mismatch",
    "config_misspelt_key": "host.toml:2: signatures.required: unknown key (did you mean require?); "
    '[signatures] takes only require = true|false and trusted_keys = ["<key path>", ...]',
    "config_misspelt_table": "host.toml:1: signature: unknown key (did you mean [signatures]?); the host config "
    'holds one table, [signatures], with require = true|false and trusted_keys = ["<key path>", ...]',
    "config_not_toml": "host.toml:2: not valid TOML: Invalid value; fix the host config",
    "config_not_utf8": "host.toml:1: not UTF-8 text (byte 0xf4); save the host config as UTF-8",
    "config_require_a_string": 'host.toml:2: signatures.require: expected true or false (a TOML boolean, unquoted), '
    'got "false"',
    "config_signatures_a_number": 'host.toml:1: signatures: expected a table, got 5; write [signatures] with '
    'require = true|false and trusted_keys = ["<key path>", ...]',
    "config_trusted_keys_a_string": 'host.toml:2: signatures.trusted_keys: expected a list of key paths, got '
    '"keys/site.pub"; write trusted_keys = ["<key path>", ...]',
    "config_trusted_keys_numbers": "host.toml:3: signatures.trusted_keys[0]: expected the path of a PEM public key "
    "(a non-empty string), got 1",
    "empty_tarball": "the tarball has no conda-meta/swstack-manifest.json",
    "huge_total_size": "not enough space on the disk + ramdisk",
    "manifest_list": "a manifest is a JSON object",
    "manifest_not_json": "manifest.json: not a swstack manifest",
    "manifest_not_utf8": "can't decode byte 0xff",
    "not_a_tar": "in a tar header); its sha256 matches, so it was packed broken",
    "oci_bad_reference": "bad tag 'bad tag'",
    "oci_unreachable": "the registry is unreachable or failing",
    "packages_wrong_type": "packages: expected a list",
    "prefix_relative": "manifest prefix 'sw/py3' is not an absolute path",
    "prefix_root": "prefix '/': a tree is built for a directory under the live path",
    "release_bad_toml": "release.toml:1: not valid TOML: Expected ']' at the end of a table declaration",
    "release_json_list": 'release.json: expected a JSON object {"stacks": {...}}, got list',
    "release_json_source_a_list": "release.json: stacks.py3: expected the stack's source as a non-empty string "
    "(path, URL or OCI reference), got [",
    "release_missing": "no-such-release.toml: cannot read the release manifest (No such file or directory)",
    "release_not_utf8": "release.toml:2: not UTF-8 text (byte 0xe9); save the release manifest as UTF-8",
    "release_source_a_number": "release.toml:4: stacks.antares: expected the stack's source as a non-empty string "
    "(path, URL or OCI reference), got 5",
    "release_unknown_key": 'release.toml:1: stack: unknown key; a release holds only a [stacks] table of '
    'name = "<source>" (path, URL or OCI reference)',
    "release_wrong_shape": 'release.json: stacks: expected a [stacks] table of name = "<source>" (path, URL or OCI '
    'reference), got ["py3"]',
    "source_with_newline": "not a source (expected a path, an http(s) URL or an OCI reference)",
    "stack_reserved": "invalid stack name 'tmpfs'",
    "state_corrupt": "state.json: not a swstack state file (stacks.py3: expected an object, got 5)",
    "state_misspelt_stacks": "state.json: not a swstack state file (stack: unknown key; expected only stacks)",
    "tarball_name_escapes": "tarball.name '../../../../etc/passwd' is not a file name beside manifest.json",
    "version_is_a_number": "version: expected str, got int",
    "version_with_newline": "invalid version name '2026.01.02\\nswstack: all good'",
    "version_with_slash": "/bad: invalid version name '../../etc'",  # the manifest's artifact named
    "release_names_another_stack": "release.toml:2: the release names ",
    "side_file_empty": "/bad/py3-2026.01.02-linux-64.tar.zst.sha256: no sha256 for py3-2026.01.02-linux-64.tar.zst",
    "zstd_of_garbage": "in a tar header); its sha256 matches, so it was packed broken",
    "url_bad_host": "http://[artifacts/py3/py3-2026.01.02-linux-64.tar.zst: not a valid URL (Invalid IPv6 URL)",
    "url_bad_port": ":80a/py3/py3-2026.01.02-linux-64.tar.zst: not a valid URL (Port could not be cast",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_input_ends_in_one_line_and_changes_nothing(tmp_path: Path, case: str) -> None:
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    good = make_artifact(tmp_path / "good", version="2026.01.01")
    assert subprocess.run(swstack_argv("activate", str(good), "--root", str(root))).returncode == 0
    ramdisk = sorted(os.listdir(root / "sw.tmpfs"))
    bad = make_artifact(tmp_path / "bad", version="2026.01.02")
    args = CASES[case](bad, tmp_path)
    res = subprocess.run(
        swstack_argv("activate", *args, "--root", str(root)),
        capture_output=True, text=True, timeout=120, env={**os.environ, "SWSTACK_REGISTRY_RETRIES": "0"},
    )
    assert res.returncode == 11, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("swstack activate: error: ")]
    assert len(errors) == 1, res.stderr
    assert len([line for line in res.stderr.splitlines() if "error" in line.lower()]) == 1, res.stderr
    assert MESSAGES[case] in errors[0], errors[0]
    assert (root / "sw" / "py3" / "share" / "version.txt").read_text() == "2026.01.01\n"
    assert sorted(os.listdir(root / "sw.tmpfs")) == ramdisk
    assert not (root / ".swstack" / "staging").exists() and not (root / "sw.2026.01.02").exists()


# ---------------------------------------------------------------- registry answers

# What a registry (or anything answering at its address) may serve instead of an artifact: each
# edits the served answers, and may add arguments (a trusted key: the signature checks read the
# registry first). The JSON is anyone's, so a field of the wrong type is a refusal like any other.
def _index(routes: dict[str, Route], doc: dict[str, Any], body: bytes) -> None:
    routes["/v2/py3/manifests/t"] = (200, {"Content-Type": OCI_INDEX}, body)


def _layer(doc: dict[str, Any], **changes: object) -> bytes:
    doc["layers"][0].update(changes)
    return json.dumps(doc).encode()


def _signature(routes: dict[str, Route], doc: dict[str, Any], body: bytes) -> None:
    from swstack.oci import canonical_json, digest_of
    from swstack.trust import signature_tag

    manifest = routes["/v2/py3/manifests/t"][2]
    assert digest_of(manifest) == digest_of(canonical_json(doc))
    routes[f"/v2/py3/manifests/{signature_tag(digest_of(manifest))}"] = (200, {"Content-Type": OCI_MANIFEST}, body)


def _signed_payload(routes: dict[str, Route], doc: dict[str, Any], payload: bytes) -> None:
    from swstack.oci import digest_of
    from swstack.trust import SIGNATURE_ANNOTATION, SIMPLE_SIGNING_TYPE

    routes[f"/v2/py3/blobs/{digest_of(payload)}"] = (200, {}, payload)
    layer = {"mediaType": SIMPLE_SIGNING_TYPE, "digest": digest_of(payload), "size": len(payload),
             "annotations": {SIGNATURE_ANNOTATION: "AAAA"}}  # fmt: skip
    _signature(routes, doc, json.dumps({"schemaVersion": 2, "layers": [layer]}).encode())


def _answer(path: str, status: int, headers: dict[str, str]) -> Callable[[dict[str, Route], dict[str, Any]], None]:
    return lambda routes, doc: routes.__setitem__(path.replace("{tarball}", doc["layers"][0]["digest"]),
                                                  (status, headers, b""))  # fmt: skip


REGISTRY_ANSWERS: dict[str, tuple[Callable[[dict[str, Route], dict[str, Any]], None], bool, str]] = {
    # name: (edit of the answers, with a trusted key, what the one line says)
    "index_not_json": (lambda r, d: _index(r, d, b"not json"), False, "the registry's manifest is not valid JSON"),
    "index_a_list": (lambda r, d: _index(r, d, b"[1]"), False, "manifest is not a JSON object"),
    "index_manifests_a_number": (
        lambda r, d: _index(r, d, json.dumps({"manifests": 5}).encode()), False, "manifests is int, not a list"
    ),
    "index_platform_a_string": (
        lambda r, d: _index(r, d, json.dumps({"manifests": [{"digest": "sha256:" + "a" * 64, "platform": "linux"}]})
                            .encode()),
        False, "the index has no entry for linux/amd64",
    ),  # fmt: skip
    "layers_a_number": (
        lambda r, d: r.update({"/v2/py3/manifests/t": (200, {"Content-Type": OCI_MANIFEST},
                                                       json.dumps({**d, "layers": 5}).encode())}),
        False, "/py3:t: malformed swstack artifact: layers is int, not a list",
    ),  # fmt: skip
    "layer_size_negative": (
        lambda r, d: r.update({"/v2/py3/manifests/t": (200, {"Content-Type": OCI_MANIFEST}, _layer(d, size=-1))}),
        False, "malformed descriptor in the registry's manifest",
    ),  # fmt: skip
    "token_realm_not_a_url": (
        _answer("/v2/py3/manifests/t", 401, {"WWW-Authenticate": 'Bearer realm="http://[::1"'}),
        False, "the registry's token realm is malformed",
    ),
    "token_challenge_without_realm": (
        _answer("/v2/py3/manifests/t", 401, {"WWW-Authenticate": 'Bearer service="x"'}),
        True, "the registry asked for a bearer token but named no realm",
    ),
    "blob_redirected_to_a_bad_url": (
        _answer("/v2/py3/blobs/{tarball}", 302, {"Location": "http://[bad"}), False, "Invalid IPv6 URL"
    ),
    "signature_not_json": (lambda r, d: _signature(r, d, b"not json"), True, "the signature manifest is not a JSON"),
    "signature_layers_a_number": (
        lambda r, d: _signature(r, d, json.dumps({"layers": 5}).encode()), True, "a signature manifest is not cosign's"
    ),
    "signature_layer_without_digest": (
        lambda r, d: _signature(r, d, json.dumps({"layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "annotations": {"dev.cosignproject.cosign/signature": "AAAA"}}]}).encode()),
        True, "a signature manifest is not cosign's (KeyError('digest'))",
    ),  # fmt: skip
    "signature_payload_optional_a_string": (
        lambda r, d: _signed_payload(r, d, json.dumps({"critical": {
            "type": "cosign container image signature", "identity": {"docker-reference": "x"},
            "image": {"docker-manifest-digest": "y"}}, "optional": "x"}).encode()),
        True, "a signature payload is not a cosign simple-signing document",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(REGISTRY_ANSWERS))
def test_a_broken_registry_answer_ends_in_one_line_and_changes_nothing(tmp_path: Path, case: str) -> None:
    from swstack import sign

    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    good = make_artifact(tmp_path / "good", version="2026.01.01")
    assert subprocess.run(swstack_argv("activate", str(good), "--root", str(root))).returncode == 0
    ramdisk = sorted(os.listdir(root / "sw.tmpfs"))
    routes, doc = artifact_routes(make_artifact(tmp_path / "bad", version="2026.01.02"), "py3", "t")
    edit, signed, message = REGISTRY_ANSWERS[case]
    edit(routes, doc)
    keys = ["--trusted-key", str(sign.generate_key(tmp_path / "site.key"))] if signed else []
    with scripted_registry(routes) as host:
        res = subprocess.run(
            swstack_argv("activate", f"{host}/py3:t", *keys, "--root", str(root)),
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "SWSTACK_REGISTRY_RETRIES": "1"},
        )  # fmt: skip
    assert message in _one_error(res, "activate")
    assert (root / "sw" / "py3" / "share" / "version.txt").read_text() == "2026.01.01\n"
    assert sorted(os.listdir(root / "sw.tmpfs")) == ramdisk
    downloads = root / ".swstack" / "downloads"  # not made when a signature check refused first
    assert not (root / "sw.2026.01.02").exists() and not (downloads.is_dir() and any(downloads.iterdir()))


def test_a_bad_retry_setting_is_an_activation_error_with_a_signature_policy_too(tmp_path: Path) -> None:
    """The host's exit status is 11 for it, as without a policy (the policy's registry client
    reads the setting first); 10 is the build side's."""
    from swstack import sign

    key = str(sign.generate_key(tmp_path / "site.key"))
    root = tmp_path / "root"
    root.mkdir()
    for extra in ([], ["--trusted-key", key]):
        res = subprocess.run(
            swstack_argv("activate", "127.0.0.1:9/py3:t", *extra, "--root", str(root)),
            capture_output=True, text=True, timeout=120, env={**os.environ, "SWSTACK_REGISTRY_RETRIES": "many"},
        )  # fmt: skip
        assert "SWSTACK_REGISTRY_RETRIES/SWSTACK_REGISTRY_BACKOFF: not a number" in _one_error(res, "activate")


# ---------------------------------------------------------------- other commands' inputs


def _host(tmp_path: Path) -> Path:
    """A production root with py3 2026.01.01 and 2026.01.02 (live) and antares 2026.01.03 (live)."""
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    for stack, version in (("py3", "2026.01.01"), ("py3", "2026.01.02"), ("antares", "2026.01.03")):
        art = make_artifact(tmp_path / f"{stack}-{version}", stack=stack, version=version)
        assert subprocess.run(swstack_argv("activate", str(art), "--root", str(root))).returncode == 0
    return root


def _sw(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(swstack_argv(*args, "--root", str(root)), capture_output=True, text=True, timeout=120)


def _live(root: Path) -> dict[str, str]:
    return {name: os.readlink(root / "sw" / name) for name in ("py3", "antares")}


def _one_error(res: subprocess.CompletedProcess[str], command: str, code: int = 11) -> str:
    assert res.returncode == code, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"swstack {command}: error: "), res.stderr
    return errors[0].removeprefix(f"swstack {command}: error: ")


def test_set_version_names_an_unknown_stack_and_takes_a_tree_path(tmp_path: Path) -> None:
    root = _host(tmp_path)
    live = _live(root)
    assert live == {"py3": ".py3@2026.01.02", "antares": ".antares@2026.01.03"}

    res = _sw(root, "set-version", "2026.01.01", "--stack", "nope")
    assert _one_error(res, "set-version") == (
        "--stack nope: unknown stack, no version on this host holds it; known stacks: antares, py3"
    )
    res = _sw(root, "set-version", "2026.01.01", "--stack", "antares")
    assert _one_error(res, "set-version") == (
        f"{root}/sw.2026.01.01 has no stack antares (it holds py3); versions with antares: 2026.01.03"
    )
    res = _sw(root, "set-version", str(root / "sw.2026.01.01" / "nope"))
    assert _one_error(res, "set-version") == (  # no --stack was given: the path is named
        f"{root}/sw.2026.01.01/nope (the path given): unknown stack, no version on this host holds it; "
        "known stacks: antares, py3"
    )
    other = tmp_path / "elsewhere"
    res = _sw(root, "set-version", str(other / "sw.2026.01.01" / "py3"))
    assert _one_error(res, "set-version") == (
        f"{other}/sw.2026.01.01/py3 is not under the root {root}; pass --root {other} to switch that root's versions"
    )
    res = _sw(root, "set-version", str(root / "sw.2026.01.01" / "py3"), "--stack", "antares")
    assert _one_error(res, "set-version") == "the path names the stack py3 but --stack says antares; give one of them"
    assert _live(root) == live

    # A path to one tree of a version: that version of that stack, the others untouched.
    res = _sw(root, "set-version", f"{root}/sw.2026.01.01/py3/")
    assert res.returncode == 0, res.stderr
    assert _live(root) == {**live, "py3": ".py3@2026.01.01"}
    assert (root / "sw" / "py3" / "share" / "version.txt").read_text() == "2026.01.01\n"


def test_wait_must_be_seconds_and_its_messages_say_what_was_waited(tmp_path: Path) -> None:
    import fcntl

    root = _host(tmp_path)
    live = _live(root)
    for bad in ("-1", "nan", "soon"):
        res = _sw(root, "set-version", "2026.01.01", "--wait", bad)
        assert res.returncode == 2, res.stderr
        assert f"argument --wait: '{bad}': give a number of seconds, 0 or more" in res.stderr
    fd = os.open(root / ".swstack" / "lock", os.O_RDWR)
    try:
        os.pwrite(fd, f"{os.getpid()}".ljust(19).encode() + b"\n", 0)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock = root / ".swstack" / "lock"
        res = _sw(root, "set-version", "2026.01.01", "--wait", "0.3")
        assert f"waiting for the lock held by PID {os.getpid()} (up to 0.3s)" in res.stderr
        assert _one_error(res, "set-version") == (
            f"{lock}: locked by PID {os.getpid()} (another swstack is changing this host); "
            "still held after --wait 0.3s: run again once it has finished, or wait longer"
        )
        res = _sw(root, "set-version", "2026.01.01")
        assert _one_error(res, "set-version") == (
            f"{lock}: locked by PID {os.getpid()} (another swstack is changing this host); "
            "wait for it to finish or pass --wait SECONDS"
        )
    finally:
        os.close(fd)
    assert _live(root) == live


def test_the_tarball_is_checked_against_the_manifest_with_or_without_its_side_file(tmp_path: Path) -> None:
    """No ``.sha256`` beside a tarball (a local path or over http): manifest.json's sha256 is the one
    every byte is checked against, so a damaged tarball is still refused; a side file, when there,
    must agree with it."""
    import functools
    import http.server
    import threading

    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    good = make_artifact(tmp_path / "good", version="2026.01.01")
    _tarball(good).with_name(_tarball(good).name + ".sha256").unlink()
    assert _sw(root, "activate", str(good)).returncode == 0

    damaged = make_artifact(tmp_path / "damaged", version="2026.01.02")
    tarball = _tarball(damaged)
    tarball.with_name(tarball.name + ".sha256").unlink()
    data = bytearray(tarball.read_bytes())
    data[len(data) // 2] ^= 0x01
    tarball.write_bytes(bytes(data))
    assert "sha256 mismatch" in _one_error(_sw(root, "activate", str(damaged)), "activate")
    assert (root / "sw" / "py3" / "share" / "version.txt").read_text() == "2026.01.01\n"

    other = make_artifact(tmp_path / "other", version="2026.01.03")
    tarball = _tarball(other)
    tarball.with_name(tarball.name + ".sha256").write_text(f"{'0' * 64}  {tarball.name}\n")
    assert "disagree on the tarball's sha256" in _one_error(_sw(root, "activate", str(other)), "activate")

    served = make_artifact(tmp_path / "served", version="2026.01.04")
    _tarball(served).with_name(_tarball(served).name + ".sha256").unlink()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{_tarball(served).name}"
        res = _sw(root, "activate", url)
        assert res.returncode == 0, res.stderr
    finally:
        server.shutdown()
    assert (root / "sw" / "py3" / "share" / "version.txt").read_text() == "2026.01.04\n"


def test_a_server_sending_more_than_the_manifest_says_is_cut_off(tmp_path: Path) -> None:
    """An http server that streams the tarball without end (or just past its size) would fill the
    root's disk, which holds every persistent version, before the size was ever compared: the
    download stops past manifest.json's size, one line, exit 11, nothing left in downloads."""
    import http.server
    import threading

    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    assert _sw(root, "activate", str(make_artifact(tmp_path / "live", version="2026.01.01"))).returncode == 0
    served = make_artifact(tmp_path / "served", version="2026.01.02")

    class Endless(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            name = self.path.rsplit("/", 1)[-1]
            self.send_response(200 if (served / name).is_file() else 404)
            self.end_headers()  # no Content-Length: the body ends when the server closes
            if name.endswith(".tar.zst"):
                chunk = b"\0" * (1 << 20)
                with contextlib.suppress(OSError):
                    for _ in range(4096):  # 4 GiB, or until the client hangs up
                        self.wfile.write(chunk)
            elif (served / name).is_file():
                self.wfile.write((served / name).read_bytes())

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{_tarball(served).name}"
        error = _one_error(_sw(root, "activate", url), "activate")
    finally:
        server.shutdown()
    size = json.loads((served / "manifest.json").read_text())["tarball"]["size"]
    assert error == f"{url}: the server sent more than the {size} bytes manifest.json gives the tarball; refused"
    assert (root / "sw" / "py3" / "share" / "version.txt").read_text() == "2026.01.01\n"
    assert not any((root / ".swstack" / "downloads").iterdir())


def test_a_ramdisk_every_user_may_write_is_refused_before_a_planted_copy_goes_live(tmp_path: Path) -> None:
    """A tmpfs mounted without mode=0755 is 1777: any user could make ``.py3@<next version>`` there,
    and activation takes a ramdisk copy already present as its own and makes it live."""
    root = tmp_path / "root"
    (root / "sw.tmpfs").mkdir(parents=True)
    assert _sw(root, "activate", str(make_artifact(tmp_path / "live", version="2026.01.01"))).returncode == 0
    planted = root / "sw.tmpfs" / ".py3@2026.01.02" / "share"
    planted.mkdir(parents=True)
    (planted / "version.txt").write_text("planted\n")
    os.chmod(root / "sw.tmpfs", 0o1777)
    error = _one_error(_sw(root, "activate", str(make_artifact(tmp_path / "next", version="2026.01.02"))), "activate")
    assert error == (
        f"{root / 'sw.tmpfs'}: writable by every user (mode 1777), so anyone could plant a version to go live; "
        "give it to root with mode 755 (a tmpfs: mode=0755 in /etc/fstab, see swstack init)"
    )
    assert (root / "sw" / "py3" / "share" / "version.txt").read_text() == "2026.01.01\n"

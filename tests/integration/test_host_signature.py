"""A host with a signature policy activates only what a trusted key signed; everything else: exit 11.

The real ``swstack`` CLI in a subprocess, the real ``openssl`` verifying, signatures made by
``sign.py`` (a path artifact's ``manifest.json.sig``; a published artifact's cosign ``.sig``
tag in the real test registry).
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from tests.support.host import make_artifact, swstack_argv
from tests.support.registry import LocalRegistry, registry_fixture  # noqa: F401 - the `registry` fixture

from swstack import sign, trust
from swstack.oci import RegistryClient
from swstack.publish import publish_artifact


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[sign.SigningKey, Path, Path]:
    """(our key, our public key, another public key)."""
    root = tmp_path_factory.mktemp("keys")
    public = sign.generate_key(root / "site.key")
    other = sign.generate_key(root / "other.key")
    return sign.load_key(root / "site.key"), public, other


def swstack(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(swstack_argv(*args, "--root", str(root)), capture_output=True, text=True, timeout=120)


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir(parents=True)
    return root


def _refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 11, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def _nothing_written(root: Path) -> None:
    assert not list(root.glob("sw.*")), list(root.iterdir())
    assert not (root / "sw").exists() or not any((root / "sw").iterdir())


def test_path_artifact_signed_unsigned_wrong_key_and_tampered(tmp_path: Path, keys: tuple) -> None:  # type: ignore[type-arg]
    key, public, other = keys
    root = _root(tmp_path)
    require = ("--require-signature", "--trusted-key", str(public))
    unsigned = make_artifact(tmp_path / "a1", version="2026.01.01")
    _refused(swstack(root, "activate", str(unsigned), *require), "unsigned")
    _nothing_written(root)

    # Signed by a key the host does not trust.
    sign.sign_file(unsigned / "manifest.json", key)
    _refused(swstack(root, "activate", str(unsigned), "--require-signature", "--trusted-key", str(other)), "signature")
    _nothing_written(root)

    good = swstack(root, "activate", str(unsigned), *require)
    assert good.returncode == 0, good.stdout + good.stderr
    assert (root / "sw.2026.01.01" / "py3").is_dir()

    # A signed v2 whose tarball is replaced afterwards (its .sha256 rewritten to match).
    v2 = make_artifact(tmp_path / "a2", version="2026.01.02")
    sign.sign_file(v2 / "manifest.json", key)
    tarball = next(v2.glob("*.tar.zst"))
    data = bytearray(tarball.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tarball.write_bytes(bytes(data))
    import hashlib

    tarball.with_name(tarball.name + ".sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {tarball.name}\n")
    result = swstack(root, "activate", str(v2), *require)
    assert result.returncode == 11 and "Traceback" not in result.stderr, result.stderr
    assert not (root / "sw.2026.01.02").exists()
    status = json.loads(swstack(root, "active", "--json").stdout)
    assert [s["version"] for s in status["stacks"]] == ["2026.01.01"]  # the live version is untouched

    # A manifest.json edited after signing (say, to name the tampered tarball's sha256).
    manifest = json.loads((v2 / "manifest.json").read_text())
    manifest["tarball"]["sha256"] = hashlib.sha256(data).hexdigest()
    (v2 / "manifest.json").write_text(json.dumps(manifest))
    _refused(swstack(root, "activate", str(v2), *require), "manifest.json.sig")
    assert not (root / "sw.2026.01.02").exists()


def test_an_http_source_is_activated_as_signed_even_when_the_server_changes_its_answer(
    tmp_path: Path, keys: tuple  # type: ignore[type-arg]
) -> None:
    """Over http the signed manifest.json is read before the fetch reads it again: a server that
    serves the signed bytes first and then a manifest naming another tarball is refused, the live
    version and the downloads left as they were."""
    key, public, _other = keys
    root = _root(tmp_path)
    signed = make_artifact(tmp_path / "signed", version="2026.01.01")
    sign.sign_file(signed / "manifest.json", key)
    swapped = make_artifact(tmp_path / "swapped", version="2026.01.01", payload=100)  # unsigned, same names
    tarball = next(signed.glob("*.tar.zst")).name
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            name = self.path.rsplit("/", 1)[-1]
            asked.append(name)
            # Swapping: the signed manifest to the signature check, the other one and its tarball to the fetch.
            first_manifest = name == "manifest.json" and asked.count(name) == 1
            swap = self.server.swap and name != "manifest.json.sig" and not first_manifest  # type: ignore[attr-defined]
            path = (swapped if swap else signed) / name
            body = path.read_bytes() if path.is_file() else b""
            self.send_response(200 if path.is_file() else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{tarball}"
    require = ("--trusted-key", str(public))
    try:
        server.swap = True  # type: ignore[attr-defined]
        result = swstack(root, "activate", url, *require)
        assert asked.count("manifest.json") == 2, asked
        server.swap = False  # type: ignore[attr-defined]
        good = swstack(root, "activate", url, *require)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 11 and "Traceback" not in result.stderr, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [
        f"swstack activate: error: {url.rsplit('/', 1)[0]}/manifest.json: served other bytes after its signature "
        "was checked; refused by the signature policy"
    ], result.stderr
    assert not any((root / ".swstack" / "downloads").iterdir())  # removed with the refusal, as docs/host.md says
    # The same server answering the signed bytes each time: activated, the swapped tree's file absent.
    assert good.returncode == 0, good.stdout + good.stderr
    assert not (root / "sw" / "py3" / "share" / "payload").exists()


def test_a_signed_http_source_keeps_the_tarballs_query(tmp_path: Path, keys: tuple) -> None:  # type: ignore[type-arg]
    """With a signature policy too, manifest.json and its .sig are asked for beside the tarball with
    the tarball URL's query (where a site's access token goes), as docs/host.md says of the side files."""
    key, public, _other = keys
    root = _root(tmp_path)
    artifact = make_artifact(tmp_path / "a", version="2026.01.01")
    sign.sign_file(artifact / "manifest.json", key)
    tarball = next(artifact.glob("*.tar.zst")).name
    asked: list[str] = []

    class TokenHandler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            asked.append(self.path)
            path, _, query = self.path.partition("?")
            file = artifact / path.rsplit("/", 1)[-1]
            ok = query == "token=t0k" and file.is_file()
            body = file.read_bytes() if ok else b""
            self.send_response(200 if ok else 403 if query != "token=t0k" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TokenHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{tarball}?token=t0k"
        result = swstack(root, "activate", url, "--trusted-key", str(public))
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert asked and all(p.endswith("?token=t0k") for p in asked), asked
    assert "/manifest.json.sig?token=t0k" in asked, asked


def test_a_trusted_key_alone_requires_a_signature(tmp_path: Path, keys: tuple) -> None:  # type: ignore[type-arg]
    """``--trusted-key`` without ``--require-signature`` checks, it does not silently accept: the key
    given on the command line requires a signature for this activation, whatever the host config says."""
    key, public, other = keys
    root = _root(tmp_path)
    artifact = make_artifact(tmp_path / "a", version="2026.01.01")
    result = swstack(root, "activate", str(artifact), "--trusted-key", str(public))
    _refused(result, "unsigned (no manifest.json.sig beside it); refused by the signature policy")
    _nothing_written(root)
    config = tmp_path / "host.toml"
    config.write_text("[signatures]\nrequire = false\n")
    sign.sign_file(artifact / "manifest.json", key)
    result = swstack(root, "activate", str(artifact), "--trusted-key", str(other), "--host-config", str(config))
    _refused(result, "manifest.json.sig is not a trusted key's signature of manifest.json")
    _nothing_written(root)
    result = swstack(root, "activate", str(artifact), "--trusted-key", str(public), "--host-config", str(config))
    assert result.returncode == 0, result.stderr
    assert "manifest.json signed by site.pub" in result.stderr
    help_text = subprocess.run(swstack_argv("activate", "--help"), capture_output=True, text=True).stdout
    assert "it requires a signature for this activation" in " ".join(help_text.split())


def test_without_a_policy_nothing_is_checked(tmp_path: Path) -> None:
    root = _root(tmp_path)
    result = swstack(root, "activate", str(make_artifact(tmp_path / "a", version="2026.01.01")))
    assert result.returncode == 0, result.stderr


def test_host_config_file_sets_the_policy(tmp_path: Path, keys: tuple) -> None:  # type: ignore[type-arg]
    key, public, _ = keys
    config = tmp_path / "host.toml"
    config.write_text(f'[signatures]\nrequire = true\ntrusted_keys = ["{public}"]\n')
    root = _root(tmp_path)
    artifact = make_artifact(tmp_path / "a", version="2026.01.01")
    _refused(swstack(root, "activate", str(artifact), "--host-config", str(config)), "unsigned")
    sign.sign_file(artifact / "manifest.json", key)
    result = swstack(root, "activate", str(artifact), "--host-config", str(config))
    assert result.returncode == 0, result.stderr
    config.write_text("[signatures]\nrequire = true\n")
    _refused(swstack(_root(tmp_path / "b"), "activate", str(artifact), "--host-config", str(config)), "trusted key")
    # A config the policy cannot be read from is refused, never read as "nothing required".
    config.write_text('[signatures]\nrequire = "true"\n')
    other_root = _root(tmp_path / "c")
    _refused(
        swstack(other_root, "activate", str(artifact), "--host-config", str(config)),
        f"{config}:2: signatures.require: expected true or false (a TOML boolean, unquoted), got \"true\"",
    )
    _nothing_written(other_root)


@pytest.mark.registry
def test_oci_artifact_signed_unsigned_and_renamed(
    tmp_path: Path,
    keys: tuple,  # type: ignore[type-arg]
    registry: LocalRegistry,  # noqa: F811
) -> None:
    key, public, _ = keys
    require = ("--require-signature", "--trusted-key", str(public))
    client = RegistryClient(registry.host)
    artifact = make_artifact(tmp_path / "art", version="2026.02.01")
    ref = f"{registry.host}/signed/py3:2026.02.01"
    digest = publish_artifact(artifact, ref)

    root = _root(tmp_path)
    _refused(swstack(root, "activate", ref, *require), "unsigned")
    _nothing_written(root)

    sign.sign_in_registry(client, "signed/py3", digest, key)
    good = swstack(root, "activate", ref, *require)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "signed by site.pub" in good.stderr

    # The same artifact and its signature under another name: the signed identity does not match.
    other_ref = f"{registry.host}/renamed/py3:2026.02.01"
    assert publish_artifact(artifact, other_ref) == digest
    tag = trust.signature_tag(digest)
    sig = client.get_manifest("signed/py3", tag)
    for blob in [sig.json()["config"], *sig.json()["layers"]]:
        path = tmp_path / "blob"
        client.pull_blob("signed/py3", blob["digest"], path, blob["size"])
        client.push_blob("renamed/py3", path, blob["digest"], blob["size"])
    client.put_manifest("renamed/py3", tag, sig.data)
    other_root = _root(tmp_path / "other")
    _refused(swstack(other_root, "activate", other_ref, *require), "no signature by a trusted key", "signed/py3")
    _nothing_written(other_root)


def test_the_host_side_imports_no_build_side() -> None:
    code = (
        "import sys, swstack.cli, swstack.host.commands, swstack.host.signature, swstack.trust, swstack.oci\n"
        "bad = sorted(m for m in ('cryptography', 'pydantic', 'cyclonedx', 'swstack.sign', 'docker', 'rattler')"
        " if m in sys.modules)\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.registry
def test_a_verified_oci_reference_is_fetched_from_the_registry_not_from_a_path_of_its_name(
    tmp_path: Path,
    keys: tuple,  # type: ignore[type-arg]
    registry: LocalRegistry,  # noqa: F811
) -> None:
    """Once its signature checks out, a reference is pinned to its digest (``host/repo@sha256:…``):
    that string must still be fetched from the registry. A directory of that name in the working
    directory (anyone can make one in /tmp) would otherwise be taken as the source, unsigned."""
    key, public, _ = keys
    artifact = make_artifact(tmp_path / "art", version="2026.02.01")
    ref = f"{registry.host}/planted/py3:2026.02.01"
    digest = publish_artifact(artifact, ref)
    sign.sign_in_registry(RegistryClient(registry.host), "planted/py3", digest, key)
    cwd = tmp_path / "cwd"
    make_artifact(cwd / registry.host / f"planted/py3@{digest}", version="2026.02.09")  # unsigned
    root = _root(tmp_path)
    argv = swstack_argv("activate", ref, "--trusted-key", str(public), "--root", str(root))
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (root / "sw.2026.02.09").exists()
    assert (root / "sw.2026.02.01" / "py3").is_dir()


def test_a_manifest_swapped_between_its_parse_and_its_signature_check_is_refused(
    tmp_path: Path,
    keys: tuple,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whoever can write the artifact's directory may serve an unsigned manifest.json (naming
    their own tarball) to the read that parses it, and put the signed one back for the read
    that checks the signature. The fault injected: the signed file back just after the fetch."""
    from swstack.errors import ActivateError
    from swstack.host import signature, source

    key, public, _other = keys
    signed = make_artifact(tmp_path / "signed", version="2026.01.01")
    sign.sign_file(signed / "manifest.json", key)
    planted = make_artifact(tmp_path / "planted", version="2026.01.01", payload=100)  # unsigned, same names
    (planted / "manifest.json.sig").write_bytes((signed / "manifest.json.sig").read_bytes())
    real_fetch = source.fetch

    def fetch_then_swap(spec: str, downloads: Path) -> source.Artifact:
        artifact = real_fetch(spec, downloads)
        (planted / "manifest.json").write_bytes((signed / "manifest.json").read_bytes())
        return artifact

    monkeypatch.setattr(source, "fetch", fetch_then_swap)
    policy = signature.TrustPolicy(True, (public,))
    with pytest.raises(ActivateError, match="changed while it was read"):
        signature.fetch(str(planted), tmp_path / "downloads", policy)

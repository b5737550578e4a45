"""A host activates a version straight from the registry the build side published it to."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tests.support.host import make_artifact, swstack_argv
from tests.support.registry import registry_fixture  # noqa: F401 - provides the `registry` fixture

from swstack.publish import publish_artifact

pytestmark = pytest.mark.registry


def swstack(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(swstack_argv(*args, "--root", str(root)), capture_output=True, text=True, timeout=120)


def test_activate_by_oci_reference_then_again_is_unchanged(registry, tmp_path: Path) -> None:  # noqa: F811
    artifact = make_artifact(tmp_path / "art", version="2026.11.21")
    ref = f"{registry.host}/py3:2026.11.21"
    digest = publish_artifact(artifact, ref)
    assert digest.startswith("sha256:")
    root = tmp_path / "root"
    root.mkdir()

    first = swstack(root, "activate", ref)
    assert first.returncode == 0, first.stdout + first.stderr
    status = json.loads(swstack(root, "active", "--json").stdout)
    text = json.dumps(status)
    assert '"version": "2026.11.21"' in text and '"stack": "py3"' in text
    assert (root / "sw" / "py3").exists() and (root / "sw.2026.11.21" / "py3").is_dir()

    again = swstack(root, "activate", f"oci://{ref}")
    assert again.returncode == 3, again.stdout + again.stderr  # unchanged


def test_missing_tag_is_a_clear_error_and_nothing_changes(registry, tmp_path: Path) -> None:  # noqa: F811
    root = tmp_path / "root"
    root.mkdir()
    result = swstack(root, "activate", f"{registry.host}/demo:no-such-tag")
    assert result.returncode == 11, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "no-such-tag" in result.stderr
    assert not list(root.glob("sw.*")) and not any((root / "sw").iterdir())  # nothing live

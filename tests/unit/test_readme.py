"""README.md's pipeline names the repositories `doit push` and `doit publish` really use."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from swstack.image.plan import image_repository
from swstack.site import load_site
from swstack.spec import load_stack

PROJECT = Path(__file__).resolve().parents[2]


def test_the_pipeline_names_the_image_and_artifact_repositories() -> None:
    # Images and tarballs live in two repositories; a reader who takes the image's for the
    # artifact's (or back) gets "not a swstack stack artifact" from `swstack activate`.
    text = (PROJECT / "README.md").read_text()
    site = replace(load_site(PROJECT / "sites" / "offline.toml", PROJECT), registry="REGISTRY")
    image = image_repository(load_stack(PROJECT / "stacks" / "py3.toml"), site)
    documented = image.replace("REGISTRY", "<registry>").replace("py3", "<name>")
    assert f"──image, push──▶ {documented}:<tag>" in text
    assert "──publish──▶ <registry>/<name>:<version>" in text

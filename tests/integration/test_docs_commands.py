"""The docs' activation commands are the tested ones: published by ``doit publish``'s own
action, then run as docs/registry.md and ansible/README.md write them.

Only the registry host is swapped (``registry.example.org:5000`` -> the test registry)
and ``--root`` points at a temporary root, as on any host where the root is not /data0.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from tests.support.host import make_artifact, swstack_argv
from tests.support.imagekit import offline_site, py3_stack
from tests.support.registry import LocalRegistry, registry_fixture  # noqa: F401 - fixture

from swstack.tasks import _publish

pytestmark = pytest.mark.registry

PROJECT = Path(__file__).resolve().parents[2]
DOC_HOST = "registry.example.org:5000"


def documented_activate() -> list[str]:
    """The `swstack activate ...` line of docs/registry.md's first code block, split."""
    text = (PROJECT / "docs" / "registry.md").read_text()
    block = re.search(r"```\n(swstack activate [^\n]+)\n```", text)
    assert block, "docs/registry.md lost its activation command"
    return shlex.split(block.group(1))


def ansible_source() -> tuple[str, str]:
    """``swstack_source`` and ``swstack_expect_version`` of ansible/README.md's rollout command."""
    text = (PROJECT / "ansible" / "README.md").read_text()
    source = re.search(r"-e swstack_source=(\S+)", text)
    version = re.search(r"-e swstack_expect_version=(\S+)", text)
    assert source and version, "ansible/README.md lost its rollout command"
    return source.group(1), version.group(1)


def test_the_documented_activation_runs(registry: LocalRegistry, tmp_path: Path) -> None:  # noqa: F811
    argv = documented_activate()
    assert argv[:2] == ["swstack", "activate"] and argv[2].startswith(DOC_HOST + "/")
    ref = argv[2].replace(DOC_HOST, registry.host, 1)
    version = ref.rsplit(":", 1)[1]
    site = replace(offline_site(registry.host), artifacts=tmp_path / "artifacts")
    stack = py3_stack()
    make_artifact(site.artifacts / stack.stack_id / version, stack=stack.stack_id, version=version)

    _publish(stack, site, None)  # what `doit publish stack=py3` runs: it must write the documented address

    root = tmp_path / "root"
    root.mkdir()
    run = subprocess.run(
        swstack_argv(*argv[1:2], ref, *argv[3:], "--root", str(root)), capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr
    active = json.loads(
        subprocess.run(swstack_argv("active", "--json", "--root", str(root)), capture_output=True, text=True).stdout
    )
    assert [(s["stack"], s["version"]) for s in active["stacks"]] == [("py3", version)]

    # The Ansible role runs `swstack activate {{ swstack_source }}`: the same address, the same version.
    source, expect = ansible_source()
    assert source == argv[2] and expect == version
    again = subprocess.run(
        swstack_argv("activate", source.replace(DOC_HOST, registry.host, 1), "--root", str(root)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 3, again.stdout + again.stderr  # already live

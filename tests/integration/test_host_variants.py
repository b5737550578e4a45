"""Variants and prefixes through the real build: a stack whose prefix differs from its name, built with
`doit build` as its default and its dev variant, then activated in a private /data0 where it was built.

The live path is the prefix the tree was built for (``/data0/sw/toolbox`` for the stack
``tools``), and both variants are versions of that one live path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.support.host import bwrap_argv
from tests.support.project import doit, project_with_dodo

from swstack.manifest import Manifest

STACK = textwrap.dedent("""
    name = "tools"
    channels = ["conda-forge"]
    prefix = "/data0/sw/toolbox"
    [dependencies]
    sitepaths = "*"
    [variants.stable]
    default = true
    description = "released"
    [variants.dev]
    description = "development"
""")

SCRIPT = r"""
import json, os, subprocess, sys
stable, dev = sys.argv[1:3]
swstack = [sys.executable, "-m", "swstack.cli"]
def sw(*args):
    res = subprocess.run([*swstack, *args], capture_output=True, text=True)
    return {"rc": res.returncode, "out": res.stdout, "err": res.stderr}
report = {}
report["stable"] = sw("activate", stable)
report["stable_run"] = subprocess.run(["/data0/sw/toolbox/bin/sitepaths"], capture_output=True, text=True).stdout
report["dev"] = sw("activate", dev)
report["link"] = os.readlink("/data0/sw.tmpfs/toolbox")
report["dev_run"] = subprocess.run(["/data0/sw/toolbox/bin/sitepaths"], capture_output=True, text=True).stdout
report["active"] = json.loads(sw("active", "--json")["out"])
report["back"] = sw("set-version", "1", "--stack", "toolbox")
report["back_link"] = os.readlink("/data0/sw.tmpfs/toolbox")
report["restore"] = sw("restore")
report["tmpfs"] = sorted(os.listdir("/data0/sw.tmpfs"))
print("REPORT:" + json.dumps(report))
"""


@pytest.fixture(scope="module")
def variant_artifacts(project_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The stack locked and built as a user does it: `doit lock`, then `doit build` per variant."""
    project = project_with_dodo(tmp_path_factory.mktemp("variants") / "proj", project_copy, sandbox="namespace")
    (project / "stacks/tools.toml").write_text(STACK)
    site = "site=sites/offline.toml"
    for args in (("lock", "stack=tools"), ("build", "stack=tools", "version=1"),
                 ("build", "stack=tools", "variant=dev", "version=2")):  # fmt: skip
        result = doit(project, *args, site)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return project / "artifacts/tools/1", project / "artifacts/tools-dev/2"


def test_variants_share_the_live_path_of_their_built_prefix(
    variant_artifacts: tuple[Path, Path], tmp_path: Path
) -> None:
    stable, dev = variant_artifacts
    assert Manifest.load(dev / "manifest.json").stack_id == "tools-dev"
    assert Manifest.load(dev / "manifest.json").prefix == "/data0/sw/toolbox"
    root = tmp_path / "root"
    root.mkdir()
    script = tmp_path / "variants.py"
    script.write_text(SCRIPT)
    res = subprocess.run(
        bwrap_argv(root, [sys.executable, str(script), str(stable), str(dev)], tmpfs_size=1 << 30),
        capture_output=True, text=True, timeout=600, env=dict(os.environ),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout.split("REPORT:", 1)[1])
    assert report["stable"]["rc"] == 0, report["stable"]
    assert "relocat" not in report["stable"]["out"] + report["stable"]["err"]  # built for this path
    assert report["stable_run"].splitlines()[0].endswith("/data0/sw/toolbox")
    assert report["dev"]["rc"] == 0, report["dev"]
    assert "toolbox: 2 (tools-dev) active" in report["dev"]["out"]
    assert report["link"] == ".tools-dev@2"
    assert report["dev_run"].splitlines()[0].endswith("/data0/sw/toolbox")
    (entry,) = report["active"]["stacks"]
    assert (entry["stack"], entry["tree"], entry["variant"], entry["version"]) == ("toolbox", "tools-dev", "dev", "2")
    assert entry["previous"] == "1" and entry["live_path"] == "/data0/sw/toolbox"
    assert report["back"]["rc"] == 0, report["back"]
    assert report["back_link"] == ".tools@1"
    assert report["restore"]["rc"] == 3, report["restore"]
    assert report["tmpfs"] == [".tools@1", "toolbox"]
    assert not (root / "sw.tmpfs" / "tools").exists() and not (root / "sw.tmpfs" / "tools-dev").exists()

"""A real built py3 artifact activated in a private /data0, then a real IPython kernel from its spec."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.host import bwrap_argv

KERNEL_SCRIPT = r"""
import glob, os, sys
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from swstack.cli import main

rc = main(["activate", sys.argv[1]])
assert rc == 0, rc
dirs = glob.glob("/data0/sw/py3/share/jupyter/kernels/*/kernel.json")
assert dirs, "no kernel spec in /data0/sw/py3/share/jupyter/kernels"
name = os.path.basename(os.path.dirname(dirs[0]))
ksm = KernelSpecManager(kernel_dirs=["/data0/sw/py3/share/jupyter/kernels"])
km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
env = dict(os.environ, PATH="/data0/sw/py3/bin:" + os.environ["PATH"])
env.pop("PYTHONPATH", None)
km.start_kernel(env=env)
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=120)
out = []
kc.execute_interactive("import numpy, sys; print(sys.prefix)", timeout=120,
                       output_hook=lambda m: out.append(m["content"].get("text", "")))
kc.stop_channels()
km.shutdown_kernel(now=True)
print("KERNEL:" + "".join(out).strip())
"""


@pytest.mark.slow
def test_real_kernel_from_activated_stack(py3_artifact: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    script = tmp_path / "kernel_check.py"
    script.write_text(KERNEL_SCRIPT)
    env = dict(os.environ)
    res = subprocess.run(
        bwrap_argv(root, [sys.executable, str(script), str(py3_artifact)], tmpfs_size=8 << 30),
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "KERNEL:/data0/sw/py3" in res.stdout

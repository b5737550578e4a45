"""The restore unit: `systemd-analyze verify` accepts it, and its ExecStart is where the Ansible role
installs swstack (the role renders the same line from its variables)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "swstack-restore.service"
DEFAULTS = REPO / "ansible" / "roles" / "swstack_host" / "defaults" / "main.yml"


def _exec_start(text: str) -> str:
    (line,) = re.findall(r"(?m)^ExecStart=(.*)$", text)
    return line


def _render(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: _render(str(variables[m.group(1)]), variables), value)


def test_exec_start_is_where_the_role_installs_swstack() -> None:
    defaults = yaml.safe_load(DEFAULTS.read_text())
    swstack_bin = _render(defaults["swstack_bin"], defaults)
    assert _exec_start(UNIT.read_text()) == f"{swstack_bin} restore --root {defaults['swstack_root']} --wait 600"


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed (Debian's systemd package; scripts/setup installs it)"
    swstack = Path(sys.executable).with_name("swstack")
    assert swstack.exists()
    # As the role renders it: ExecStart names the swstack really installed (verify checks it runs).
    text = re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={swstack}", UNIT.read_text())
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    res = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr


@pytest.mark.parametrize("broken", ["ExecStart=/nonexistent/swstack restore", "Type=oneshotx"])
def test_systemd_analyze_catches_a_broken_unit(tmp_path: Path, broken: str) -> None:
    """The check above can fail: a unit whose command is missing or whose type is wrong is reported."""
    key = broken.split("=", 1)[0]
    text = re.sub(rf"(?m)^{key}=.*$", broken, UNIT.read_text())
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    res = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode != 0 or res.stderr.strip(), (res.returncode, res.stderr)

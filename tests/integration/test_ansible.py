"""The Ansible rollout against localhost: pip-install swstack, activate from the registry, idempotently.

ansible-core comes from the ``dev`` extra (``scripts/setup`` installs it). The host root is a
temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.registry import (
    LocalRegistry,
    registry_fixture,  # noqa: F401 - provides the `registry` fixture
)

from swstack import proc
from swstack.publish import publish_artifact

pytestmark = [pytest.mark.registry, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "ansible" / "rollout.yml"


@pytest.fixture(scope="module")
def ansible_playbook() -> str:
    exe = Path(sys.executable).with_name("ansible-playbook")
    assert exe.exists(), "ansible-core is missing from the virtualenv (the dev extra): run scripts/setup"
    return str(exe)


@pytest.fixture(scope="module")
def host_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A conda-pack-like artifact that `swstack activate` accepts (the host tests' own maker)."""
    from tests.support.host import make_artifact

    return Path(make_artifact(tmp_path_factory.mktemp("art") / "py3", stack="py3", version="2026.11.21"))


def _run(
    playbook: str, inventory: Path, extra: dict[str, object], check: int | None = 0, options: tuple[str, ...] = ()
) -> str:
    env = {
        **os.environ,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_LOCAL_TEMP": str(inventory.parent / "ansible-tmp"),
        "ANSIBLE_REMOTE_TEMP": str(inventory.parent / "ansible-tmp"),
    }
    result = proc.run(
        [playbook, "-i", str(inventory), str(PLAYBOOK), "-e", json.dumps(extra), *options],
        env=env,
        check=False,
        timeout=900,
    )
    output = result.stdout + result.stderr
    if check is not None:
        assert result.returncode == check, output
    return output


def _task_status(output: str, task_fragment: str, host: str = "localhost") -> str:
    """'changed', 'ok', 'fatal' or 'skipping' for the task whose title holds ``task_fragment``."""
    for block in output.split("TASK [")[1:]:
        title = block.split("]", 1)[0]
        if task_fragment in title:
            match = re.search(rf"^(changed|ok|failed|fatal|skipping): \[{re.escape(host)}\]", block, re.M)
            assert match, block
            return match.group(1)
    raise AssertionError(f"no task {task_fragment!r} in:\n{output}")


def _recap(output: str, host: str = "localhost") -> dict[str, int]:
    line = re.search(rf"^{re.escape(host)}\s*:(.*)$", output, re.M)
    assert line, output
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line.group(1))}


def _local_host(tmp_path: Path, source: Path, root_name: str = "root") -> tuple[Path, Path, dict[str, object]]:
    """A root and a systemd root of their own, and the role's variables for them: the swstack of
    this environment (installed already), the artifact ``source``."""
    root, sysroot = tmp_path / root_name, tmp_path / "sysroot"
    root.mkdir()
    (sysroot / "etc" / "systemd" / "system").mkdir(parents=True)
    extra: dict[str, object] = {
        "swstack_install": "none",
        "swstack_bin": str(Path(sys.executable).with_name("swstack")),
        "swstack_source": str(source),
        "swstack_root": str(root),
        "swstack_systemd_root": str(sysroot),
    }
    return root, sysroot, extra


@pytest.fixture
def inventory(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "inventory.ini"
    path.write_text(
        f"[notebook_hosts]\nlocalhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    )
    yield path


def test_rollout_activates_once_then_reports_unchanged(
    ansible_playbook: str,
    host_artifact: Path,
    registry: LocalRegistry,
    inventory: Path,
    tmp_path: Path,
) -> None:
    digest = publish_artifact(host_artifact, f"{registry.host}/swstack/py3")
    root = tmp_path / "root"
    root.mkdir()
    extra = {
        "swstack_source": f"{registry.host}/swstack/py3:2026.11.21",
        "swstack_root": str(root),
        "swstack_install": "pip",
        "swstack_package": str(REPO),
        "swstack_venv": str(tmp_path / "venv"),
        "swstack_python": sys.executable,
        "swstack_expect_version": "2026.11.21",
        "swstack_systemd_root": str(tmp_path / "sysroot"),
    }
    (tmp_path / "sysroot" / "etc" / "systemd" / "system").mkdir(parents=True)
    first = _run(ansible_playbook, inventory, extra)
    assert _task_status(first, "Record whether the installation changed") == "changed"
    assert _task_status(first, "Install the restore unit") == "changed"
    assert _task_status(first, "Enable the restore unit") == "changed"
    unit = tmp_path / "sysroot/etc/systemd/system/swstack-restore.service"
    exec_start = f"ExecStart={tmp_path / 'venv'}/bin/swstack restore --root {root} --wait 600"
    assert exec_start in unit.read_text().splitlines()
    assert (tmp_path / "venv/bin/swstack").is_file()  # the unit's command is the installed one
    wants = tmp_path / "sysroot/etc/systemd/system/multi-user.target.wants/swstack-restore.service"
    assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/swstack-restore.service"
    assert _task_status(first, "Activate") == "changed"
    assert _task_status(first, "Check the live version") == "ok"
    assert (root / "sw.2026.11.21" / "py3").is_dir(), sorted(os.listdir(root))

    second = _run(ansible_playbook, inventory, extra)
    assert _task_status(second, "Install the restore unit") == "ok"
    assert _task_status(second, "Enable the restore unit") == "ok"
    assert _task_status(second, "Activate") == "ok"
    assert _recap(second)["changed"] == 0, second
    assert digest.startswith("sha256:")


def test_rollout_goes_host_by_host_and_stops_at_a_failure(
    ansible_playbook: str, host_artifact: Path, tmp_path: Path
) -> None:
    """Two hosts (both local, each its own root): the first fails, the second is never touched."""
    roots = {name: tmp_path / name for name in ("first", "second")}
    for root in roots.values():
        root.mkdir()
    inventory, python = tmp_path / "inventory.ini", sys.executable
    inventory.write_text(  # each host's own root as a host variable
        "[notebook_hosts]\n"
        + "".join(
            f"{name} ansible_connection=local swstack_root={root} ansible_python_interpreter={python}\n"
            for name, root in roots.items()
        )
    )
    extra = {
        "swstack_install": "none",
        "swstack_bin": str(Path(sys.executable).with_name("swstack")),
        "swstack_restore_unit": False,
        "swstack_systemd_root": str(tmp_path / "sysroot"),  # never the machine's /etc: the role looks for its unit
    }
    bad = {**extra, "swstack_source": str(tmp_path / "no-such-artifact")}
    output = _run(ansible_playbook, inventory, bad, check=2)
    assert _task_status(output, "Activate", "first") == "fatal"
    assert "no-such-artifact" in output
    assert "[second]" not in output.split("PLAY RECAP")[0]  # serial: 1 stopped before it
    assert not any(roots["second"].iterdir())

    good = {**extra, "swstack_source": str(host_artifact)}
    output = _run(ansible_playbook, inventory, good)
    first_done = output.index("[first]", output.index("Check the live version"))
    assert first_done < output.index("[second]")  # one host at a time, in order
    assert _recap(output, "first")["changed"] == 1 and _recap(output, "second")["changed"] == 1


def test_rollout_passes_the_key_and_policy(
    ansible_playbook: str, host_artifact: Path, tmp_path: Path, inventory: Path
) -> None:
    """With swstack_require_signature the role installs the key and policy; unsigned fails, signed goes live."""
    import shutil

    from swstack import sign

    keys = tmp_path / "keys"
    public = sign.generate_key(keys / "cosign.key")
    artifact = tmp_path / "artifact"
    shutil.copytree(host_artifact, artifact)
    root = tmp_path / "root"
    root.mkdir()
    config = tmp_path / "etc-swstack"
    extra = {
        "swstack_install": "none",
        "swstack_bin": str(Path(sys.executable).with_name("swstack")),
        "swstack_source": str(artifact),
        "swstack_root": str(root),
        "swstack_require_signature": True,
        "swstack_trusted_keys": [str(public)],
        "swstack_config_dir": str(config),
        "swstack_restore_unit": False,  # the unit's own test is above
        "swstack_systemd_root": str(tmp_path / "sysroot"),  # never the machine's /etc
    }
    output = _run(ansible_playbook, inventory, extra, check=2)
    assert _task_status(output, "Activate") == "fatal" and "unsigned" in output
    assert (config / "keys" / "cosign.pub").read_bytes() == public.read_bytes()
    assert 'require = true' in (config / "host.toml").read_text()
    assert not list(root.glob("sw.*"))

    sign.sign_file(artifact / "manifest.json", sign.load_key(keys / "cosign.key"))
    output = _run(ansible_playbook, inventory, extra)
    assert _task_status(output, "Activate") == "changed"
    assert (root / "sw.2026.11.21" / "py3").is_dir()

    # The keys taken out of the inventory: the policy the role wrote goes with them.
    keyless = {**extra, "swstack_require_signature": False, "swstack_trusted_keys": []}
    output = _run(ansible_playbook, inventory, keyless)
    assert _task_status(output, "Remove the signature policy") == "changed"
    assert not (config / "host.toml").exists()
    # One written by hand is the admin's: kept.
    (config / "host.toml").write_text("[signatures]\nrequire = true\ntrusted_keys = [\"keys/cosign.pub\"]\n")
    output = _run(ansible_playbook, inventory, keyless)
    assert _task_status(output, "Remove the signature policy") == "skipping"
    assert (config / "host.toml").is_file()


def test_check_mode_changes_nothing_and_passes(
    ansible_playbook: str, host_artifact: Path, tmp_path: Path, inventory: Path
) -> None:
    """`--check --diff` on a fresh host: the run succeeds, says what it would change, and changes nothing."""
    root, sysroot, extra = _local_host(tmp_path, host_artifact)
    extra["swstack_expect_version"] = "2026.11.21"
    output = _run(ansible_playbook, inventory, extra, options=("--check", "--diff"))
    assert _task_status(output, "Install the restore unit") == "changed"
    assert _task_status(output, "Check the live version") == "skipping"
    assert not any(root.iterdir()) and not any((sysroot / "etc" / "systemd" / "system").iterdir())


def test_the_unit_waits_for_the_mounts_of_the_role_root(
    ansible_playbook: str, host_artifact: Path, tmp_path: Path, inventory: Path
) -> None:
    """With a swstack_root other than /data0 the installed unit is ordered after that root's mounts
    (its ramdisk above all), not /data0's, and restores that root."""
    root, sysroot, extra = _local_host(tmp_path, host_artifact, root_name="srv-data")
    swstack = Path(sys.executable).with_name("swstack")
    _run(ansible_playbook, inventory, extra)
    unit = sysroot / "etc/systemd/system/swstack-restore.service"
    lines = unit.read_text().splitlines()
    assert f"RequiresMountsFor={root} {root}/sw.tmpfs" in lines
    assert f"ReadWritePaths=-{root}" in lines  # the sandbox lets restore write that root, not /data0
    assert f"ExecStart={swstack} restore --root {root} --wait 600" in lines
    assert not any("/data0" in line for line in lines if not line.startswith("#"))
    verify = proc.run(["systemd-analyze", "verify", "--man=no", str(unit)], check=False, timeout=120)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr  # as rendered


def test_turning_the_unit_off_removes_the_one_the_role_installed(
    ansible_playbook: str, host_artifact: Path, tmp_path: Path, inventory: Path
) -> None:
    """swstack_restore_unit turned off after a run that installed the unit: the unit is disabled and
    removed (it was left enabled, restoring at every boot), once; a unit installed by hand is kept."""
    _, sysroot, extra = _local_host(tmp_path, host_artifact)
    _run(ansible_playbook, inventory, extra)
    unit = sysroot / "etc/systemd/system/swstack-restore.service"
    wants = sysroot / "etc/systemd/system/multi-user.target.wants/swstack-restore.service"
    assert unit.is_file() and wants.is_symlink()

    off = {**extra, "swstack_restore_unit": False}
    check = _run(ansible_playbook, inventory, off, options=("--check",))
    assert unit.is_file() and wants.is_symlink()  # check mode changes nothing
    output = _run(ansible_playbook, inventory, off)
    assert not unit.exists() and not wants.is_symlink(), sorted(p.name for p in unit.parent.rglob("*"))
    assert _task_status(check, "Remove the restore unit") == "changed"
    assert _task_status(output, "Disable the restore unit") == "changed"
    assert _task_status(output, "Remove the restore unit") == "changed"
    again = _run(ansible_playbook, inventory, off)
    assert _task_status(again, "Remove the restore unit") == "skipping"
    assert _recap(again)["changed"] == 0, again

    # One copied by hand (the unit's own instructions) is the admin's: kept, and said so.
    unit.write_text((REPO / "systemd" / "swstack-restore.service").read_text())
    output = _run(ansible_playbook, inventory, off)
    assert unit.is_file() and _task_status(output, "Remove the restore unit") == "skipping"
    assert "carries no mark of this role" in output and _recap(output)["changed"] == 0


def test_a_host_whose_activation_failed_gets_no_restore_unit(
    ansible_playbook: str, tmp_path: Path, inventory: Path
) -> None:
    """The unit was installed and enabled before the activation: a run that failed there (a root
    that does not exist) left a unit that would fail at every boot."""
    sysroot = tmp_path / "sysroot"
    (sysroot / "etc" / "systemd" / "system").mkdir(parents=True)
    extra = {
        "swstack_install": "none",
        "swstack_bin": str(Path(sys.executable).with_name("swstack")),
        "swstack_source": str(tmp_path / "no-such-artifact"),
        "swstack_root": str(tmp_path / "root"),
        "swstack_systemd_root": str(sysroot),
    }
    output = _run(ansible_playbook, inventory, extra, check=2)
    assert _task_status(output, "Activate") == "fatal"
    assert sorted(p.name for p in (sysroot / "etc" / "systemd" / "system").rglob("*")) == []


def test_two_trusted_keys_of_one_file_name_are_refused(
    ansible_playbook: str, host_artifact: Path, tmp_path: Path, inventory: Path
) -> None:
    """Two sites' cosign.pub: each would be copied to keys/cosign.pub, the second over the first,
    and the host would trust only that one; the role refuses them before writing anything."""
    from swstack import sign

    publics = [sign.generate_key(tmp_path / site / "cosign.key") for site in ("site-a", "site-b")]
    root, config = tmp_path / "root", tmp_path / "etc-swstack"
    root.mkdir()
    extra = {
        "swstack_install": "none",
        "swstack_bin": str(Path(sys.executable).with_name("swstack")),
        "swstack_source": str(host_artifact),
        "swstack_root": str(root),
        "swstack_require_signature": True,
        "swstack_trusted_keys": [str(p) for p in publics],
        "swstack_config_dir": str(config),
        "swstack_restore_unit": False,
    }
    output = _run(ansible_playbook, inventory, extra, check=2)
    assert _task_status(output, "file names differ") == "fatal"
    assert "rename one" in output
    assert not config.exists() and not any(root.iterdir())


def test_a_relative_root_is_refused_before_anything_is_written(
    ansible_playbook: str, host_artifact: Path, tmp_path: Path, inventory: Path
) -> None:
    """swstack_root=data0: the activation would take it from the directory the module runs in (the
    playbook's, the remote user's home), the unit from / at boot (`--root data0`), with a
    RequiresMountsFor= that systemd ignores; the role refuses it before anything is written."""
    sysroot, config = tmp_path / "sysroot", tmp_path / "etc-swstack"
    (sysroot / "etc" / "systemd" / "system").mkdir(parents=True)
    extra = {
        "swstack_install": "none",
        "swstack_bin": str(Path(sys.executable).with_name("swstack")),
        "swstack_source": str(host_artifact),
        "swstack_root": "data0",
        "swstack_systemd_root": str(sysroot),
        "swstack_config_dir": str(config),
    }
    output = _run(ansible_playbook, inventory, extra, check=2)
    assert _task_status(output, "Check the role's inputs") == "fatal"
    assert "swstack_root" in output and "absolute" in output
    assert not config.exists() and not any((sysroot / "etc" / "systemd" / "system").iterdir())

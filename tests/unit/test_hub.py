"""The spawner menu without a registry: tag forms, choice and order, labels, digests; the
rendered files loaded by traitlets (JupyterHub's loader), DockerSpawner and KubeSpawner;
the prepull plan; the DaemonSet checked against the Kubernetes API models."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from traitlets.config.loader import PyFileConfigLoader

from swstack.engine import LocalImage
from swstack.errors import ImageError
from swstack.hub import (
    Menu,
    MenuError,
    MenuPolicy,
    TaggedImage,
    kube_profiles,
    load_menu,
    plan_menu,
    render_dockerspawner,
    render_kubespawner,
    tag_kind,
)
from swstack.prepull import as_pulled, plan_prepull, render_daemonset

REPO = "registry.example.org:5000/swstack/py3"


def _digest(tag: str) -> str:
    return "sha256:" + tag.encode().hex().ljust(64, "0")[:64]


def _image(tag: str, version: str, created: str, digest: str | None = None) -> TaggedImage:
    return TaggedImage(REPO, tag, digest or _digest(tag), version, created)


IMAGES = [
    _image("latest", "2025.01.14", "2025-01-14T02:00:00Z"),
    _image("2025.01.14", "2025.01.14", "2025-01-14T02:00:00Z"),
    _image("r28_0_0", "28.0.0", "2024-10-01T00:00:00Z"),
    _image("r29_0_0", "29.0.0", "2024-12-02T00:00:00Z"),
    _image("r9_9_9", "9.9.9", "2025-01-13T00:00:00Z"),  # numerically older despite the later date
    _image("w_2024_52", "2024.12.27", "2024-12-27T02:00:00Z"),
    _image("w_2025_01", "2024.12.30", "2024-12-30T02:00:00Z"),
    _image("w_2025_02", "2025.01.10", "2025-01-10T02:00:00Z"),
    _image("w_2025_03", "2025.01.14", "2025-01-14T02:00:00Z", _digest("2025.01.14")),
    *(_image(f"d_2025_01_{d}", f"2025.01.{d}", f"2025-01-{d}T02:00:00Z") for d in ("10", "11", "12", "13")),
    _image("d_2025_01_14", "2025.01.14", "2025-01-14T02:00:00Z", _digest("2025.01.14")),
    _image("exp_tickets-DM-1234", "2025.01.12.1", "2025-01-12T09:00:00Z"),
    _image("exp_0123456789ab", "2025.01.13.2", "2025-01-13T09:00:00Z"),
]


def test_tag_forms() -> None:
    assert [tag_kind(t) for t in ("r29_0_0", "r29", "w_2025_01", "d_2025_01_14", "exp_x", "latest", "2025.01.14")] == [
        "release",
        "release",
        "weekly",
        "daily",
        "experimental",
        None,
        None,
    ]
    assert tag_kind("w_2025_1") is None and tag_kind("d_2025_1_14") is None
    # Forms that name no week or day are not listed: as text they would sort newest.
    odd = ("w_2026_99", "w_2026_00", "w_2025_53", "w_2026_53", "d_2026_13_45", "d_2025_02_29", "d_2024_02_29")
    assert [tag_kind(t) for t in odd] == [None, None, None, "weekly", None, None, "daily"]
    menu = plan_menu([_image("w_2026_99", "x", ""), _image("w_2026_47", "2026.11.16", "2026-11-16T00:00:00Z")])
    assert [e.tag for e in menu.entries] == ["w_2026_47"]


def test_menu_order_choice_labels_and_digests() -> None:
    menu = plan_menu(IMAGES, MenuPolicy(releases=1, weeklies=3, dailies=2, experimentals=1))
    assert [e.tag for e in menu.entries] == [
        "r29_0_0",
        "w_2025_03",
        "w_2025_02",
        "w_2025_01",
        "d_2025_01_14",
        "d_2025_01_13",
        "exp_0123456789ab",
    ]
    assert menu.default.tag == "r29_0_0" and [e.default for e in menu.entries].count(True) == 1
    first = menu.entries[0]
    assert first.display_name == "Release r29_0_0 (29.0.0, built 2024-12-02)"
    assert first.image == f"{REPO}@{_digest('r29_0_0')}"
    assert menu.entries[3].display_name == "Weekly w_2025_01 (2024.12.30, built 2024-12-30)"
    # The weekly and the daily of 2025-01-14 are one image: listed twice, pulled once.
    assert menu.entries[1].image == menu.entries[4].image
    assert len(menu.images()) == len(menu.entries) - 1
    assert len({e.slug for e in menu.entries}) == len(menu.entries)
    assert Menu.from_json(menu.to_json(), "menu.json") == menu


def test_default_without_a_release_and_nothing_to_offer() -> None:
    weeklies_on = plan_menu([i for i in IMAGES if not i.tag.startswith("r")])
    assert weeklies_on.default.tag == "w_2025_03"
    with pytest.raises(MenuError, match="no release .* tag"):
        plan_menu([_image("latest", "1", ""), _image("2025.01.14", "1", "")])
    with pytest.raises(MenuError, match="not a menu file"):
        Menu.from_json('{"format": "other"}', "x.json")


def test_a_menu_file_that_is_not_utf8_is_a_menu_error(tmp_path: Path) -> None:
    """docs/hub.md: an unreadable menu file is a MenuError (exit 9), not a traceback."""
    path = tmp_path / "menu.json"
    path.write_bytes(b"\xff\xfe\x00not a menu")
    with pytest.raises(MenuError, match="not a menu file"):
        load_menu(str(path))


def _load(text: str, tmp_path: Path) -> Any:
    path = tmp_path / "menu_config.py"
    path.write_text(text)
    return PyFileConfigLoader(path.name, str(tmp_path)).load_config()


def test_dockerspawner_loads_the_rendered_menu(tmp_path: Path) -> None:
    from dockerspawner import DockerSpawner

    menu = plan_menu(IMAGES)
    config = _load(render_dockerspawner(menu), tmp_path)
    spawner = DockerSpawner(config=config, user=SimpleNamespace(name="alice", id=1, url="/user/alice/"))
    allowed = spawner._get_allowed_images()
    assert list(allowed) == [e.display_name for e in menu.entries]  # the form's order: default first
    assert list(allowed.values()) == [e.image for e in menu.entries]
    assert spawner.image == menu.default.image and spawner.pull_policy == "never"
    form = spawner.options_form
    assert form.index(menu.entries[0].display_name) < form.index(menu.entries[1].display_name)
    chosen = menu.entries[2]
    assert asyncio.run(spawner.check_allowed(chosen.display_name)) == chosen.image


KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
users: [{name: none, user: {token: unused}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
"""


def test_kubespawner_loads_the_rendered_profile_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KubeSpawner itself reads the profile list and applies a profile; no cluster is contacted
    (KubeSpawner insists on a kube config when it is made, so it gets one naming a closed port)."""
    import kubernetes_asyncio.config.kube_config as kube_config
    from kubespawner import KubeSpawner

    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
    menu = plan_menu(IMAGES)
    config = _load(render_kubespawner(menu), tmp_path)
    chosen = menu.entries[3]

    async def spawn_options(user_options: dict[str, str]) -> Any:
        spawner = KubeSpawner(config=config, _mock=True)  # its API client wants a running loop
        spawner.user_options = user_options
        await spawner.load_user_options()
        return spawner

    async def check() -> None:
        default = await spawn_options({})
        assert default.profile_list == kube_profiles(menu)
        form = default._render_options_form(default.profile_list)
        assert all(e.display_name in form for e in menu.entries)
        assert default.image == menu.default.image
        picked = await spawn_options({"profile": chosen.slug})
        assert picked.image == chosen.image and picked.image_pull_policy == "IfNotPresent"

    asyncio.run(check())


def test_tags_that_slug_alike_get_distinct_slugs_and_kubespawner_starts_the_one_picked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``exp_A``/``exp_a`` and ``exp_a.b``/``exp_a_b`` lowered and dashed are one slug; KubeSpawner
    starts the first profile whose slug matches, so each needs its own."""
    import kubernetes_asyncio.config.kube_config as kube_config
    from kubespawner import KubeSpawner

    (tmp_path / "kubeconfig").write_text(KUBECONFIG)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
    long = "exp_" + "x" * 70
    tags = ["exp_A", "exp_a", "exp_a.b", "exp_a_b", long, long + "y"]
    menu = plan_menu(
        [_image(t, "1", f"2025-01-1{i}T00:00:00Z") for i, t in enumerate(tags)], MenuPolicy(experimentals=9)
    )
    slugs = [e.slug for e in menu.entries]
    assert len(set(slugs)) == len(tags)
    assert all(len(s) <= 63 and s[0].isalnum() and s[-1].isalnum() for s in slugs)
    config = _load(render_kubespawner(menu), tmp_path)

    async def picked(slug: str) -> str:
        spawner = KubeSpawner(config=config, _mock=True)
        spawner.user_options = {"profile": slug}
        await spawner.load_user_options()
        return str(spawner.image)

    async def check() -> None:
        for entry in menu.entries:
            assert await picked(entry.slug) == entry.image, entry.tag

    asyncio.run(check())


def _local(image_id: str, *names: str) -> LocalImage:
    return LocalImage(
        id=image_id,
        repo_tags=tuple(n for n in names if "@" not in n),
        repo_digests=tuple(n for n in names if "@" in n),
    )


def test_prepull_plan_keeps_at_most_n_and_never_one_in_use() -> None:
    menu = plan_menu(IMAGES, MenuPolicy(weeklies=2, dailies=0, experimentals=0))
    wanted = menu.images()  # r29_0_0, w_2025_03, w_2025_02
    local = [
        _local("sha256:aaa", wanted[1], f"{REPO}:w_2025_03"),  # already there
        _local("sha256:old1", f"{REPO}@{_digest('w_2024_52')}", f"{REPO}:w_2024_52"),  # old, unused
        _local("sha256:old2", f"{REPO}@{_digest('r28_0_0')}"),  # old, a container uses it
        _local("sha256:other", "registry.example.org:5000/swstack/other@sha256:" + "e" * 64),  # not ours
    ]
    plan = plan_prepull(menu, local, {"sha256:old2", "sha256:other"}, keep=3)
    assert plan.pull == (wanted[0], wanted[2])
    assert plan.present == (wanted[1],)
    assert plan.remove == (f"{REPO}:w_2024_52", f"{REPO}@{_digest('w_2024_52')}")
    assert plan.in_use == ("sha256:old2",)
    small = plan_prepull(menu, local, set(), keep=1)
    assert small.pull == (wanted[0],) and f"{REPO}:w_2025_03" in small.remove
    assert f"{REPO}@{_digest('r28_0_0')}" in small.remove
    with pytest.raises(ImageError, match="keep at least 1"):
        plan_prepull(menu, local, set(), keep=0)


def test_a_pull_that_names_a_held_image_takes_its_removal_back() -> None:
    """The host holds the default's image only as ``repo:old``: the pull gives that image the pin
    (Docker's id is the config digest, the containerd store's the manifest digest), so the plan
    made on the host as the pulls leave it removes only the image no pull names."""
    menu = plan_menu(IMAGES, MenuPolicy(weeklies=0, dailies=0, experimentals=0))
    pin = menu.images()[0]
    local = [_local("sha256:cfg", f"{REPO}:old"), _local("sha256:gone", f"{REPO}:w_2024_52")]
    assert plan_prepull(menu, local, set(), keep=1).remove == (f"{REPO}:old", f"{REPO}:w_2024_52")
    for ids in (("sha256:cfg", "sha256:manifest"), ("sha256:other", "sha256:cfg")):
        pulled = as_pulled(local, {pin: ids})
        assert pulled[0].repo_digests == (pin,) and pulled[1] == local[1]
        assert plan_prepull(menu, pulled, set(), keep=1).remove == (f"{REPO}:w_2024_52",)
    assert as_pulled(local, {pin: ("sha256:new",)}) == local


def test_daemonset_validates_against_the_kubernetes_models() -> None:
    from kubernetes.client import ApiClient

    menu = plan_menu(IMAGES)
    manifest = render_daemonset(menu, namespace="jhub", keep=4)
    client = ApiClient()
    model = client._ApiClient__deserialize(json.loads(json.dumps(manifest)), "V1DaemonSet")  # type: ignore[attr-defined]
    # Deserialising drops unknown keys and refuses missing required ones; serialising back
    # gives the input only if every key is a field of the API with the right type.
    assert client.sanitize_for_serialization(model) == manifest
    init = model.spec.template.spec.init_containers
    assert [c.image for c in init] == list(menu.images()[:4])
    assert model.spec.selector.match_labels == model.spec.template.metadata.labels
    assert model.metadata.name == "swstack-prepull-py3"
    assert len({c.name for c in init}) == len(init)


def test_daemonset_keep_below_one_is_refused_as_prepull_refuses_it() -> None:
    menu = plan_menu(IMAGES)
    assert len(render_daemonset(menu, keep=2)["spec"]["template"]["spec"]["initContainers"]) == 2
    for keep in (0, -1):
        with pytest.raises(ImageError, match=f"--keep {keep}: keep at least 1 image"):
            render_daemonset(menu, keep=keep)


def test_daemonset_missing_required_field_is_caught() -> None:
    from kubernetes.client import ApiClient

    manifest = render_daemonset(plan_menu(IMAGES))
    del manifest["spec"]["template"]["spec"]["initContainers"][0]["name"]
    with pytest.raises(ValueError, match="name"):
        ApiClient()._ApiClient__deserialize(manifest, "V1DaemonSet")  # type: ignore[attr-defined]


def test_a_menu_file_that_is_not_there_is_named_as_one(tmp_path: Path) -> None:
    """A .json source (or a directory) is meant as a menu file: not 'no registry host'."""
    missing = tmp_path / "menu.json"
    with pytest.raises(MenuError) as caught:
        load_menu(str(missing))
    assert str(caught.value) == (
        f"{missing}: no such menu file; render one with `swstack hub-config REPOSITORY --format json -o {missing}`"
    )
    with pytest.raises(MenuError, match="no such menu file"):
        load_menu(str(tmp_path))


def test_hub_config_output_that_is_a_directory_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`-o DIR` fails in one line naming DIR, not the temporary file the atomic write renamed."""
    from swstack import cli

    menu_file = tmp_path / "menu.json"
    menu_file.write_text(plan_menu([_image("r29_0_0", "29.0.0", "2025-01-07T12:00:00Z")]).to_json())
    (out := tmp_path / "etc").mkdir()
    assert cli.main(["hub-config", str(menu_file), "--format", "kube", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f"swstack hub-config: error: {out}: Is a directory\n"
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["etc", "menu.json"]


def test_hub_config_refuses_an_empty_output_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`-o ""` (an unset variable in a timer's script) is a usage error, not the menu on stdout."""
    from swstack import cli

    menu_file = tmp_path / "menu.json"
    menu_file.write_text(plan_menu([_image("r29_0_0", "29.0.0", "2025-01-07T12:00:00Z")]).to_json())
    for argv in (["-o", ""], ["--output="]):
        with pytest.raises(SystemExit) as exited:
            cli.main(["hub-config", str(menu_file), *argv])
        assert exited.value.code == 2
        out, err = capsys.readouterr()
        assert out == "" and err.splitlines()[-1] == (
            "swstack hub-config: error: argument --output/-o: an empty path; give a file, or leave -o out for stdout"
        )


@pytest.mark.parametrize("command", ["hub-config", "prepull"])
@pytest.mark.parametrize("option", ["--releases", "--weeklies", "--dailies", "--experimentals"])
def test_a_negative_count_of_menu_entries_is_a_usage_error(
    command: str, option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--weeklies -1` listed no weekly without a word: a usage error (exit 2) naming the option."""
    from swstack import cli

    menu_file = tmp_path / "menu.json"
    menu_file.write_text(plan_menu([_image("r29_0_0", "29.0.0", "2025-01-07T12:00:00Z")]).to_json())
    with pytest.raises(SystemExit) as exited:
        cli.main([command, str(menu_file), "--keep", "1", f"{option}=-1"])
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines()[-1] == (
        f"swstack {command}: error: argument {option}: '-1': give a whole number, 0 or more"
    )

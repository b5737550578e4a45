"""Site settings: the embedded defaults, placeholders and relative paths, located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from swstack.errors import SiteError
from swstack.site import DEFAULT_CHANNEL_ALIAS, load_site

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_site_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SWSTACK_SITE", raising=False)
    monkeypatch.setenv("SWSTACK_CACHE", str(tmp_path / "cache"))


def _site_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sites" / "here.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_without_a_site_file_the_defaults_work(tmp_path: Path) -> None:
    site = load_site(None, tmp_path)
    assert site.name == "default" and site.source is None
    assert site.artifacts == tmp_path.resolve() / "artifacts"
    assert site.cache == (tmp_path / "cache").resolve()
    assert site.sandbox == "auto" and site.registry is None and not site.registry_insecure
    assert site.channel_url("conda-forge") == f"{DEFAULT_CHANNEL_ALIAS}/conda-forge"
    assert site.image_ref("debian:bookworm-slim") == "debian:bookworm-slim"


def test_swstack_site_chooses_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _site_file(tmp_path, 'name = "from-env"\n')
    monkeypatch.setenv("SWSTACK_SITE", str(path))
    assert load_site(None, tmp_path).name == "from-env"
    assert load_site(_site_file(tmp_path, 'name = "given"\n'), tmp_path).name == "given"


def test_a_relative_site_path_is_found_in_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _site_file(tmp_path, 'name = "in-project"\n')
    monkeypatch.chdir(tmp_path.parent)
    assert load_site("sites/here.toml", tmp_path).name == "in-project"


def test_placeholders_and_relative_paths(tmp_path: Path) -> None:
    path = _site_file(
        tmp_path,
        """\
artifacts = "../out"
cache = "{project}/cache-here"

[channels.mirrors]
conda-forge = "{cache}/offline-channel"
bioconda = "https://mirror.example.org/bioconda/"

[pip]
wheelhouse = "wheels"

[pip.git_mirrors]
"https://git.example.org/a.git" = "{cache}/git/a.git"
""",
    )
    site = load_site(path, tmp_path)
    cache = tmp_path.resolve() / "cache-here"
    assert site.source == path and site.cache == cache
    assert site.artifacts == tmp_path.resolve() / "out"  # relative to the site file
    assert site.pip_wheelhouse == tmp_path.resolve() / "sites" / "wheels"
    assert site.channel_url("conda-forge") == (cache / "offline-channel").as_uri()
    assert site.channel_url(f"{DEFAULT_CHANNEL_ALIAS}/conda-forge") == (cache / "offline-channel").as_uri()
    assert site.channel_url("bioconda") == "https://mirror.example.org/bioconda"  # no trailing slash
    assert site.channel_url("https://example.org/ch/") == "https://example.org/ch"
    assert site.git_url("https://git.example.org/a.git") == (cache / "git" / "a.git").as_uri()


def test_a_loopback_registry_is_plain_http_and_images_follow_it(tmp_path: Path) -> None:
    path = _site_file(
        tmp_path,
        '[registry]\nurl = "127.0.0.1:5000"\n[images.mirrors]\n"debian:bookworm-slim" = "{registry}/swstack/debian"\n',
    )
    site = load_site(path, tmp_path)
    assert site.registry == "127.0.0.1:5000" and site.registry_insecure
    assert site.image_ref("debian:bookworm-slim") == "127.0.0.1:5000/swstack/debian"
    remote = load_site(_site_file(tmp_path, '[registry]\nurl = "registry.example.org/jupyter"\n'), tmp_path)
    assert not remote.registry_insecure


def test_the_shipped_offline_site_loads() -> None:
    site = load_site(ROOT / "sites/offline.toml", ROOT)
    assert site.name == "offline" and site.registry == "127.0.0.1:5000"
    assert site.mirrors["conda-forge"] == (site.cache / "offline-channel").as_uri()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name = "x"\nregistr = "a"\n', r"here\.toml:2: registr: unknown key"),
        # The root is the host commands' --root, not a site setting.
        ('root = "/data0"\n', r"here\.toml:1: root: unknown key"),
        ('sandbox = "vm"\n', r"here\.toml:1: sandbox: .*'auto', 'docker' or 'namespace'"),
        ('[registry]\nurl = "https://r.example.org"\n', r"here\.toml:2: registry\.url: .*without a scheme"),
        ('name = "x"\n[pip\n', r"here\.toml:2: invalid TOML"),
    ],
)
def test_errors_name_the_file_the_line_and_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(SiteError, match=expected) as caught:
        load_site(_site_file(tmp_path, text), tmp_path)
    assert caught.value.exit_code == SiteError.exit_code
    assert "Traceback" not in str(caught.value)


@pytest.mark.parametrize("key", ["cache", "artifacts"])
def test_a_directory_setting_naming_a_file_is_one_located_line(tmp_path: Path, key: str) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file")
    path = _site_file(tmp_path, f'name = "x"\n{key} = "{taken}"\n')
    with pytest.raises(SiteError) as caught:
        load_site(path, tmp_path)
    assert str(caught.value) == (f"{path}:2: {key}: {taken} is not a directory; "
                                 "name a directory (it is made when missing)")


def test_a_missing_site_file_is_a_site_error(tmp_path: Path) -> None:
    with pytest.raises(SiteError, match=r"nowhere\.toml: no such file"):
        load_site(tmp_path / "nowhere.toml", tmp_path)


def test_an_image_mirror_on_the_registry_needs_a_registry(tmp_path: Path) -> None:
    site = load_site(_site_file(tmp_path, '[images.mirrors]\n"debian:12" = "{registry}/debian"\n'), tmp_path)
    with pytest.raises(SiteError, match="names no registry: set \\[registry\\] url"):
        site.image_ref("debian:12")


def test_a_site_file_that_is_not_utf8_is_one_located_line(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_bytes(b'name = "test"\nartifacts = "/srv/art\xe9facts"\n')
    with pytest.raises(SiteError) as caught:
        load_site(path, tmp_path)
    assert str(caught.value) == f"{path}:2: not UTF-8 text (byte 0xe9); save the file as UTF-8"

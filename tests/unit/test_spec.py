"""Stack files: the shipped stacks load, and every kind of bad input gives a located error."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from tests.support.host import base_manifest

from swstack.errors import SpecError
from swstack.spec import find_stack_file, load_stack, load_stack_file

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
name = "demo"
channels = ["conda-forge"]

[dependencies]
python = "3.11.*"
"""


def write(tmp_path: Path, text: str, name: str = "demo.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_stack_file(path)
    assert info.value.exit_code == 2
    return str(info.value)


# ---- the shipped stacks ----------------------------------------------------------------------------


def test_py3_variants_resolve_to_their_own_pip_sources() -> None:
    stable = load_stack(ROOT / "stacks/py3.toml")
    dev = load_stack(ROOT / "stacks/py3.toml", "dev")
    assert stable.variant == "stable" and stable.stack_id == "py3" and stable.lock_subdir == "py3"
    assert dev.stack_id == "py3-dev" and dev.lock_subdir == "py3/dev"
    assert dict(stable.pip)["labclient"] == ">=1.0,<2"
    git = dict(dev.pip)["labclient"]
    assert not isinstance(git, str) and git.git.endswith("labclient.git") and git.ref == "main"
    assert stable.conda == dev.conda
    assert "python 3.11.*" in stable.conda and "jupyterlab 4.*" in stable.conda
    assert stable.prefix == "/data0/sw/py3"
    assert stable.kernels[0].name == "python3"
    # base.toml is merged in
    assert stable.channels == ("conda-forge",) and stable.pack.level == 3
    assert stable.lock.virtual_packages["__glibc"] == "2.36"


def test_antares_kernel_is_owned_by_its_group() -> None:
    stack = load_stack(ROOT / "stacks/antares-kernel.toml")
    assert stack.owner is not None and stack.owner.spec == "899:899"
    assert stack.prefix == "/data0/sw/antares-kernel"
    assert stack.kernel_spec_dirs == ("../kernel-specs",)


def test_default_prefix_and_seed_names(tmp_path: Path) -> None:
    assert load_stack(write(tmp_path, MINIMAL)).prefix == "/data0/sw/demo"
    seed = write(tmp_path, MINIMAL.replace('name = "demo"', 'name = "anaconda3"'), "a3.toml")
    assert load_stack(seed).prefix == "/data0/sw/anaconda3"


def test_variant_can_remove_and_add(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """
numpy = "*"
[variants.lite]
dependencies = { numpy = false, scipy = ">=1.10" }
""",
    )
    lite = load_stack(path, "lite")
    assert lite.conda == ("python 3.11.*", "scipy >=1.10")


def test_a_default_variant_of_another_name_names_the_bare_stack(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """
[variants.edge]
[variants.lts]
default = true
""",
    )
    lts, edge = load_stack(path), load_stack(path, "edge")
    assert lts.variant == "lts" and lts.is_default_variant and lts.stack_id == "demo"
    assert not edge.is_default_variant and edge.stack_id == "demo-edge" and edge.lock_subdir == "demo/edge"
    # The manifest of a build of each names the same artifact directory as the stack.
    for stack in (lts, edge):
        manifest = replace(base_manifest("demo", "1", stack.prefix), variant=stack.variant,
                           default_variant=stack.default_variant)
        assert manifest.stack_id == stack.stack_id


def test_digest_ignores_comments_and_formatting(tmp_path: Path) -> None:
    a = load_stack(write(tmp_path, MINIMAL, "a.toml"))
    reformatted = MINIMAL.replace(" = ", "=").replace('name="demo"', 'name = "demo"')
    b = load_stack(write(tmp_path, "# a comment\n" + reformatted, "b.toml"))
    assert a.source_hash == b.source_hash


# ---- bad input: every class names file, line, key and what to do ----------------------------------------


def test_unknown_key_suggests_the_nearest(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('channels = ["conda-forge"]', 'chanels = ["conda-forge"]\nchannels = ["x"]'))
    message = error_of(path)
    assert "demo.toml:2: chanels: unknown key; did you mean 'channels'?" in message


def test_unknown_nested_key_points_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[image]\nrepo = "x"\n')
    message = error_of(path)
    assert "demo.toml:8: image.repo: unknown key; did you mean 'repository'?" in message


def test_top_level_key_under_a_table_says_to_move_it(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[[kernels]]\nname = "py"\ndisplay_name = "Py"\nowner = "root:root"\n')
    message = error_of(path)
    assert "demo.toml:10: kernels[0].owner: unknown key" in message
    assert "owner is a top-level key: move it above the first [table] or [[array]] header" in message


def test_gzip_level_above_nine_is_refused(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL + '\n[pack]\nformat = "tar.gz"\nlevel = 15\n'))
    assert "demo.toml:9: pack.level: 15: tar.gz takes levels 1 to 9" in message
    load_stack(write(tmp_path, MINIMAL + '\n[pack]\nformat = "tar.zst"\nlevel = 15\n', "zst.toml"))


def test_wrong_type(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL + '\n[pack]\nlevel = "high"\n'))
    assert "demo.toml:8: pack.level:" in message and "integer" in message



@pytest.mark.parametrize(
    ("table", "given", "got"),
    [
        ("[pack]\nlevel", '"3"', "got a string: '3'"),  # TOML has integers: a quoted one is a typo
        ("[pack]\nthreads", "2.0", "got a number: 2.0"),
        ("[image]\nuid", "true", "got true/false: True"),
        ('[variants.dev]\ndefault', '"yes"', "got a string: 'yes'"),
    ],
)
def test_numbers_and_booleans_are_not_coerced(tmp_path: Path, table: str, given: str, got: str) -> None:
    message = error_of(write(tmp_path, MINIMAL + f"\n{table} = {given}\n"))
    assert "demo.toml:8:" in message and got in message

def test_invalid_match_spec(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL + 'numpy = ">=1..2[["\n'))
    assert "demo.toml" in message and "dependencies" in message and "invalid conda match spec" in message


def test_a_version_constraint_where_the_build_string_goes_is_refused(tmp_path: Path) -> None:
    """conda's "version build" form: rattler reads ">=1.26 <2" as a build named "<2", which no package
    has, and the lock failed with "no candidates" blaming the channel; conda refuses the spec."""
    message = error_of(write(tmp_path, MINIMAL + 'numpy = ">=1.26 <2"\n'))
    assert message == (f"{tmp_path / 'demo.toml'}:6: dependencies.numpy: invalid conda match spec 'numpy >=1.26 <2': "
                       "'<2' would be its build string; join version constraints with ',' (>=1.26,<2)")
    stack = load_stack(write(tmp_path, MINIMAL + 'numpy = ">=1.26,<2"\nscipy = "1.11.* py311*"\n', "ok.toml"))
    assert "numpy >=1.26,<2" in stack.conda and "scipy 1.11.* py311*" in stack.conda  # a real build string stays


def test_a_bare_pip_version_is_not_read_as_another_project(tmp_path: Path) -> None:
    """``labclient = "1.0"`` was joined into the requirement ``labclient1.0``: another project, which
    pip then failed to find, in its own words."""
    message = error_of(write(tmp_path, MINIMAL + '\n[pip.dependencies]\nlabclient = "1.0"\n'))
    assert message == (f"{tmp_path / 'demo.toml'}:8: pip.dependencies.labclient: invalid pip requirement "
                       "'labclient1.0': '1.0' is not a version specifier (pip would look for a project named "
                       "'labclient1.0'); write a PEP 440 one, e.g. '==1.0'")
    ok = write(tmp_path, MINIMAL + '\n[pip.dependencies]\nlabclient = "[extra]>=1.0"\nb = "==1.0"\n', "ok.toml")
    assert dict(load_stack(ok).pip) == {"labclient": "[extra]>=1.0", "b": "==1.0"}


@pytest.mark.parametrize(
    ("platforms", "expected"),
    [
        ('["linux-64", "linux-aarch64", "linux-64"]', "platforms: 'linux-64' is listed twice; list each platform once"),
        ('["noarch"]', "platforms: 'noarch' is no platform to lock for: noarch packages are solved with each "
                       "platform's own; list the hosts' platforms, e.g. [\"linux-64\"]"),
    ],
)
def test_a_platform_listed_twice_or_noarch_is_refused(tmp_path: Path, platforms: str, expected: str) -> None:
    """A platform listed twice was solved twice and written into a lockfile conda-lock's parser cannot
    read (every later lock or build then said only "not a readable conda-lock file (AssertionError)")."""
    message = error_of(write(tmp_path, MINIMAL.replace("channels =", f"platforms = {platforms}\nchannels =")))
    assert message == f"{tmp_path / 'demo.toml'}:2: {expected}"


def test_a_table_given_only_by_a_deeper_header_is_located(tmp_path: Path) -> None:
    """``[lock.platform.linux-aarch46]`` defines lock.platform on its line: the error about that table's
    keys points there, not at the file alone."""
    message = error_of(write(tmp_path, MINIMAL + '\n[lock.platform.linux-aarch46]\nvirtual_packages = {}\n'))
    assert message == (f"{tmp_path / 'demo.toml'}:7: lock.platform: unknown platform 'linux-aarch46'; "
                       "did you mean 'linux-aarch64'?")


def test_invalid_pip_version(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL + '\n[pip.dependencies]\nlabclient = "=>1.0"\n'))
    assert "demo.toml:8: pip.dependencies.labclient" in message and "invalid pip requirement" in message


def test_missing_required_field(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, 'name = "demo"\n[dependencies]\npython = "3.11.*"\n'))
    assert message.endswith("/demo.toml: channels: required key is missing; add it at the top of the file, above the "
                       "first [table] or [[array]] header")


def test_extends_cycle(tmp_path: Path) -> None:
    write(tmp_path, 'extends = "b.toml"\n', "a.toml")
    write(tmp_path, 'extends = "a.toml"\n', "b.toml")
    message = error_of(tmp_path / "a.toml")
    a, b = (tmp_path / "a.toml").resolve(), (tmp_path / "b.toml").resolve()
    # The line of the 'extends' that closes the cycle, as every other stack-file error has.
    assert message == f"{b}:1: extends: 'a.toml' forms a cycle: {a} -> {b} -> {a}; remove one of these 'extends'"
    write(tmp_path, 'channels = ["conda-forge"]\n', "base.toml")
    write(tmp_path, 'name = "c"\nextends = ["base.toml", "c.toml"]\n', "c.toml")
    assert error_of(tmp_path / "c.toml").startswith(f"{tmp_path / 'c.toml'}:2: extends: 'c.toml' forms a cycle")


def test_extends_missing_file(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, 'extends = "nope.toml"\n' + MINIMAL))
    assert "demo.toml:1: extends: 'nope.toml': no such file (a file beside" in message
    write(tmp_path, 'channels = ["conda-forge"]\n', "base.toml")
    message = error_of(write(tmp_path, 'extends = "bsae.toml"\n' + MINIMAL))
    assert "demo.toml:1: extends: 'bsae.toml': no such file; did you mean 'base.toml'?" in message


def test_error_in_base_points_into_base(tmp_path: Path) -> None:
    write(tmp_path, 'platforms = ["linux-46"]\nchannels = ["conda-forge"]\n', "base.toml")
    path = write(tmp_path, 'extends = "base.toml"\nname = "x"\n[dependencies]\npython = "*"\n', "x.toml")
    message = error_of(path)
    assert "base.toml:1: platforms: unknown platform 'linux-46'; did you mean 'linux-64'?" in message


def test_invalid_toml_has_line(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL + "numpy = \n"))
    assert message.startswith(f"{tmp_path / 'demo.toml'}:6: invalid TOML") or ":6: invalid TOML" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + 'python = "3.12.*"\n', ":6: dependencies.python: defined twice (first on line 5); keep one of them"),
        (MINIMAL + "[dependencies]\n", ":6: dependencies: defined twice (first on line 4); keep one of them"),
        ('name = "demo"\nname = "demo"\n', ":2: name: defined twice (first on line 1); keep one of them"),
        (MINIMAL + '[variants.dev]\ndependencies = { numpy = "1", numpy = "2" }\n',
         ":7: variants.dev.dependencies.numpy: defined twice; keep one of them"),
        (MINIMAL + '[[kernels]]\nname = "k"\nname = "j"\n', ":8: kernels[0].name: defined twice (first on line 7)"),
    ],
    ids=["key", "table", "top-level", "inline-table", "array-table"],
)
def test_a_duplicate_key_is_named_with_its_line(tmp_path: Path, text: str, expected: str) -> None:
    message = error_of(write(tmp_path, text))
    assert expected in message and "\n" not in message, message
    assert message.startswith(str(tmp_path / "demo.toml") + ":") or message.startswith("demo.toml:")


def test_bad_owner_and_tag_field_and_kernel_argv(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'owner = "899:"\n' + MINIMAL + '\n[image]\ntags = ["w_{isoyear}_{wek}"]\n\n[[kernels]]\nname = "k"\n'
        'display_name = "K"\nargv = ["python"]\n',
    )
    message = error_of(path)
    assert "demo.toml:1: owner: owner '899:'" in message
    assert "image.tags" in message and "did you mean '{week}'?" in message
    assert "kernels[0].argv: argv must pass '{connection_file}'" in message



def test_an_owner_id_past_the_largest_is_refused_at_its_line(tmp_path: Path) -> None:
    """An id tar and chown cannot hold failed only when the build had installed the tree and packed it."""
    message = error_of(write(tmp_path, 'owner = "899:4294967295"\n' + MINIMAL))
    assert "demo.toml:1: owner: owner '899:4294967295': id 4294967295 is past 4294967294" in message

def test_a_kernel_spec_dir_that_is_not_there_is_a_located_stack_file_error(tmp_path: Path) -> None:
    (tmp_path / "specs").mkdir()
    text = 'kernel_spec_dirs = ["specs", "../kernel-spces"]\n' + MINIMAL
    message = error_of(write(tmp_path, text))
    assert message == (
        f"{tmp_path / 'demo.toml'}:1: kernel_spec_dirs: '../kernel-spces' is not a directory "
        f"({tmp_path.parent / 'kernel-spces'}); create it, or give the path relative to {tmp_path / 'demo.toml'}"
    )
    # from a shared part: its line, in its file
    write(tmp_path, 'channels = ["conda-forge"]\nkernel_spec_dirs = ["nope"]\n', "base.toml")
    message = error_of(write(tmp_path, 'extends = "base.toml"\n' + MINIMAL.replace('channels = ["conda-forge"]\n', "")))
    assert message.startswith(f"{tmp_path / 'base.toml'}:2: kernel_spec_dirs: 'nope' is not a directory"), message


@pytest.mark.parametrize(("table", "setting", "expected"), [
    ("image", "max_layers = 1", "image.max_layers: input should be greater than or equal to 2 (got 1)"),
    ("image", "uid = 0", "image.uid: input should be greater than or equal to 1 (got 0)"),
    ("pack", "level = 23", "pack.level: input should be less than or equal to 22 (got 23)"),
])
def test_a_number_out_of_its_range_says_the_range_and_the_number(
    tmp_path: Path, table: str, setting: str, expected: str
) -> None:
    message = error_of(write(tmp_path, MINIMAL + f"\n[{table}]\n{setting}\n"))
    assert message == f"{tmp_path / 'demo.toml'}:8: {expected}"


def test_weekly_tag_with_the_calendar_year_is_refused(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL + '\n[image]\ntags = ["w_{yyyy}_{week}"]\n'))
    assert "image.tags" in message and "pair it with {isoyear}, not {yyyy}" in message


@pytest.mark.parametrize("repository", ["Swstack/py3", "swstack//py3", "swstack/py3-", "-py3"])
def test_a_repository_name_a_registry_would_refuse_is_refused_at_load(tmp_path: Path, repository: str) -> None:
    text = MINIMAL + f'\n[image]\nrepository = "{repository}"\n'
    line = text.splitlines().index(f'repository = "{repository}"') + 1
    message = error_of(write(tmp_path, text))
    assert f"demo.toml:{line}: image.repository: {repository!r}: a repository name is lowercase" in message


def test_several_problems_are_reported_at_once(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL + '\n[pack]\nformat = "zip"\nthreads = -1\n'))
    assert len(message.splitlines()) == 2


def test_extension_must_be_a_dependency(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL + '\n[jupyterlab]\nextensions = ["jupyterlab-git"]\n'))
    assert "jupyterlab-git" in message and "is not a dependency" in message


def test_unknown_variant_and_stack(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no variant 'deb'; did you mean 'dev'"):
        load_stack(ROOT / "stacks/py3.toml", "deb")
    with pytest.raises(SpecError, match="no stack named 'py2'.*did you mean 'py3'"):
        find_stack_file("py2", ROOT / "stacks")


def test_a_directory_named_like_a_stack_file_is_no_stack(tmp_path: Path) -> None:
    from swstack.spec import stack_files

    write(tmp_path, MINIMAL)
    (tmp_path / "old.toml").mkdir()  # not offered as a stack, nor read as one
    assert stack_files(tmp_path) == [tmp_path / "demo.toml"]
    with pytest.raises(SpecError) as info:
        find_stack_file("old", tmp_path)
    assert str(info.value) == f"no stack named 'old' in {tmp_path} (stacks: demo)"


def test_the_documented_full_example_is_valid(tmp_path: Path) -> None:
    doc = (ROOT / "docs/stack-file.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "base.toml").write_text("")
    (tmp_path / "kernel-specs").mkdir()
    stack_dir = tmp_path / "stacks"
    stack_dir.mkdir()
    (stack_dir / "base.toml").write_text("")
    path = stack_dir / "py3.toml"
    path.write_text(example)
    dev = load_stack(path, "dev")
    assert "numpy >=2" in dev.conda and dev.owner is not None and dev.kernel_spec_dirs == ("../kernel-specs",)
    assert dev.image.tags[-1] == "exp_{git}"


def test_a_stack_file_must_be_named_after_its_file_and_a_nameless_one_extended(tmp_path: Path) -> None:
    from swstack.spec import stack_files

    stacks = tmp_path / "stacks"
    stacks.mkdir()
    (stacks / "base.toml").write_text('channels = ["conda-forge"]\n')
    (stacks / "py3.toml").write_text('name = "py3"\nextends = "base.toml"\n[dependencies]\npython = "3.11.*"\n')
    assert [p.name for p in stack_files(stacks)] == ["py3.toml"]
    (stacks / "py3.toml").write_text('extends = "base.toml"\nname = "py4"\n[dependencies]\npython = "3.11.*"\n')
    for find in (lambda: stack_files(stacks), lambda: find_stack_file("py3", stacks)):
        with pytest.raises(SpecError, match=r"py3.toml:2: name: 'py4' is not the file's name; set name = \"py3\""):
            find()
    (stacks / "py3.toml").write_text('nmae = "py3"\nextends = "base.toml"\n')
    with pytest.raises(SpecError, match="py3.toml: no top-level name, and no stack file extends it"):
        stack_files(stacks)
    with pytest.raises(SpecError, match="a shared part"):
        find_stack_file("base", stacks)


def test_unknown_keys_inside_named_tables_suggest_the_nearest(tmp_path: Path) -> None:
    text = MINIMAL + '\n[variants.stable]\ndefualt = true\n\n[lock.platform.linux-64]\nvirtual_packges = {}\n'
    message = error_of(write(tmp_path, text))
    assert "demo.toml:8: variants.stable.defualt: unknown key; did you mean 'default'?" in message
    assert "demo.toml:11: lock.platform.linux-64.virtual_packges: unknown key; did you mean" in message


def test_a_check_across_the_file_points_at_the_key_it_names(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL + '\n[jupyterlab]\nextensions = ["ipywidgetz"]\n'))
    assert "demo.toml:8: jupyterlab.extensions: 'ipywidgetz' is not a dependency" in message
    message = error_of(write(tmp_path, 'platforms = "linux-64"\n' + MINIMAL, "t.toml"))
    assert "valid list" in message and "tuple" not in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'name = "demo"\n# ANT\xe9RES, in Latin-1\nchannels = ["conda-forge"]\n',
         "demo.toml:2: not UTF-8 text (byte 0xe9); save the file as UTF-8"),
        (b'\xef\xbb\xbfname = "demo"\n',
         "demo.toml:1: starts with a byte-order mark, which TOML and JSON do not allow; save the file as UTF-8 "
         "without it"),
    ],
    ids=["latin-1", "bom"],
)
def test_a_file_that_is_not_plain_utf8_is_one_located_line(tmp_path: Path, raw: bytes, expected: str) -> None:
    base = tmp_path / "base.toml"
    base.write_bytes(raw.replace(b"demo", b"base").replace(b'name = "base"\n', b""))
    path = tmp_path / "demo.toml"
    path.write_bytes(raw)
    assert error_of(path) == f"{tmp_path}/{expected}"
    # In a file another extends, too: the error names that file.
    stack = write(tmp_path, 'extends = "base.toml"\nname = "x"\n[dependencies]\npython = "*"\n', "x.toml")
    if raw.startswith(b"\xef"):
        base.write_bytes(b"\xef\xbb\xbf" + b'channels = ["conda-forge"]\n')
    assert error_of(stack).startswith(f"{tmp_path}/base.toml:")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[variants.dev]\ndependencies = { nmpy = false }\n',
         ":9: variants.dev.dependencies.nmpy: removes a dependency the stack does not have; did you mean 'numpy'?"),
        ('[variants.dev]\npip.dependencies = { labclient = false }\n',
         ":9: variants.dev.pip.dependencies.labclient: removes a dependency the stack does not have; "
         "the stack has no pip.dependencies"),
        ('[variants.default]\n',
         ":8: variants.default: variant name 'default': 'default' is the variant name of a stack without variants"),
        ('[variants."dev build"]\n', "variant name 'dev build': use lower case letters, digits, '.', '_', '-'"),
    ],
    ids=["misspelt-removal", "pip-removal", "default", "space"],
)
def test_a_variant_is_named_as_a_stack_and_removes_only_what_is_there(
    tmp_path: Path, extra: str, expected: str
) -> None:
    message = error_of(write(tmp_path, MINIMAL + 'numpy = "*"\n\n' + extra))
    assert expected in message and "\n" not in message, message


def test_a_prefix_with_dot_components_is_refused(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, 'prefix = "/data0/sw/../etc"\n' + MINIMAL))
    assert ":1: prefix: prefix '/data0/sw/../etc': write the path without '.' or '..' components" in message


def test_a_misspelt_required_key_is_one_line_not_also_missing(tmp_path: Path) -> None:
    text = 'name = "demo"\nchannels = ["conda-forge"]\n[dependancies]\npython = "*"\n[[kernels]]\nname = "k"\n' \
           'dispaly_name = "K"\n'
    lines = error_of(write(tmp_path, text)).splitlines()
    assert sorted(line.split(": ", 1)[1] for line in lines) == [
        "dependancies: unknown key; did you mean 'dependencies'?",
        "kernels[0].dispaly_name: unknown key; did you mean 'display_name'?",
    ], lines


def test_a_stack_file_without_a_name_named_directly_says_how_to_name_it(tmp_path: Path) -> None:
    write(tmp_path, 'channels = ["conda-forge"]\n[dependencies]\npython = "*"\n', "lab.toml")
    with pytest.raises(SpecError) as caught:
        find_stack_file("lab", tmp_path)
    assert str(caught.value).endswith(
        "lab.toml: no top-level name, so a shared part, not a stack; a stack sets name = \"lab\" "
        "(above the first [table]), or name another stack file"
    )



def test_a_capitalised_key_the_user_chose_stays_in_the_key_path(tmp_path: Path) -> None:
    kernel = '\n[[kernels]]\nname = "k"\ndisplay_name = "K"\nenv = { A = "1", OMP_NUM_THREADS = 1 }\n'
    path = write(tmp_path, MINIMAL + kernel)
    assert error_of(path) == (f"{path}:10: kernels[0].env.OMP_NUM_THREADS: input should be a valid string "
                              "(got an integer: 1)")


def test_a_table_under_an_array_of_tables_is_found_on_its_own_line(tmp_path: Path) -> None:
    kernels = ('\n[[kernels]]\nname = "a"\ndisplay_name = "A"\n\n[[kernels]]\nname = "b"\ndisplay_name = "B"\n'
               '\n[kernels.env]\nOMP_NUM_THREADS = 1\n')
    path = write(tmp_path, MINIMAL + kernels)
    assert error_of(path) == (f"{path}:16: kernels[1].env.OMP_NUM_THREADS: input should be a valid string "
                              "(got an integer: 1)")


@pytest.mark.parametrize(("table", "expected"), [
    ("[variants.dev]\ndependencies = { python = true }\n",
     "variants.dev.dependencies.python: expected a string or false (got true/false: True); "
     "a string replaces or adds the dependency, false removes it"),
    ("[pip.dependencies]\nlabclient = 1\n",
     "pip.dependencies.labclient: expected a string or a table (got an integer: 1)"),
    ("[pip.dependencies]\nlabclient = { gti = 'https://x/y' }\n",
     "pip.dependencies.labclient.gti: unknown key; did you mean 'git'?"),
])
def test_a_value_of_a_union_type_is_one_line_not_one_per_branch(tmp_path: Path, table: str, expected: str) -> None:
    path = write(tmp_path, MINIMAL + "\n" + table)
    assert error_of(path) == f"{path}:8: {expected}"


def test_a_stack_setting_in_a_variant_says_a_variant_cannot_change_it(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[variants.dev]\nprefix = "/data0/sw/py3-dev"\n')
    assert error_of(path) == (
        f"{path}:8: variants.dev.prefix: a variant sets only its description, default, dependencies and "
        "pip.dependencies; prefix is the whole stack's (above the first [table] header): for another prefix, "
        "write a stack file that extends this one")


def test_two_stacks_live_at_one_path_are_refused_at_the_prefix_line(tmp_path: Path) -> None:
    from swstack.spec import check_own_live_path

    write(tmp_path, MINIMAL.replace('"demo"', '"py3"'), "py3.toml")
    text = MINIMAL.replace('"demo"', '"other"').replace("channels", 'prefix = "/data0/sw/py3"\nchannels')
    other = write(tmp_path, text, "other.toml")
    with pytest.raises(SpecError) as info:
        check_own_live_path(other, tmp_path)
    assert str(info.value) == (
        f"{other}:2: prefix: stack 'other' would be live at /data0/sw/py3 on a host, as stack 'py3' "
        f"({tmp_path / 'py3.toml'}) is, and activating one would replace the other; give it a prefix of its own, "
        'e.g. prefix = "/data0/sw/other" (variants of one stack share theirs)')
    check_own_live_path(write(tmp_path, MINIMAL, "demo.toml"), tmp_path)  # /data0/sw/demo is its own


def test_a_second_default_variant_is_named_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[variants.a]\ndefault = true\n\n[variants.b]\ndefault = true\n")
    assert error_of(path) == (f"{path}:11: variants.b.default: only one variant may set default = true, "
                              "and a does; remove one of them")


def test_a_missing_key_of_a_table_names_the_table_to_add_it_to(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, MINIMAL + '\n[[kernels]]\nname = "demo"\n'))
    assert message.endswith("/demo.toml:7: kernels[0].display_name: required key is missing; add it to kernels[0]")

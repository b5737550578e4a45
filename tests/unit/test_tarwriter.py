"""``tarwriter``: the deterministic tar the image layers and the channel's repack write."""

from __future__ import annotations

import io
import tarfile

from swstack.tarwriter import TarStream, copy_header, dir_header, header


def _write(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with TarStream(buf) as tar:
        for info, data in members:
            tar.add(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [
        (dir_header("a", 7), None),
        (header("a/x", size=3, mtime=7, mode=0o755, uid=1000, gid=100), b"abc"),
        (dir_header("a", 7), None),  # added again: written once
        (header("a/l", kind=tarfile.SYMTYPE, mode=0o777, mtime=7, size=99, linkname="x"), None),
    ]


def test_same_members_same_bytes_and_nothing_of_the_machine() -> None:
    one, two = _write(_members()), _write(_members())
    assert one == two and len(one) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(one)) as tar:
        got = [(m.name, m.type, m.mode, m.mtime, m.uid, m.gid, m.uname, m.gname, m.size) for m in tar]
    assert got == [
        ("a", tarfile.DIRTYPE, 0o755, 7, 0, 0, "", "", 0),
        ("a/x", tarfile.REGTYPE, 0o755, 7, 1000, 100, "", "", 3),
        ("a/l", tarfile.SYMTYPE, 0o777, 7, 0, 0, "", "", 0),  # a link has no size, whatever was given
    ]


def test_a_copied_header_keeps_the_numbers_and_drops_the_names() -> None:
    member = tarfile.TarInfo("lib/x.so")
    member.size, member.mode, member.mtime, member.uid, member.gid = 5, 0o644, 12.7, 7, 8
    member.uname, member.gname = "builder", "staff"
    copied = copy_header(member, "data0/sw/py3/lib/x.so")
    got = (copied.name, copied.size, copied.mode, copied.mtime, copied.uid, copied.gid)
    assert got == ("data0/sw/py3/lib/x.so", 5, 0o644, 12, 7, 8)
    assert copied.uname == copied.gname == ""


def test_long_and_non_ascii_names_use_pax_records() -> None:
    name = "d/" + "n" * 150 + "-é"
    data = _write([(header(name, size=1, mtime=1), b"x")])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.getnames() == [name]

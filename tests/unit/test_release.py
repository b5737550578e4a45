"""release.py: a push or a publish reports what it sent in one line, not one line per layer of code."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from swstack import image, publish, release


def _lines(caplog: pytest.LogCaptureFixture, word: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(word)]


def test_a_push_says_what_it_pushed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    result = SimpleNamespace(repository="r.example.org/swstack/demo", digest="sha256:" + "a" * 64,
                             bytes_uploaded=10, skipped=("x",))

    def push_image(layout: Path) -> Any:
        logging.getLogger("swstack").info(f"pushed {result.repository}@{result.digest} as latest: sent 10 B")
        return result

    monkeypatch.setattr(image, "push_image", push_image)
    monkeypatch.setattr(release, "attach_and_sign", lambda *args: None)
    with caplog.at_level("INFO", logger="swstack"):
        release.push_attested(SimpleNamespace(), tmp_path)
    assert len(_lines(caplog, "pushed ")) == 1, caplog.text


def test_a_publish_says_what_it_published_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from swstack import sign

    sent = SimpleNamespace(ref="r.example.org/demo:1", digest="sha256:" + "b" * 64, uploaded=("u",), skipped=())
    monkeypatch.setattr(publish, "plan_publish", lambda artifact, ref: SimpleNamespace(
        ref=SimpleNamespace(digest=None, registry="r.example.org", __str__=lambda self: ref),
        blobs=[SimpleNamespace(descriptor=SimpleNamespace(annotations={publish.TITLE: "demo-1.tar.zst"}))]))
    monkeypatch.setattr(publish, "push", lambda plan, client: sent)
    monkeypatch.setattr(sign, "site_keys", lambda keys: None)
    monkeypatch.setattr(release, "_attach_and_sign_with", lambda *args: None)
    site = SimpleNamespace(registry="r.example.org", signing_keys=None)
    with caplog.at_level("INFO", logger="swstack"):
        release.publish_attested(site, tmp_path / "1", "demo")  # type: ignore[arg-type]
    assert _lines(caplog, "published ") == [f"published {sent.ref}@{sent.digest} (1 blob(s) sent, 0 already there)"]

"""make_private (datadir.py) where it may not change everything: a mounted volume's root
owned by another user (Kubernetes' fsGroup) is left as it is, with a warning, and the
server still starts; what it may change it tightens. (The suite runs as root, who may
change anything, so the refusal is the operating system's answer, simulated.)"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from consentauthz import datadir
from consentauthz.datadir import make_private


def test_what_this_user_may_not_change_is_left_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    volume = tmp_path / "volume"
    volume.mkdir(mode=0o775)
    os.chmod(volume, 0o2775)  # as fsGroup leaves a volume's root
    (volume / "ledger.db").write_text("x")
    os.chmod(volume / "ledger.db", 0o644)
    real_chmod = os.chmod

    def chmod(path: os.PathLike[str] | str, mode: int) -> None:
        if Path(path) == volume:
            raise PermissionError(1, "Operation not permitted")
        real_chmod(path, mode)

    monkeypatch.setattr(datadir.os, "chmod", chmod)
    with caplog.at_level(logging.WARNING, logger="consentauthz"):
        assert make_private(volume) == 1  # the file; not the root
    assert stat.S_IMODE((volume / "ledger.db").stat().st_mode) == 0o600
    assert stat.S_IMODE(volume.stat().st_mode) == 0o2775
    assert any("not this user's to change" in r.getMessage() for r in caplog.records)

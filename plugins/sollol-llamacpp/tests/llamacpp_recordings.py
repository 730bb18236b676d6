"""Read the byte-exact recordings of a real llama-server (`reference/recorded/llamacpp/`).

They live outside the repository, in `../shared/reference` next to the repo root (CI provides
it); `SOLLOL_REFERENCE` points elsewhere. Tests that need them skip, saying why, when absent.
"""

from __future__ import annotations

import os
import pathlib

import pytest

from sollol.http import HttpResponse

ROOT = pathlib.Path(__file__).resolve().parents[3]
REFERENCE = pathlib.Path(os.environ.get("SOLLOL_REFERENCE", ROOT.parent / "shared" / "reference"))
RECORDED = REFERENCE / "recorded" / "llamacpp"


def names() -> list[str]:
    """Every recording's name (`chat`, `health`...), or none when the directory is absent."""
    if not RECORDED.is_dir():
        return []
    return sorted(p.stem for p in RECORDED.glob("*.headers"))


def need_recordings() -> None:
    """Skip the calling test when the recordings are not there."""
    if not RECORDED.is_dir():
        pytest.skip(f"the llama.cpp recordings are not at {RECORDED} (set SOLLOL_REFERENCE)")


def recorded(name: str) -> HttpResponse:
    """The recording `name` as the transport would hand it to a codec."""
    need_recordings()
    head = (RECORDED / f"{name}.headers").read_bytes().decode("latin-1")
    lines = [line for line in head.split("\r\n") if line]
    status = int(lines[0].split(" ")[1])
    headers = tuple((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]))
    return HttpResponse(status=status, headers=headers, body=(RECORDED / f"{name}.body").read_bytes())

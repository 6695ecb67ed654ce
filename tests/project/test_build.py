"""The build explains what is missing in one sentence; the backend switch works."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import ROOT


def _preflight(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_extra}
    code = (
        "import sys; sys.path.insert(0, 'dtp_core'); "
        "import os; os.environ['DTP_SKIP_PREFLIGHT'] = '1'; "
        "import build_ffi; build_ffi.preflight()"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_missing_compiler_is_one_clear_sentence() -> None:
    result = _preflight({"CC": "/nonexistent/dtp-cc"})
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "needs a C compiler" in message and "apt-get install gcc" in message


def test_missing_openssl_headers_is_one_clear_sentence(tmp_path: Path) -> None:
    fake_cc = tmp_path / "cc"
    fake_cc.write_text("#!/bin/sh\necho 'fatal error: openssl/evp.h: No such file' >&2\nexit 1\n")
    fake_cc.chmod(fake_cc.stat().st_mode | stat.S_IEXEC)
    result = _preflight({"CC": str(fake_cc)})
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert "OpenSSL's development headers" in message and "libssl-dev" in message


@pytest.mark.parametrize(("flag", "werror"), [("1", True), ("", False), ("0", False)])
def test_warnings_fail_the_build_only_where_asked(flag: str, werror: bool) -> None:
    """-Werror where DTP_WERROR=1 (scripts/test.sh: the project's own builds), never in a
    user's install, where a newer compiler's new warning would stop a correct build."""
    code = (
        "import sys; sys.path.insert(0, 'dtp_core'); import build_ffi\n"
        "print(build_ffi.make_ffi()._assigned_source[3]['extra_compile_args'])"
    )
    env = {**os.environ, "DTP_SKIP_PREFLIGHT": "1", "DTP_WERROR": flag}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    args = done.stdout
    assert "'-Wall'" in args and "'-Wextra'" in args
    assert ("'-Werror'" in args) is werror


def test_preflight_passes_here() -> None:
    result = _preflight({})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("flag", "expected"), [("1", "python"), ("", "c")])
def test_backend_switch(flag: str, expected: str) -> None:
    code = (
        "from dtp.native import core as _core; from dtp.native import reference as _reference\n"
        "print(_core.BACKEND)\n"
        "print(_core.Aead is _reference.Aead, _core.HamGraph is _reference.HamGraph,"
        " _core.decode_frames is _reference.decode_frames)\n"
    )
    env = {**os.environ, "DTP_PUREPYTHON": flag}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == expected
    assert out[1:] == (["True"] * 3 if expected == "python" else ["False"] * 3)


def test_bad_core_lib_path_is_explained() -> None:
    env = {**os.environ, "DTP_CORE_LIB": "/nonexistent/_dtp_core.so"}
    result = subprocess.run(
        [sys.executable, "-c", "import dtp.native.core"], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "DTP_CORE_LIB='/nonexistent/_dtp_core.so' does not exist" in result.stderr


def test_the_built_package_carries_the_move_package(tmp_path: Path) -> None:
    """setup.py's build_py copies move/dtp into dtp/move/dtp (what an installed
    `dtp deploy` publishes): Move.toml and every source and test module, unchanged."""
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    source = ROOT / "move" / "dtp"
    shipped = tmp_path / "dtp" / "move" / "dtp"
    expected = sorted(
        p.relative_to(source)
        for p in [
            source / "Move.toml",
            *source.glob("sources/*.move"),
            *source.glob("tests/*.move"),
        ]
    )
    assert len(expected) > 10
    assert sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file()) == expected
    for rel in expected:
        assert (shipped / rel).read_bytes() == (source / rel).read_bytes()

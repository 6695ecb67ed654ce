"""The wheel scripts/wheel.sh builds, as a user on another machine gets it.

Built once (the sdist, the wheel from it, ``auditwheel repair``), then installed with
pip into a fresh virtualenv for each CPython the package supports (its classifiers),
with no compiler on ``PATH`` and, where this runs as root, OpenSSL's headers hidden;
then, with the system's ``libcrypto.so.3`` and ``libssl.so.3`` hidden too (a private
mount namespace binds empty files over them), the demo runs from the virtualenv. A
plain install must pull in no Sui package, and the features of the extras must name
them.

Marked ``wheel``: scripts/test.sh runs this file once, in its checks job (building the
C core and installing a few virtualenvs takes a minute or two), and leaves it out of
the suite's parts.
"""

from __future__ import annotations

import email.parser
import glob
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.base_imports import extra_of
from tests.support.demo_output import check_demo_output
from tests.support.paths import ROOT
from tests.testing.doc_examples import (
    BROKEN,
    FIXTURES,
    PASSING,
    SCRIPT,
    billing_failed,
    falsified,
    shown_failure,
    write_examples,
)

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(900)]

#: what `pip install <the wheel>` installs: dtp and the base dependencies (with
#: pycparser, cffi's own); pip's and setuptools' are the venv's
BASE_DISTRIBUTIONS = {"dtp", "cffi", "pycparser", "cryptography", "noiseprotocol", "msgpack"}
#: the Sui stack that a plain install must not bring (pysui's dependencies among them)
SUI_DISTRIBUTIONS = {"pysui", "pysui-fastcrypto", "pyyaml", "betterproto2", "grpclib", "gql"}


def _supported_pythons() -> list[str]:
    """``3.11``, ``3.12``...: the CPython versions pyproject.toml's classifiers claim."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    prefix = "Programming Language :: Python :: "
    versions = [
        c[len(prefix) :]
        for c in pyproject["project"]["classifiers"]
        if re.fullmatch(re.escape(prefix) + r"3\.\d+", c)
    ]
    return sorted(versions, key=lambda v: int(v.split(".")[1]))


PYTHONS = _supported_pythons()


def _interpreter(version: str) -> str | None:
    """A CPython ``version`` here that can make a virtualenv with pip: the one running
    the suite, one on PATH, or one of pyenv's."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return getattr(sys, "_base_executable", sys.executable)
    found = shutil.which(f"python{version}")
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    pattern = str(pyenv / "versions" / f"{version}.*" / "bin" / f"python{version}")
    for candidate in [found, *sorted(glob.glob(pattern), reverse=True)]:
        if candidate is None:
            continue
        probe = subprocess.run(
            [candidate, "-c", "import ensurepip, venv, sys; print(sys.implementation.name)"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == "cpython":
            return candidate
    return None


#: the programs that hide files (absolute: the commands run with a PATH of a venv's bin/)
UNSHARE, MOUNT, SH = shutil.which("unshare"), shutil.which("mount"), shutil.which("sh")


def _can_hide_files() -> bool:
    """Whether files can be hidden from one process tree: root, and a private mount
    namespace (unshare) that works here."""
    if os.geteuid() != 0 or UNSHARE is None or MOUNT is None or SH is None:
        return False
    probe = subprocess.run(
        [UNSHARE, "--mount", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


CAN_HIDE = _can_hide_files()


def _system_openssl() -> list[str]:
    """The system's OpenSSL libraries, as the dynamic linker would find them."""
    listing = subprocess.run(
        ["/sbin/ldconfig", "-p"], capture_output=True, text=True, check=True
    ).stdout
    found = set()
    for line in listing.splitlines():
        name, _, path = line.strip().partition(" => ")
        if re.match(r"lib(crypto|ssl)\.so\.3 ", name):
            found.add(os.path.realpath(path.strip()))
    return sorted(found)


def _hidden(argv: list[str], paths: list[str], tmp: Path) -> list[str]:
    """``argv`` run with ``paths`` (files and folders) hidden: empty ones bound over
    them in a mount namespace of its own (nothing outside it sees a change)."""
    empty_file, empty_dir = tmp / "empty-file", tmp / "empty-dir"
    empty_file.touch()
    empty_dir.mkdir(exist_ok=True)
    mounts = "".join(
        f"{MOUNT} --bind {shlex.quote(str(empty_dir if os.path.isdir(p) else empty_file))} "
        f"{shlex.quote(p)}\n"
        for p in paths
        if os.path.exists(p)
    )
    script = f'set -e\n{mounts}exec "$@"'
    assert UNSHARE and SH
    return [UNSHARE, "--mount", "--propagation", "private", "--", SH, "-c", script, "sh", *argv]


# -- the build ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/wheel.sh's output folder: one manylinux wheel and one sdist."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "wheel.sh"), str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "bundled dtp.libs/libcrypto-" in done.stdout and "OpenSSL 3." in done.stdout
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (found,) = dist.glob("dtp-*.whl")
    return found


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


def test_the_wheel_is_manylinux_for_every_supported_python(wheel: Path) -> None:
    """One abi3 wheel for CPython 3.11 on, tagged with the oldest glibc its symbols
    (libcrypto's among them) allow."""
    import dtp

    machine = platform.machine()
    match = re.fullmatch(
        rf"dtp-{re.escape(dtp.__version__)}-cp311-abi3-manylinux_2_(\d+)_{machine}\.whl",
        wheel.name,
    )
    assert match, wheel.name
    glibc = tuple(int(p) for p in platform.libc_ver()[1].split("."))
    assert (2, int(match.group(1))) <= glibc


def test_the_wheel_carries_its_own_libcrypto(wheel: Path, tmp_path: Path) -> None:
    """The core needs libcrypto-<hash>.so.3 from dtp.libs/ (its RPATH), never the
    system's libcrypto.so.3; the copy's licence notice is in the metadata."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]  # (no folders)
        libs = [n for n in names if n.startswith("dtp.libs/")]
        assert len(libs) == 1 and re.fullmatch(r"dtp\.libs/libcrypto-[0-9a-f]{8}\.so\.3", libs[0])
        core = Path(archive.extract("dtp/_dtp_core.abi3.so", tmp_path))
        licences = {n.split(".dist-info/licenses/", 1)[1] for n in names if "/licenses/" in n}
    assert licences == {"LICENSE", "licenses/OpenSSL.txt"}
    dynamic = subprocess.run(
        ["readelf", "--dynamic", "--wide", str(core)], capture_output=True, text=True, check=True
    ).stdout
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic)
    runpath = re.findall(
        r"\((?:RUNPATH|RPATH)\)\s+Library (?:runpath|rpath): \[([^\]]+)\]", dynamic
    )
    assert Path(libs[0]).name in needed
    assert not [n for n in needed if n.startswith(("libcrypto.so", "libssl.so"))], needed
    assert runpath == ["$ORIGIN/../dtp.libs"]


def test_the_wheels_metadata(wheel: Path) -> None:
    """The base needs no Sui package; each extra holds its feature's packages; the
    description is the short docs/pypi.md, not the README."""
    meta = _metadata(wheel)
    requires = meta.get_all("Requires-Dist") or []
    base = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requires if ";" not in r}
    assert base == BASE_DISTRIBUTIONS - {"dtp", "pycparser"}
    extras: dict[str, set[str]] = {}
    for requirement in requires:
        found = re.search(r'extra == "([a-z]+)"', requirement)
        if found:
            name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()
            extras.setdefault(found.group(1), set()).add(name)
    assert {"pysui", "pysui-fastcrypto", "pyyaml"} <= extras["sui"]
    assert extras["lan"] == {"zeroconf", "ifaddr"}
    assert extras["gun"] == extras["ws"] == {"websockets"}
    assert extras["all"] == {"dtp"}
    description = meta.get_payload()
    assert isinstance(description, str)
    assert description.strip() == (ROOT / "docs" / "pypi.md").read_text(encoding="utf-8").strip()
    assert len(description.splitlines()) < 40
    assert meta["License-Expression"] == "Apache-2.0"


def test_the_sdist_builds_the_wheel_and_holds_no_binary(dist: Path) -> None:
    (sdist,) = dist.glob("dtp-*.tar.gz")
    import tarfile

    with tarfile.open(sdist) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    assert {"docs/pypi.md", "licenses/OpenSSL.txt", "dtp_core/build_ffi.py", "setup.py"} <= names
    assert not [n for n in names if n.endswith((".so", ".o", ".so.3"))]


# -- installed in fresh virtualenvs ----------------------------------------------------


@pytest.fixture(scope="module", params=PYTHONS)
def venv(
    request: pytest.FixtureRequest, wheel: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A fresh virtualenv of that CPython with the wheel installed by pip, as a user
    does: ``PATH`` holds the virtualenv alone (no compiler), OpenSSL's headers hidden."""
    version = request.param
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no CPython {version} with venv and ensurepip on this machine")
    where = tmp_path_factory.mktemp(f"venv-{version}")
    env_dir = where / "venv"
    subprocess.run([python, "-m", "venv", str(env_dir)], check=True, timeout=120)
    env = {
        **{k: v for k, v in os.environ.items() if k.startswith("PIP_") or k in ("HOME", "LANG")},
        "PATH": str(env_dir / "bin"),
    }
    install = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)]
    if CAN_HIDE:
        install = _hidden(install, ["/usr/include/openssl"], where)
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    yield env_dir


def _in_venv(
    venv: Path, tmp_path: Path, *argv: str, hide_openssl: bool = False, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``argv`` run from the virtualenv's bin/ as a user runs it there, in a folder of
    its own; with the system's OpenSSL hidden if asked."""
    env = {
        "PATH": str(venv / "bin"),
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "LANG": "C.UTF-8",
    }
    command = [str(venv / "bin" / argv[0]), *argv[1:]]
    if hide_openssl:
        command = _hidden(command, _system_openssl(), tmp_path)
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_a_plain_install_pulls_in_no_sui_package(venv: Path, tmp_path: Path) -> None:
    done = _in_venv(venv, tmp_path, "python", "-m", "pip", "list", "--format", "json")
    assert done.returncode == 0, done.stderr
    installed = {d["name"].lower() for d in json.loads(done.stdout)}
    installed -= {"pip", "setuptools", "wheel"}
    assert not installed & SUI_DISTRIBUTIONS
    # a new base dependency is a decision: add it here and to README.md's "Install"
    assert installed == BASE_DISTRIBUTIONS


def test_the_installed_core_loads_the_wheels_libcrypto(venv: Path, tmp_path: Path) -> None:
    """``ldd`` of the installed core resolves libcrypto into the wheel's dtp.libs/."""
    (core,) = venv.glob("lib/python3.*/site-packages/dtp/_dtp_core.abi3.so")
    done = subprocess.run(["ldd", str(core)], capture_output=True, text=True, check=True)
    crypto = [line.split() for line in done.stdout.splitlines() if "crypto" in line]
    assert len(crypto) == 1, done.stdout
    name, arrow, path = crypto[0][:3]
    assert re.fullmatch(r"libcrypto-[0-9a-f]{8}\.so\.3", name) and arrow == "=>"
    assert Path(path).resolve() == (core.parent.parent / "dtp.libs" / name).resolve()


def test_every_base_module_imports_and_the_extras_are_named(venv: Path, tmp_path: Path) -> None:
    """The wheel's own modules (not the checkout's): the base ones import, those of
    an extra raise MissingExtra naming it, as does the CLI in one line."""
    script = ROOT / "tests" / "support" / "base_imports.py"
    done = _in_venv(venv, tmp_path, "python", str(script))
    assert done.returncode == 0, done.stderr
    results: dict[str, str] = json.loads(done.stdout)
    assert len(results) > 300
    wrong = {
        name: got
        for name, got in results.items()
        if got != (f"extra:{extra_of(name)}" if extra_of(name) else "ok")
    }
    assert not wrong, wrong
    where = _in_venv(venv, tmp_path, "python", "-c", "import dtp; print(dtp.__file__)")
    assert where.stdout.startswith(str(venv)), where.stdout
    refused = _in_venv(venv, tmp_path, "dtp", "balance", "--ledger", "testnet", "0x1")
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith("pip install 'dtp[sui]'"), refused.stderr


def test_the_demo_runs_without_a_compiler_or_the_systems_openssl(
    venv: Path, tmp_path: Path
) -> None:
    """`dtp demo` from the virtualenv with the system's libcrypto and libssl hidden: the
    core can only have loaded the wheel's copy (checked first: the system's is gone)."""
    if not CAN_HIDE:
        pytest.skip("hiding the system's OpenSSL needs root and a private mount namespace")
    probe = _in_venv(
        venv,
        tmp_path,
        "python",
        "-c",
        "import ctypes, shutil\n"
        "assert shutil.which('cc') is None and shutil.which('gcc') is None\n"
        "try:\n    ctypes.CDLL('libcrypto.so.3')\nexcept OSError:\n    pass\n"
        "else:\n    raise SystemExit('the system libcrypto is still there')\n"
        "import dtp.native.core as core\n"
        "assert core.BACKEND == 'c', core.BACKEND\n"
        "maps = [l.split()[-1] for l in open('/proc/self/maps') if 'libcrypto' in l]\n"
        "assert maps and all('/dtp.libs/libcrypto-' in m for m in maps), maps\n",
        hide_openssl=True,
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    done = _in_venv(venv, tmp_path, "dtp", "demo", "--quick", hide_openssl=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_demo_output(done.stdout)


# -- what README.md says ---------------------------------------------------------------


def _install_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Install\n") :]
    return section[: section.index("\n## ", 1)]


def test_the_readmes_install_section_is_what_the_tests_show(wheel: Path) -> None:
    """The wheel's name, glibc floor and Pythons, the base dependencies and the extras,
    as README.md's "Install" gives them."""
    section = _install_section()
    flat = " ".join(section.split())
    assert f"# {Path('dist') / wheel.name}" in section
    glibc = re.search(r"manylinux_2_(\d+)_", wheel.name)
    assert glibc is not None
    assert f"glibc 2.{glibc.group(1)} or newer" in flat
    assert f"`manylinux_2_{glibc.group(1)}`" in flat
    *first, last = PYTHONS
    assert f"CPython {', '.join(first)} and {last};" in flat
    named = re.search(r"dependencies: ([a-z]+), ([a-z]+), ([a-z]+) and ([a-z]+)\.", flat)
    assert named is not None and set(named.groups()) == BASE_DISTRIBUTIONS - {"dtp", "pycparser"}
    meta = _metadata(wheel)
    extras = set(meta.get_all("Provides-Extra") or []) - {"test", "dev", "bench"}
    assert set(re.findall(r"\| `pip install 'dtp\[([a-z]+)\]'` \|", section)) == extras


def test_the_readmes_missing_extra_line_is_what_dtp_prints(venv: Path, tmp_path: Path) -> None:
    """The example line is the one `dtp` prints, word for word."""
    flat = " ".join(_install_section().split())
    shown = re.search(r"e\.g\. `(dtp: --ledger: Sui testnet [^`]+)`", flat)
    assert shown is not None
    done = _in_venv(venv, tmp_path, "dtp", "balance", "--ledger", "testnet", "0x1")
    assert done.returncode == 1 and done.stderr.strip() == shown.group(1), done.stderr


# -- testing applications with the wheel (docs/testing.md) ------------------------------


@pytest.fixture(scope="module")
def testing_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv of the CPython running the suite with the wheel and its
    ``testing`` and ``sui`` extras (pytest, hypothesis; pysui for the node stand-in), as
    docs/testing.md has a user install it; the plugin comes in through the wheel's
    pytest11 entry point alone."""
    where = tmp_path_factory.mktemp("venv-testing")
    env_dir = where / "venv"
    python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([python, "-m", "venv", str(env_dir)], check=True, timeout=120)
    env = {
        **{k: v for k, v in os.environ.items() if k.startswith("PIP_") or k in ("HOME", "LANG")},
        "PATH": str(env_dir / "bin"),
    }
    install = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q"]
    done = subprocess.run(
        [*install, f"{wheel}[sui,testing]"], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return env_dir


def _pytest_in(venv: Path, project: Path, *args: str) -> tuple[int, str]:
    """``pytest ARGS`` from the virtualenv in ``project`` (no example database left)."""
    shutil.rmtree(project / ".hypothesis", ignore_errors=True)
    done = _in_venv(venv, project, "pytest", "-p", "no:cacheprovider", *args, timeout=1200)
    return done.returncode, done.stdout + done.stderr


def test_pytest_lists_the_dtp_fixtures_in_a_fresh_project(
    testing_venv: Path, tmp_path: Path
) -> None:
    (tmp_path / "test_app.py").write_text(
        "def test_uses_the_ledger(dtp_ledger):\n    assert dtp_ledger.clock_frozen()\n"
    )
    code, listed = _pytest_in(testing_venv, tmp_path, "--fixtures")
    assert code == 0, listed
    assert "fixtures defined from dtp.testing.plugin" in listed, listed
    for name in FIXTURES:
        assert re.search(rf"^{name}\b", listed, re.M), name
    code, ran = _pytest_in(testing_venv, tmp_path, "--dtp-seed", "4242")
    assert code == 0 and "1 passed" in ran, ran
    assert "dtp: seed 4242 (replay with --dtp-seed 4242)" in ran
    # the plugin is the wheel's (not this checkout's)
    where = _in_venv(
        testing_venv, tmp_path, "python", "-c", "import dtp.testing.plugin as p; print(p.__file__)"
    )
    assert where.stdout.startswith(str(testing_venv)), where.stdout + where.stderr


@pytest.fixture(scope="module")
def examples_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project holding docs/testing.md's examples, each in the file it names."""
    where = tmp_path_factory.mktemp("examples")
    write_examples(where)
    return where


def test_the_docs_testing_examples_pass_from_the_wheel(
    testing_venv: Path, examples_project: Path
) -> None:
    code, output = _pytest_in(testing_venv, examples_project, "-q", *PASSING)
    assert code == 0, output[-5000:]
    assert re.search(r"\b\d+ passed\b", output) and "failed" not in output, output[-3000:]
    done = _in_venv(testing_venv, examples_project, "python", SCRIPT)
    assert done.returncode == 0 and done.stdout.splitlines() == ["b'hello'"], done.stderr


def test_the_service_that_bills_twice_is_caught_and_replays_from_the_wheel(
    testing_venv: Path, examples_project: Path
) -> None:
    """Within hypothesis' default budget (no profile in the project); the same failing
    example again from the same ``--dtp-seed``, the one docs/testing.md shows."""
    code, first = _pytest_in(testing_venv, examples_project, "-q", BROKEN, "--dtp-seed", "1")
    assert code == 1 and billing_failed(first), first[-3000:]
    assert "run seed 1: replay with --dtp-seed 1" in first
    code, again = _pytest_in(testing_venv, examples_project, "-q", BROKEN, "--dtp-seed", "1")
    assert code == 1, again[-3000:]
    assert falsified(again) == falsified(first) == shown_failure(), (first[-3000:], again[-3000:])

"""The wheel and the sdist scripts/wheel.sh builds, as a user on another machine gets them.

Built once (the sdist, the wheel from it, ``auditwheel repair``, ``twine check`` on
both), then installed by name, ``pip install dtp-sui``, from the folder they were built
into, as from a package index: ``--no-index --find-links`` that folder and a wheelhouse
of the dependencies fetched for each CPython the package supports (its classifiers),
into fresh virtualenvs of each. The wheel goes in with no compiler on ``PATH`` and,
where this runs as root, OpenSSL's headers hidden; then, with the system's
``libcrypto.so.3`` and ``libssl.so.3`` hidden too (a private mount namespace binds empty
files over them), the demo runs from the virtualenv. The sdist is built there by pip
with this machine's compiler. A plain install must pull in no Sui package, the features
of the extras must name them, and every extra must resolve against the folder and the
package index (pip's resolver, a dry run: the ``testing`` virtualenv below installs the
heaviest, ``sui``, for real).

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
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp._distribution import NAME
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

#: what the wheel and the sdist are named after: the distribution's name as file names
#: hold it (dtp_sui-0.1.0-....whl, dtp_sui-0.1.0.tar.gz)
FILE_NAME = re.sub(r"[-_.]+", "_", NAME).lower()
#: what `pip install dtp-sui` installs: dtp-sui and the base dependencies (with
#: pycparser, cffi's own); pip's and setuptools' are the venv's
BASE_DISTRIBUTIONS = {NAME, "cffi", "pycparser", "cryptography", "noiseprotocol", "msgpack"}
#: the extras that are the project's own tools, not features (README.md lists the others)
TOOL_EXTRAS = {"test", "dev", "bench"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: the Sui stack that a plain install must not bring (pysui's dependencies among them)
SUI_DISTRIBUTIONS = {"pysui", "pysui-fastcrypto", "pyyaml", "betterproto2", "grpclib", "gql"}


def _supported_pythons() -> list[str]:
    """``3.11``, ``3.12``...: the CPython versions pyproject.toml's classifiers claim."""
    prefix = "Programming Language :: Python :: "
    versions = [
        c[len(prefix) :]
        for c in PYPROJECT["project"]["classifiers"]
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
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """scripts/wheel.sh's output folder (one manylinux wheel and one sdist, nothing else)
    and what it printed."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "wheel.sh"), str(out)],
        # (twine's report plain and on one line a file)
        env={**os.environ, "PYTHON": sys.executable, "NO_COLOR": "1", "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "bundled dtp_sui.libs/libcrypto-" in done.stdout and "OpenSSL 3." in done.stdout
    return out, done.stdout


@pytest.fixture(scope="module")
def dist(built: tuple[Path, str]) -> Path:
    """The folder pip installs from by name (--find-links): a local package index."""
    return built[0]


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (found,) = dist.glob(f"{FILE_NAME}-*.whl")
    return found


@pytest.fixture(scope="module")
def sdist(dist: Path) -> Path:
    (found,) = dist.glob(f"{FILE_NAME}-*.tar.gz")
    return found


def test_the_folder_holds_the_two_files_and_twine_passes_both(
    built: tuple[Path, str], wheel: Path, sdist: Path
) -> None:
    """`twine check --strict` (scripts/wheel.sh's last step; a warning fails it too):
    the metadata and the description as the package index reads them, for each file."""
    out, printed = built
    assert sorted(out.iterdir()) == sorted([wheel, sdist])
    flat = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", printed).split())
    checked = re.findall(r"Checking (\S+?):\s*(\w+)", flat)
    assert sorted(checked) == sorted([(str(wheel), "PASSED"), (str(sdist), "PASSED")]), flat


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
        rf"{FILE_NAME}-{re.escape(dtp.__version__)}-cp311-abi3-manylinux_2_(\d+)_{machine}\.whl",
        wheel.name,
    )
    assert match, wheel.name
    glibc = tuple(int(p) for p in platform.libc_ver()[1].split("."))
    assert (2, int(match.group(1))) <= glibc


def test_the_wheel_carries_its_own_libcrypto(wheel: Path, tmp_path: Path) -> None:
    """The core needs libcrypto-<hash>.so.3 from dtp_sui.libs/ (its RPATH), never the
    system's libcrypto.so.3; the copy's licence notice is in the metadata."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]  # (no folders)
        libs = [n for n in names if n.startswith("dtp_sui.libs/")]
        assert len(libs) == 1 and re.fullmatch(
            r"dtp_sui\.libs/libcrypto-[0-9a-f]{8}\.so\.3", libs[0]
        )
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
    assert runpath == ["$ORIGIN/../dtp_sui.libs"]


def test_the_wheels_metadata(wheel: Path) -> None:
    """Named dtp-sui; the base needs no Sui package; each extra holds its feature's
    packages; the description is the short docs/pypi.md, not the README."""
    meta = _metadata(wheel)
    assert meta["Name"] == NAME == PYPROJECT["project"]["name"]
    requires = meta.get_all("Requires-Dist") or []
    base = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requires if ";" not in r}
    assert base == BASE_DISTRIBUTIONS - {NAME, "pycparser"}
    extras: dict[str, set[str]] = {}
    for requirement in requires:
        found = re.search(r'extra == "([a-z]+)"', requirement)
        if found:
            name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()
            extras.setdefault(found.group(1), set()).add(name)
    assert {"pysui", "pysui-fastcrypto", "pyyaml"} <= extras["sui"]
    assert extras["lan"] == {"zeroconf", "ifaddr"}
    assert extras["gun"] == extras["ws"] == {"websockets"}
    # (the distribution itself with the features' extras: by its own name, or pip would
    # fetch the unrelated project named dtp)
    assert extras["all"] == {NAME}
    description = meta.get_payload()
    assert isinstance(description, str)
    assert description.strip() == (ROOT / "docs" / "pypi.md").read_text(encoding="utf-8").strip()
    assert len(description.splitlines()) < 40
    assert meta["License-Expression"] == "Apache-2.0"


def test_the_sdist_builds_the_wheel_and_holds_no_binary(sdist: Path) -> None:
    import dtp

    with tarfile.open(sdist) as archive:
        tops = {n.split("/", 1)[0] for n in archive.getnames()}
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
        pkg_info = archive.extractfile(f"{FILE_NAME}-{dtp.__version__}/PKG-INFO")
        assert pkg_info is not None
        meta = email.parser.Parser().parsestr(pkg_info.read().decode())
    assert sdist.name == f"{FILE_NAME}-{dtp.__version__}.tar.gz"
    assert tops == {f"{FILE_NAME}-{dtp.__version__}"}
    assert meta["Name"] == NAME
    assert {"docs/pypi.md", "licenses/OpenSSL.txt", "dtp_core/build_ffi.py", "setup.py"} <= names
    assert not [n for n in names if n.endswith((".so", ".o", ".so.3"))]


# -- installed in fresh virtualenvs ----------------------------------------------------


@pytest.fixture(scope="module", params=PYTHONS)
def python(request: pytest.FixtureRequest) -> str:
    """A CPython the package supports, one per version (the tests below run once each)."""
    version: str = request.param
    found = _interpreter(version)
    if found is None:
        pytest.skip(f"no CPython {version} with venv and ensurepip on this machine")
    return found


def _new_venv(python: str, env_dir: Path) -> dict[str, str]:
    """A fresh virtualenv of ``python`` at ``env_dir``; the environment pip runs in there
    (``PATH`` the virtualenv's bin/ alone: no compiler; the machine's pip settings)."""
    subprocess.run([python, "-m", "venv", str(env_dir)], check=True, timeout=120)
    return {
        **{k: v for k, v in os.environ.items() if k.startswith("PIP_") or k in ("HOME", "LANG")},
        "PATH": str(env_dir / "bin"),
    }


def _pip(env_dir: Path, *args: str) -> list[str]:
    return [str(env_dir / "bin" / "python"), "-m", "pip", *args]


@pytest.fixture(scope="module")
def wheelhouse(python: str, wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """For that CPython, as wheels fetched from the package index: the base
    dependencies the wheel's metadata names and what building the sdist needs
    (pyproject.toml's build-system). With the built files' folder, all that installing
    dtp-sui by name needs, so pip reads no index (and cannot take a dtp-sui from one)."""
    where = tmp_path_factory.mktemp("wheelhouse")
    env = _new_venv(python, where / "venv")
    requires = [r for r in _metadata(wheel).get_all("Requires-Dist") or [] if "extra ==" not in r]
    wanted = [*requires, *PYPROJECT["build-system"]["requires"]]
    fetch = _pip(where / "venv", "download", "-q", "--only-binary", ":all:", "--dest")
    done = subprocess.run(
        [*fetch, str(where / "wheels"), *wanted],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return where / "wheels"


def _by_name(dist: Path, wheelhouse: Path) -> list[str]:
    """pip's options that install dtp-sui by name from ``dist`` and ``wheelhouse`` alone."""
    return ["--no-index", "--find-links", str(dist), "--find-links", str(wheelhouse)]


@pytest.fixture(scope="module")
def venv(
    python: str, dist: Path, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A fresh virtualenv of that CPython where ``pip install dtp-sui`` took the wheel
    from the folder, as a user does from the index: ``PATH`` holds the virtualenv alone
    (no compiler), OpenSSL's headers hidden, and the sdist beside it refused (a wheel
    whose tags this CPython did not take would be built from it instead)."""
    where = tmp_path_factory.mktemp("venv")
    env_dir = where / "venv"
    env = _new_venv(python, env_dir)
    install = _pip(env_dir, "install", "-q", *_by_name(dist, wheelhouse), "--only-binary", NAME)
    install.append(NAME)
    if CAN_HIDE:
        install = _hidden(install, ["/usr/include/openssl"], where)
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    yield env_dir


@pytest.fixture(scope="module")
def sdist_venv(
    python: str, dist: Path, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A fresh virtualenv of that CPython where ``pip install dtp-sui`` took the sdist
    from the folder (the wheel refused) and built it, as on a machine the wheel does not
    serve: with the compiler and OpenSSL's headers, its build requirements from the
    wheelhouse."""
    env_dir = tmp_path_factory.mktemp("sdist-venv") / "venv"
    env = _new_venv(python, env_dir)
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None, "building the sdist needs a C compiler"
    env["PATH"] += os.pathsep.join(["", os.path.dirname(compiler), "/usr/bin", "/bin"])
    install = _pip(env_dir, "install", "-q", *_by_name(dist, wheelhouse), "--no-binary", NAME)
    done = subprocess.run([*install, NAME], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return env_dir


def _in_venv(
    venv: Path,
    tmp_path: Path,
    *argv: str,
    hide_openssl: bool = False,
    pip_settings: bool = False,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``argv`` run from the virtualenv's bin/ as a user runs it there, in a folder of
    its own; with the system's OpenSSL hidden if asked, with the machine's pip settings
    (its package index, from the real home's and the environment's) if asked."""
    env = {
        "PATH": str(venv / "bin"),
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "LANG": "C.UTF-8",
    }
    if pip_settings:
        env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_") or k == "HOME"})
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


def test_metadata_and_dtp_version_name_the_distribution(venv: Path, tmp_path: Path) -> None:
    """Installed by the name dtp-sui, found by it (and by the package it holds, dtp);
    no distribution named dtp; `dtp --version` and `dtp version` read its version."""
    probe = _in_venv(
        venv,
        tmp_path,
        "python",
        "-c",
        "import json, importlib.metadata as m\n"
        "try:\n    m.distribution('dtp')\nexcept m.PackageNotFoundError:\n    old = None\n"
        "else:\n    old = 'found'\n"
        f"print(json.dumps({{'name': m.metadata({NAME!r})['Name'], "
        f"'version': m.version({NAME!r}), 'of_dtp': m.packages_distributions()['dtp'], "
        "'old': old}))",
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert found == {"name": NAME, "version": found["version"], "of_dtp": [NAME], "old": None}
    short = _in_venv(venv, tmp_path, "dtp", "--version")
    assert short.stdout == f"dtp {found['version']}\n", short.stdout + short.stderr
    long = _in_venv(venv, tmp_path, "dtp", "version")
    assert long.stdout == f"dtp {found['version']} (distribution {NAME}, core backend: c)\n"
    as_json = json.loads(_in_venv(venv, tmp_path, "dtp", "version", "--json").stdout)
    assert (as_json["distribution"], as_json["version"]) == (NAME, found["version"])


def test_every_extra_resolves_from_the_folder_and_the_index(
    venv: Path, dist: Path, wheel: Path, tmp_path: Path
) -> None:
    """pip's resolver, every feature's extra at once (a set that satisfies them all
    satisfies each), on that CPython, as `pip install --find-links dist 'dtp-sui[...]'`
    would install them (a dry run: what it reports, nothing installed): dtp-sui is the
    built wheel, each extra brings the packages the metadata names for it, and the
    project named dtp never comes in."""
    meta = _metadata(wheel)
    extras = sorted(set(meta.get_all("Provides-Extra") or []) - TOOL_EXTRAS)
    report = tmp_path / "report.json"
    done = _in_venv(
        venv,
        tmp_path,
        "python",
        "-m",
        "pip",
        "install",
        "-q",
        "--dry-run",
        "--ignore-installed",
        "--report",
        str(report),
        "--find-links",
        str(dist),
        "--only-binary",
        NAME,
        f"{NAME}[{','.join(extras)}]",
        pip_settings=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    chosen = {
        re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item
        for item in json.loads(report.read_text(encoding="utf-8"))["install"]
    }
    assert chosen[NAME]["download_info"]["url"] == wheel.as_uri()
    assert chosen[NAME]["requested_extras"] == extras
    assert "dtp" not in chosen
    for extra in extras:
        named = {
            re.sub(r"[-_.]+", "-", re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]).lower()
            for r in meta.get_all("Requires-Dist") or []
            if f'extra == "{extra}"' in r
        }
        assert named and named <= set(chosen), (extra, named - set(chosen))


def test_the_installed_core_loads_the_wheels_libcrypto(venv: Path, tmp_path: Path) -> None:
    """``ldd`` of the installed core resolves libcrypto into the wheel's dtp_sui.libs/."""
    (core,) = venv.glob("lib/python3.*/site-packages/dtp/_dtp_core.abi3.so")
    done = subprocess.run(["ldd", str(core)], capture_output=True, text=True, check=True)
    crypto = [line.split() for line in done.stdout.splitlines() if "crypto" in line]
    assert len(crypto) == 1, done.stdout
    name, arrow, path = crypto[0][:3]
    assert re.fullmatch(r"libcrypto-[0-9a-f]{8}\.so\.3", name) and arrow == "=>"
    assert Path(path).resolve() == (core.parent.parent / "dtp_sui.libs" / name).resolve()


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
    assert refused.stderr.strip().endswith("pip install 'dtp-sui[sui]'"), refused.stderr


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
        "assert maps and all('/dtp_sui.libs/libcrypto-' in m for m in maps), maps\n",
        hide_openssl=True,
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    done = _in_venv(venv, tmp_path, "dtp", "demo", "--quick", hide_openssl=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    check_demo_output(done.stdout)


def test_the_sdist_installs_by_name_and_builds_the_core_here(
    sdist_venv: Path, tmp_path: Path
) -> None:
    """pip took the sdist (no wheel of dtp-sui was allowed) and built the C core with
    this machine's compiler, against the system's libcrypto (no bundled copy); the
    package runs from there under the distribution's name."""
    site = next(sdist_venv.glob("lib/python3.*/site-packages"))
    (info,) = site.glob(f"{FILE_NAME}-*.dist-info")
    tags = [line for line in (info / "WHEEL").read_text().splitlines() if line.startswith("Tag:")]
    assert tags == [f"Tag: cp311-abi3-linux_{platform.machine()}"], tags  # built here
    assert not list(site.glob("*.libs"))
    linked = subprocess.run(
        ["ldd", str(site / "dtp" / "_dtp_core.abi3.so")], capture_output=True, text=True
    ).stdout
    assert re.search(r"^\s*libcrypto\.so\.3 => /", linked, re.M), linked
    done = _in_venv(sdist_venv, tmp_path, "dtp", "version")
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(rf"dtp \S+ \(distribution {NAME}, core backend: c\)\n", done.stdout)
    demo = _in_venv(sdist_venv, tmp_path, "dtp", "demo", "--quick")
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    check_demo_output(demo.stdout)


# -- what README.md says ---------------------------------------------------------------


def _install_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Install\n") :]
    return section[: section.index("\n## ", 1)]


def test_the_readmes_install_section_is_what_the_tests_show(wheel: Path) -> None:
    """The wheel's name, glibc floor and Pythons, the base dependencies and the extras,
    and the install lines these tests run, as README.md's "Install" gives them."""
    section = _install_section()
    flat = " ".join(section.split())
    assert f"# {Path('dist') / wheel.name}" in section
    assert f"pip install --find-links dist {NAME} " in section
    assert f"pip install --find-links dist '{NAME}[sui]' " in section
    glibc = re.search(r"manylinux_2_(\d+)_", wheel.name)
    assert glibc is not None
    assert f"glibc 2.{glibc.group(1)} or newer" in flat
    assert f"`manylinux_2_{glibc.group(1)}`" in flat
    *first, last = PYTHONS
    assert f"CPython {', '.join(first)} and {last};" in flat
    named = re.search(r"dependencies: ([a-z]+), ([a-z]+), ([a-z]+) and ([a-z]+)\.", flat)
    assert named is not None and set(named.groups()) == BASE_DISTRIBUTIONS - {NAME, "pycparser"}
    meta = _metadata(wheel)
    extras = set(meta.get_all("Provides-Extra") or []) - TOOL_EXTRAS
    assert set(re.findall(rf"\| `pip install '{NAME}\[([a-z]+)\]'` \|", section)) == extras


def test_the_readmes_missing_extra_line_is_what_dtp_prints(venv: Path, tmp_path: Path) -> None:
    """The example line is the one `dtp` prints, word for word."""
    flat = " ".join(_install_section().split())
    shown = re.search(r"e\.g\. `(dtp: --ledger: Sui testnet [^`]+)`", flat)
    assert shown is not None
    done = _in_venv(venv, tmp_path, "dtp", "balance", "--ledger", "testnet", "0x1")
    assert done.returncode == 1 and done.stderr.strip() == shown.group(1), done.stderr


# -- testing applications with the wheel (docs/testing.md) ------------------------------


@pytest.fixture(scope="module")
def testing_venv(dist: Path, wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv of the CPython running the suite with the wheel and its
    ``testing`` and ``sui`` extras (pytest, hypothesis; pysui for the node stand-in), as
    docs/testing.md has a user install it, by name (the wheel from the folder, the
    extras' packages from the package index); the plugin comes in through the wheel's
    pytest11 entry point alone."""
    env_dir = tmp_path_factory.mktemp("venv-testing") / "venv"
    env = _new_venv(getattr(sys, "_base_executable", sys.executable), env_dir)
    version = wheel.name.split("-")[1]
    install = _pip(env_dir, "install", "-q", "--find-links", str(dist), "--only-binary", NAME)
    done = subprocess.run(
        [*install, f"{NAME}[sui,testing]=={version}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
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

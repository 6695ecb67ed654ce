"""`dtp deploy` with a fake `sui`: a relative --sui-bin, a damaged deployments record
and odd publish output end in one line and exit status 1, not a traceback."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from tests.cli.deploy_runs import PUBLISHED, deploy, fake_sui


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch data home and a Move package of our own (nothing is built in the
    checkout)."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "Move.toml").write_text('[package]\nname = "dtp"\n')
    return tmp_path


def records(place: Path) -> Path:
    return place / "data" / "dtp" / "deployments.json"


def test_a_relative_sui_bin_works_in_the_package_directory(
    place: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sui move build` runs with cwd=package: ./sui named nothing there."""
    fake_sui(place / "sui", PUBLISHED, place / "published")
    monkeypatch.chdir(place)
    assert deploy("--sui-bin", "./sui", "--package-path", str(place / "pkg"), "--json") == 0
    assert json.loads(capsys.readouterr().out)["package_id"] == "0xabc"
    assert json.loads(records(place).read_text())["localnet"]["package_id"] == "0xabc"


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '"x"', "\udcff"])
def test_a_damaged_record_file_is_refused_before_publishing(
    place: Path, content: str, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = place / "published"
    sui = fake_sui(place / "sui", PUBLISHED, marker)
    records(place).parent.mkdir(parents=True)
    records(place).write_bytes(content.encode("utf-8", "surrogateescape"))
    assert deploy("--sui-bin", str(sui), "--package-path", str(place / "pkg")) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"dtp: {records(place)} is not a deployments record (a JSON object); fix or move it aside."
    ]
    assert not marker.exists()  # nothing was published (and paid for) in vain


@pytest.mark.parametrize(
    "output",
    [
        '{"objectChanges": ["x", 1, null]}',
        '{"objectChanges": 7}',
        '{"objectChanges": {"type": "published"}}',
    ],
)
def test_odd_publish_output_is_one_line(
    place: Path, output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sui = fake_sui(place / "sui", output, place / "published")
    assert deploy("--sui-bin", str(sui), "--package-path", str(place / "pkg")) == 1
    assert capsys.readouterr().err.splitlines() == [
        "dtp: `sui client publish` reported no published package."
    ]


def test_deploy_hands_its_sui_children_no_passphrase(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dtp.cli._ledger import register

    (home / "pkg").mkdir()
    (home / "pkg" / "Move.toml").write_text('[package]\nname = "dtp"\n')
    seen = home / "env.txt"
    sui = home / "sui"
    sui.write_text(
        "#!/bin/sh\n"
        f"env >> {seen}\n"
        'case "$1 $2" in\n'
        '  "client active-env") echo localnet ;;\n'
        '  "move build") echo built ;;\n'
        '  "client publish") echo \'{"digest": "D", "objectChanges": '
        '[{"type": "published", "packageId": "0xabc"}]}\' ;;\n'
        "esac\n"
    )
    sui.chmod(0o755)
    monkeypatch.setenv("DTP_PASSPHRASE", "default-variable-secret")
    monkeypatch.setenv("MY_SECRET", "named-variable-secret")
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    parser = argparse.ArgumentParser(prog="dtp")
    register(parser.add_subparsers(dest="command"))
    argv = ["deploy", "--network", "localnet", "--sui-bin", str(sui)]
    argv += ["--package-path", str(home / "pkg"), "--passphrase-env", "MY_SECRET"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    env = seen.read_text()
    assert env.count("SOMETHING_ELSE=kept") == 3  # each of the three calls ran
    assert "default-variable-secret" not in env and "named-variable-secret" not in env
    assert "DTP_PASSPHRASE" not in env and "MY_SECRET" not in env

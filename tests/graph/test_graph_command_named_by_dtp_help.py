"""``dtp --help`` is where a user of the ``dtp`` command looks first; the graph's peers
are run by ``python -m dtp.graph``, which it must name, and that command must exist
with the subcommands it names."""

from __future__ import annotations

import pytest

from dtp.cli import build_parser
from dtp.graph.__main__ import main as graph_main


def test_dtp_help_names_the_graph_command() -> None:
    text = " ".join(build_parser().format_help().split())
    assert "python -m dtp.graph serve|gun --help" in text
    assert "docs/graph.md" in text


@pytest.mark.parametrize("command", ["serve", "gun"])
def test_the_graph_subcommands_it_names_exist(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        graph_main([command, "--help"])
    assert done.value.code == 0
    assert f"python -m dtp.graph {command}" in capsys.readouterr().out

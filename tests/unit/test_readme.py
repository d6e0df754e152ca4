"""The README starts with the two commands; the docs list every config key as it is defined."""

from pathlib import Path

from raftmq.node.config_reference import config_reference_markdown

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"


def test_config_table_is_current() -> None:
    assert config_reference_markdown().strip() in CONFIGURATION.read_text()


def test_readme_points_to_the_config_table() -> None:
    assert "(docs/configuration.md)" in README.read_text()


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first_block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines()[0].startswith("scripts/setup.sh")
    assert first_block.splitlines()[1].startswith("scripts/test.sh")

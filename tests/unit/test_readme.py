"""The README documents every config key exactly as the code defines it."""

from pathlib import Path

from raftmq.node.config_reference import config_reference_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_config_table_is_current() -> None:
    assert config_reference_markdown().strip() in README.read_text()


def test_readme_starts_with_the_two_commands() -> None:
    text = README.read_text()
    first_block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines()[0].startswith("scripts/setup.sh")
    assert first_block.splitlines()[1].startswith("scripts/test.sh")

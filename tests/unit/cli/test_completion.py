"""``stratus completion bash|zsh|fish``: scripts that complete commands, verbs and options."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cli.main import main


def script(shell: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["completion", shell]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n")  # its last line must not run into whatever is printed next
    return out


def complete_in_bash(path: Path, words: list[str]) -> list[str]:
    """What bash offers after ``words`` (the last one being typed), with the script sourced."""
    bash = shutil.which("bash")
    assert bash is not None
    line = " ".join(words)
    probe = (
        f"source {path}\n"
        f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; COMP_LINE='{line}'; "
        f"COMP_POINT={len(line)}\n"
        "_shtab_stratus\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        [bash, "--norc", "-c", probe], capture_output=True, text=True, timeout=10, check=False
    )
    assert done.returncode == 0, done.stderr
    return sorted(filter(None, (word.strip() for word in done.stdout.splitlines())))


@pytest.mark.parametrize(
    ("words", "offered"),
    [
        (["stratus", "h"], ["host"]),
        (["stratus", "vm", "st"], ["start", "stop"]),
        (["stratus", "disk", ""], ["attach", "detach", "list"]),
        (["stratus", "vm", "stop", "web-1", "--wa"], ["--wait"]),
        (["stratus", "completion", ""], ["bash", "fish", "zsh"]),
    ],
    ids=["commands", "verbs", "disk-verbs", "options", "shells"],
)
def test_bash_completes_commands_verbs_and_options(
    words: list[str], offered: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "stratus.bash"
    path.write_text(script("bash", capsys))
    found = complete_in_bash(path, words)
    assert [word for word in found if word in offered or word.startswith(words[-1])] == offered


def test_zsh_and_fish_scripts_name_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    zsh, fish = script("zsh", capsys), script("fish", capsys)
    assert zsh.startswith("#compdef stratus")
    assert "complete -c stratus" in fish
    for command in ("vm", "host", "disk", "image", "context", "completion", "usage"):
        assert command in zsh and command in fish

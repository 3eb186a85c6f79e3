"""``stratus completion bash|zsh|fish``: a completion script made from the parser itself (by
shtab), so it always knows every command, verb and option of this version."""

from __future__ import annotations

import argparse

import shtab

SHELLS = ("bash", "zsh", "fish")
HOW = {
    "bash": "source <(stratus completion bash)  # or save it in "
    "~/.local/share/bash-completion/completions/stratus",
    "zsh": "stratus completion zsh > ~/.zfunc/_stratus  # a directory on $fpath; then compinit",
    "fish": "stratus completion fish > ~/.config/fish/completions/stratus.fish",
}


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    epilog = "\n".join(f"{shell}: {how}" for shell, how in HOW.items())
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or fish)",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    completion.add_argument("shell", choices=SHELLS)


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    return str(shtab.complete(parser, shell=shell))

"""README's fleet recipes (Triton and Ray sections) against the real CLI: every `adrt ...` command
there names a real command and real options, and the Triton commands do what the text says."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from adrt.cli import main

from tests.triton.helpers import reference_bundle

README = Path(__file__).resolve().parents[2] / "README.md"
SECTIONS = ("## Fleet: Triton Inference Server", "## Many products (Ray)")


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(title + "\n")
    end = text.find("\n## ", start + len(title))
    return text[start:end if end >= 0 else None]


def adrt_commands(text: str) -> list[list[str]]:
    """The `adrt ...` commands of a README section: lines of its bash blocks and inline code spans."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        found += [line for line in block.splitlines() if line.startswith("adrt ")]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [span for span in re.findall(r"`([^`\n]+)`", prose) if span.startswith("adrt ")]
    return [shlex.split(line, comments=True) for line in found]


def test_readme_fleet_commands_use_real_options():
    ctx = click.Context(main)
    seen = set()
    for title in SECTIONS:
        commands = adrt_commands(section(title))
        assert commands, f"no adrt command found under {title!r}"
        for argv in commands:
            cmd = main.get_command(ctx, argv[1])
            assert cmd is not None, f"README ({title}): no command 'adrt {argv[1]}'"
            names = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
            for token in argv[2:]:
                if token.startswith("--"):
                    assert token.split("=")[0] in names, f"README ({title}): adrt {argv[1]} has no option {token}"
            seen.add(argv[1])
    assert {"triton", "triton-check", "train-many"} <= seen


def test_readme_triton_recipe_writes_checks_and_rolls_a_version(tmp_path, monkeypatch):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient: pip install 'adrt[triton]'")
    commands = adrt_commands(section(SECTIONS[0]))
    write = next(c for c in commands if c[1] == "triton" and "--form" not in c and "--add" not in c)
    check = next(c for c in commands if c[1] == "triton-check")
    roll = next(c for c in commands if c[1] == "triton" and "--add" in c)
    monkeypatch.chdir(tmp_path)
    # The bundles the commands name, as tiny two-input bundles (no training needed).
    for argv in (write, roll):
        for token in argv[2:]:
            path = token.partition("=")[2] if "=" in token and not token.startswith("-") else token
            if path.startswith("bundles/") and not Path(path).exists():
                reference_bundle(Path(path), size=8)

    def run(argv):
        r = CliRunner().invoke(main, argv[1:])
        assert r.exit_code == 0, (argv, r.output)
        return r.output

    run(write)
    repo = Path(write[write.index("--out") + 1])
    models = sorted(p.name for p in repo.iterdir() if p.is_dir())
    run(check)
    # The roll command adds version 2 of a model already served, beside version 1 (no new model).
    run(roll)
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == models
    rolled = [m for m in models if (repo / m / "2").is_dir()]
    assert len(rolled) == 1 and (repo / rolled[0] / "1").is_dir(), sorted(repo.rglob("*"))
    assert f"{rolled[0]}/2" in run(check)

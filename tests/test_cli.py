import subprocess
import sys

from click.testing import CliRunner

from cellvit_cli import __version__
from cellvit_cli.cli import main


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "evaluate" in result.output
    assert "Example" in result.output


def test_python_m_help():
    result = subprocess.run([sys.executable, "-m", "cellvit_cli", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout

"""retain installs beside a user's own stack: a wheel with compatible ranges, not pins, that runs where installed."""

import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

import retain

ROOT = Path(__file__).parent.parent


@pytest.mark.scale  # a wheel built and installed in a virtualenv of its own, by pip in subprocesses: `make test-scale`
def test_the_wheel_builds_and_runs_from_a_fresh_virtualenv(tmp_path):
    source = tmp_path / "source"  # a copy: building writes build/ and egg-info next to the sources
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path / "dist"), str(source)], check=True)
    [wheel] = (tmp_path / "dist").glob("retain-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        files = set(archive.namelist())
        metadata = archive.read(f"retain-{retain.__version__}.dist-info/METADATA").decode()
    for module in ("methods/casm.py", "methods/composed.py", "nn/versioned_table.py", "bench/temporal_facts.py",
                   "importers/temporalwiki.py", "compat/aria_trl.py", "recipes.py", "assets/smollm2-tokenizer.json.gz"):
        assert f"retain/{module}" in files, module
    requires = re.findall(r"^Requires-Dist: (.+)$", metadata, flags=re.MULTILINE)
    assert any(r.startswith("transformers") for r in requires)
    assert not [r for r in requires if "==" in r.split(";")[0]], "dependencies are ranges; exact pins live in constraints.txt"

    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    subprocess.run([bin_dir / "pip", "install", "--quiet", "--no-index", "--no-deps", str(wheel)], check=True)
    # retain from the new environment; its dependencies from this one (installing them would download torch).
    env = {"PYTHONPATH": sysconfig.get_paths()["purelib"], "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    version = subprocess.run([bin_dir / "retain", "--version"], env=env, capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"retain {retain.__version__}"
    where = subprocess.run([bin_dir / "python", "-c", "import retain; print(retain.__file__)"], env=env,
                           capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(tmp_path / "venv")
    # The tiny model needs no cache and no embedded model: its tokenizer ships in the wheel.
    tiny = subprocess.run([bin_dir / "python", "-c", "from retain import load_model; print(len(load_model('tiny')[1]))"],
                          env={**env, "RETAIN_CACHE": str(tmp_path / "empty-cache")}, capture_output=True, text=True)
    assert tiny.returncode == 0 and tiny.stdout.split()[-1] == "49152", tiny.stderr[-2000:]
    assert not (tmp_path / "empty-cache").exists()
    assert "embedded" in re.findall(r"^Provides-Extra: (.+)$", metadata, flags=re.MULTILINE)


def test_nothing_reads_outside_the_repository():
    """A user's clone has nothing beside it: no test, script, example or doc reaches for a folder next to it."""
    tracked = [p for folder in ("tests", "scripts", "benchmarks", "examples", "docs", "src", ".ci")
               for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".sh", ".yaml", ".json", "")]
    tracked += [ROOT / "README.md", ROOT / "Makefile"]
    outside = re.compile(r"\.\./shared|parents\[2\]|\bshared/(formats|data)\b")
    this = Path(__file__).resolve()
    assert not [str(p) for p in tracked if p.resolve() != this and outside.search(p.read_text(errors="ignore"))]

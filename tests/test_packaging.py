"""Packaging and the pytest layer: the study plugin's `-m` parsing, its staying inert outside the study, one
registration with the entry point and the checkout's conftest, one source for the version, the extras the
README names, CI's install and exit status (a diverged run's chance level: tests/test_claims.py)."""

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

import elr
from elr import pytest_plugin
from elr.pytest_plugin import FULL_MARKS, MARKERS, selects_long, study_dir_for

try:
    import tomllib
except ModuleNotFoundError:                          # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
README = (ROOT / "README.md").read_text()


# ------------------------------------------------------------------------------------------- -m
MARK_EXPRESSIONS = [
    ("", False), ("long", True), ("not long", False), ("not  long", False), ("(long)", True),
    ("long and not gpu", False), ("gpu", True), ("slow", False), ("long or slow", True),
    ("not (long or slow)", False), ("(not long) or gpu", True), ("long and", False),
]


@pytest.mark.parametrize("expr, selected", MARK_EXPRESSIONS)
def test_marker_expression_selects_the_long_study_as_pytest_would(expr, selected):
    assert selects_long(expr) is selected


def test_marker_expressions_agree_with_pytests_own_selection(pytester):
    """Whatever selects_long says, pytest's -m selects the full-scale item (marked FULL_MARKS) exactly then."""
    marks = "".join(f"@pytest.mark.{m}\n" for m in FULL_MARKS)
    pytester.makepyfile(f"import pytest\n\n{marks}def test_full():\n    pass\n\ndef test_plain():\n    pass\n")
    pytester.makeini("[pytest]\nmarkers =\n    long: x\n    gpu: x\n    slow: x\n")
    for expr, selected in MARK_EXPRESSIONS:
        if not expr or expr == "long and":             # no -m at all; an expression pytest refuses
            continue
        passed = pytester.inline_run("-m", expr, "-p", "no:cacheprovider").listoutcomes()[0]
        assert any(r.nodeid.endswith("::test_full") for r in passed) is selected, expr


def test_markers_are_registered_in_one_place():
    ini = [m.split(":")[0].strip() for m in PYPROJECT["tool"]["pytest"]["ini_options"].get("markers", [])]
    plugin = [m.split(":")[0].strip() for m in MARKERS]
    for name in set(ini) | set(plugin):
        assert (ini + plugin).count(name) == 1, name
    assert set(FULL_MARKS) <= set(plugin)


# ------------------------------------------------------------------------------------------- the plugin
def make_study_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "design.toml").write_text((ROOT / "experiments" / "design.toml").read_text())
    (path / "test_claims.py").write_text((ROOT / "experiments" / "test_claims.py").read_text())
    # a package, as experiments/ is: its module is experiments.test_claims, not the test_claims that
    # tests/test_claims.py already put in sys.modules when the whole suite runs in one process
    (path / "__init__.py").write_text("")
    return path


def test_the_study_directory_an_argument_names(tmp_path):
    study = make_study_dir(tmp_path / "experiments")
    (tmp_path / "tests").mkdir()
    assert study_dir_for("experiments", tmp_path) == study
    assert study_dir_for("experiments/test_claims.py::test_h1_elr_converges_to_one_value", tmp_path) == study
    assert study_dir_for(".", tmp_path) == study                 # pytest . in the checkout's root
    assert study_dir_for(str(study), Path("/")) == study
    assert study_dir_for("tests", tmp_path) is None
    assert study_dir_for("cpu", tmp_path) is None                # --scale cpu's value, taken for a path
    assert study_dir_for("elsewhere", tmp_path, pyargs=True) is None


def test_plugin_is_inert_outside_the_study(pytester):
    """Loaded as the entry point loads it (in every session of the environment), in a project that is not the
    study and happens to define --gpu and --scale itself: no conflicting options, no fixtures, no deselection."""
    pytester.makeconftest("""
        def pytest_addoption(parser):
            parser.addoption("--gpu", action="store_true")
            parser.addoption("--scale", default="mine")
    """)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.long
        def test_own_options(request):
            assert request.config.getoption("scale") == "theirs"
            assert request.config.pluginmanager.has_plugin("elr.pytest_plugin")
            assert not request.config.pluginmanager.has_plugin("elr-study")
            assert not request.config.pluginmanager.has_plugin("elr-study-report")

        def test_no_study_fixture(judge):
            pass
    """)
    result = pytester.runpytest("-p", "elr.pytest_plugin", "-p", "no:cacheprovider", "--scale", "theirs", "--gpu")
    result.assert_outcomes(passed=1, errors=1)      # the long test ran (not deselected); `judge` is not defined
    result.stdout.fnmatch_lines(["*fixture 'judge' not found*"])


def test_entry_point_and_checkout_conftest_register_the_plugin_once(pytester):
    """The entry point loads the plugin under its module's name (here by -p, under the same name) and the
    checkout's conftest.py names the same module: one registration, the study's options and fixtures."""
    pytester.makeconftest((ROOT / "conftest.py").read_text())
    make_study_dir(pytester.path / "experiments")
    result = pytester.runpytest("-p", "elr.pytest_plugin", "-p", "no:cacheprovider", "experiments/", "--co", "-q",
                                "--scale", "smoke", "--runs-dir", "r")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["*6/12 tests collected (6 deselected)*"])
    # the same from the conftest alone (a checkout without the entry point, e.g. plugin autoload disabled)
    result = pytester.runpytest("-p", "no:cacheprovider", "experiments/", "--co", "-q", "--runs-dir", "r")
    assert result.ret == 0, result.stdout.str()


def test_pyproject_entry_point_is_named_as_the_conftest_names_the_plugin():
    # pytest imports a plugin once per name: the entry point's name must be the module the conftest names
    (name, target), = PYPROJECT["project"]["entry-points"]["pytest11"].items()
    assert name == target == pytest_plugin.__name__
    assert f'pytest_plugins = ["{name}"]' in (ROOT / "conftest.py").read_text()


def test_the_study_ships_with_the_package():
    tool = PYPROJECT["tool"]["setuptools"]
    assert tool["package-dir"]["elr.experiments"] == "experiments" and "elr.experiments" in tool["packages"]
    assert tool["package-data"]["elr.experiments"] == ["design.toml"]
    assert (ROOT / "experiments" / "__init__.py").is_file()           # --pyargs needs a regular package


# ------------------------------------------------------------------------------------------- metadata
def test_the_version_has_one_source():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "elr.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", elr.__version__)


def extra(name: str) -> set[str]:
    """The requirement names an extra brings, its references to elr's own extras followed."""
    out = set()
    for req in PYPROJECT["project"]["optional-dependencies"][name]:
        base = re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower()
        inner = re.match(r"elr\[(.+)\]", req)
        out |= set().union(*(extra(e.strip()) for e in inner.group(1).split(","))) if inner else {base}
    return out


def test_the_extras_hold_what_the_readme_says():
    named = set(re.findall(r'(?:\.|elr)\[([a-z,]+)\]', README))
    defined = set(PYPROJECT["project"]["optional-dependencies"])
    assert named and {e for group in named for e in group.split(",")} <= defined
    assert {"pytest", "pytest-xdist"} <= extra("study")                  # pytest experiments/ -n N
    assert extra("study") <= extra("dev") and {"hypothesis", "submitit"} <= extra("dev")
    assert PYPROJECT["project"]["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")


# ------------------------------------------------------------------------------------------- CI
def test_ci_uses_its_venvs_python_and_fails_on_pytests_exit_5(tmp_path):
    """.ci/run with stand-ins: python3 makes a venv whose python logs its arguments and exits 5 for pytest; a
    `pip` and a `pytest` first on PATH exit 0. CI must run the venv's python -m pip / -m pytest and exit 5."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", repo / ".ci" / "run")
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()

    def script(path: Path, body: str) -> None:
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)

    venv_python = ('echo "$*" >> ' + str(log) + '\nif [ "$1 $2" = "-m pytest" ]; then exit 5; fi\nexit 0\n')
    script(bin_dir / "python3", f"""
        [ "$1 $2" = "-m venv" ] || exit 9
        mkdir -p "$3/bin"
        printf 'export PATH="%s/bin:$PATH"\\n' "$(cd "$3" && pwd)" > "$3/bin/activate"
        cat > "$3/bin/python" <<'EOF'
{venv_python}EOF
        chmod +x "$3/bin/python"
    """)
    for name in ("pip", "pytest"):      # the wrong ones: they would make CI pass
        script(bin_dir / name, "exit 0\n")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(repo / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 5, done.stdout + done.stderr
    assert log.read_text().splitlines() == ["-m pip install -e .[dev]", "-m pytest tests/"]


def test_ci_runs_the_readmes_quickstart():
    quickstart = README.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.strip() for line in quickstart.strip().splitlines()]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert commands[1:] == ci[-2:]          # the install and the test command, verbatim

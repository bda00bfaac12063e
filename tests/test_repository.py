"""The repository's contract: README commands, CI script, import-time deps."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1)
    return [line for line in first_block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_the_main_job_and_the_test_command():
    main_job, test_command = _readme_commands()
    assert "recipes/finetune.py" in main_job
    assert "KERAS_BACKEND=tensorflow" in test_command and "KERAS_BACKEND=jax" in test_command


LINT = ".venv-test/bin/ruff check . && .venv-test/bin/ruff format --check ."


def test_ci_runs_the_readme_test_command_with_lint_before_the_tests():
    with open(os.path.join(REPO, ".ci", "run")) as f:
        script = [line for line in f.read().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    install, lint, tests = script
    assert lint == LINT
    assert f"{install} && {tests}" == _readme_commands()[1]
    assert "pip install" in install and "pytest" not in install and "pip" not in tests


def _new_third_party_modules(statement):
    """Top-level non-stdlib modules that `statement` imports beyond keras and numpy."""
    code = (
        "import sys, keras, numpy; before = set(sys.modules); "
        f"{statement}; "
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names)))"
    )
    environment = dict(os.environ, KERAS_BACKEND="jax")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=True)
    return out.stdout.strip()


def test_library_imports_only_keras_and_numpy():
    # TensorFlow-only or optional parts (safetensors, PIL, ...) load only
    # when used: importing the package adds no top-level module but itself.
    assert _new_third_party_modules("import keras_metaformer") == "['keras_metaformer']"


def test_export_cli_and_distribute_import_no_tensorflow():
    # They import TensorFlow (and PIL, LiteRT) only inside the functions that need it.
    statement = "import keras_metaformer.export, keras_metaformer.cli, keras_metaformer.distribute"
    assert _new_third_party_modules(statement) == "['keras_metaformer']"


def test_paths_the_docs_name_exist():
    # The README and the benchmark record point readers at files by path;
    # a rename must not leave them pointing at nothing.
    pattern = re.compile(r"(?<![\w/.])((?:recipes|tests|keras_metaformer|\.ci)/[\w./-]*\w)")
    for doc in ("README.md", os.path.join("recipes", "BENCHMARKS.md")):
        with open(os.path.join(REPO, doc)) as f:
            named = set(pattern.findall(f.read()))
        assert "recipes/benchmark.py" in named, doc
        missing = sorted(path for path in named if not os.path.exists(os.path.join(REPO, path)))
        assert not missing, f"{doc} names files that do not exist: {missing}"

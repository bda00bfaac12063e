import os
import subprocess
import sys


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_recipe(*args, env=None):
    environment = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "recipes", "classify.py"), *args],
        capture_output=True, text=True, env=environment, timeout=600,
    )


def test_main_job_classifies_offline_with_random_weights_and_says_so():
    # conftest points HF_ENDPOINT at a closed local port: the download fails.
    result = run_recipe()
    assert result.returncode == 0, result.stderr
    assert "Could not download the ImageNet weights" in result.stdout
    assert "RANDOM weights (offline: download failed)" in result.stdout
    assert "Image: scikit-image's chelsea.png (a tabby cat), 451x300 pixels" in result.stdout
    ranked = [line for line in result.stdout.splitlines() if line.strip()[:2] in {"1.", "2.", "3.", "4.", "5."}]
    assert len(ranked) == 5


def test_main_job_reports_unreadable_images(tmp_path):
    missing = run_recipe("--image", str(tmp_path / "missing.jpg"), "--weights", "none")
    assert missing.returncode != 0 and "no image file at" in missing.stderr
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    unreadable = run_recipe("--image", str(broken), "--weights", "none")
    assert unreadable.returncode != 0 and "cannot read" in unreadable.stderr

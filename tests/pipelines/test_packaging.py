"""The Dockerfile installs the package the way setup.py declares it, on a matching Beam SDK."""

import ast
import os
import re
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _setup_requires() -> list[str]:
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "INSTALL_REQUIRES":
            return ast.literal_eval(node.value)
    raise AssertionError("INSTALL_REQUIRES not found")


def test_dockerfile_installs_the_package_and_copies_every_package():
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", text)
    for pkg in ("transforms", "schemas", "pipelines"):
        assert f"COPY {pkg} " in text
    assert "requirements" not in text  # no second dependency list


def test_base_image_beam_version_satisfies_setup_range():
    from packaging.requirements import Requirement

    text = open(os.path.join(ROOT, "Dockerfile")).read()
    tag = re.search(r"FROM apache/beam_python3\.(\d+)_sdk:(\S+)", text)
    assert tag, "base image must be apache/beam_python3.X_sdk:VERSION"
    beam = [Requirement(r) for r in _setup_requires() if r.startswith("apache-beam")][0]
    assert beam.specifier.contains(tag.group(2))
    assert tag.group(2) == metadata.version("apache-beam"), "image SDK must match the tested Beam version"


def test_install_requires_are_installed_and_satisfied():
    from packaging.requirements import Requirement

    for req in map(Requirement, _setup_requires()):
        assert req.specifier.contains(metadata.version(req.name), prereleases=True), req


def test_dockerfile_smoke_import_runs_here_and_covers_every_native_reader():
    """The image's build-time import check names every native reader and works in this environment."""
    import subprocess
    import sys

    text = open(os.path.join(ROOT, "Dockerfile")).read()
    check = re.search(r'python -c "(.*?)"', text, re.S).group(1).replace("\\\n", "")
    for module in (
        "openslide",
        "gdcm",
        "openjpeg",
        "SimpleITK",
        "array_record",
        "wsidicom",
        "medprep.pipelines.graphs.slides",
    ):
        assert module in check, module
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_flex_stage_launches_the_module_that_exists():
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    path = re.search(r"ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/medprep/(\S+)", text).group(1)
    assert os.path.isfile(os.path.join(ROOT, path))
    assert "COPY --from=template_launcher /opt/google/dataflow/python_template_launcher" in text
    assert text.count('ENTRYPOINT ["/opt/apache/beam/boot"]') == 2  # workers start the SDK harness


def test_one_namespace_no_generic_top_level_names():
    """setup.py installs medprep.transforms, medprep.schemas, medprep.pipelines (and their subpackages) from the
    top-level folders, and nothing outside the medprep namespace."""
    import setuptools

    captured: dict = {}
    real = setuptools.setup
    cwd = os.getcwd()
    try:
        setuptools.setup = lambda **kw: captured.update(kw)
        os.chdir(ROOT)
        exec(compile(open(os.path.join(ROOT, "setup.py")).read(), "setup.py", "exec"), {"__name__": "setup"})
    finally:
        setuptools.setup = real
        os.chdir(cwd)
    packages = captured["packages"]
    assert all(p == "medprep" or p.startswith("medprep.") for p in packages)
    for sub in (
        "transforms",
        "schemas",
        "pipelines",
        "pipelines.graphs",
        "pipelines.io",
        "pipelines.io.sources",
        "pipelines.records",
        "pipelines.tools",
        "pipelines.cli",
    ):
        assert f"medprep.{sub}" in packages and captured["package_dir"][f"medprep.{sub}"] == sub.replace(".", "/")
    assert captured["entry_points"] == {"console_scripts": ["medprep=medprep.pipelines.cli.main:console_main"]}

"""The built wheel is a working install on its own: schema, licence, version and entry point.

Real: `pip wheel` builds the project with its own build backend (isolated build), a new virtual
environment outside the source tree gets the wheel installed by pip, and its `pmsctl` console
script validates `practices/` from another working directory. The third-party dependencies are
borrowed from the test's own environment (a path line in the new environment's site-packages) so
the test stays well under half a minute; `pmsctl` itself comes only from the wheel, and the test
checks that.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import reconciler

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_IN_WHEEL = "reconciler/api/schemas/practicewriteback.v1alpha1.schema.json"


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_the_wheel_carries_the_schema_and_licence_and_its_install_validates_practices(
    tmp_path: Path,
) -> None:
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "-w", str(wheels), "--no-deps", "-q"],
        ROOT,
    )
    (wheel,) = wheels.glob("pmsctl-*.whl")
    assert wheel.name.startswith(f"pmsctl-{reconciler.__version__}-")

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert SCHEMA_IN_WHEEL in names
        # The packaged schema is the one in schemas/, byte for byte.
        schema = ROOT / "schemas" / "practicewriteback.v1alpha1.schema.json"
        assert zf.read(SCHEMA_IN_WHEEL) == schema.read_bytes()
        info = f"pmsctl-{reconciler.__version__}.dist-info"
        assert f"{info}/licenses/LICENSE" in names
        metadata = zf.read(f"{info}/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert f"Version: {reconciler.__version__}" in metadata

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (purelib / "borrowed-dependencies.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n", encoding="utf-8"
    )
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        tmp_path,
    )

    where = _run([str(python), "-c", "import reconciler; print(reconciler.__file__)"], tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(purelib)

    out = _run([str(venv / "bin" / "pmsctl"), "validate", str(ROOT / "practices")], tmp_path)
    assert "all valid" in out.stdout

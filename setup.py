"""Build step that copies the run-time files (pds_lightning/resources.py: SHIPPED) into the wheel.

They live once, at the top of the source tree; the wheel gets them under pds_lightning/_shipped/, where
pds_lightning.resources finds them with importlib.resources. Editable installs read the source tree instead.
"""

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _resources():
    spec = importlib.util.spec_from_file_location("_pds_resources", ROOT / "pds_lightning" / "resources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class build_py_with_resources(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the source tree
        resources = _resources()
        for kind, (folder, _) in resources.SHIPPED.items():
            source = ROOT / folder
            target = Path(self.build_lib) / "pds_lightning" / resources.SHIPPED_PACKAGE_DIR / kind
            files = resources.shipped_files(source, kind)
            if not files:
                raise RuntimeError(f"no {kind} files to ship under {source}; the wheel would be incomplete")
            for path in files:
                dest = target / path.relative_to(source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)


setup(cmdclass={"build_py": build_py_with_resources})

"""The one thing pyproject.toml cannot say: ship the repo's containers/ (the
image build contexts) inside the wheel as the package directory
harness/_containers, next to the code that builds them."""

import os

from setuptools import find_packages, setup

_CONTEXTS = [os.path.relpath(os.path.join(root, name), "containers")
             for root, _dirs, names in os.walk("containers") for name in names
             if not name.endswith((".tar", ".tmp"))]

setup(
    packages=find_packages(include=["harness*"]) + ["harness._containers"],
    package_dir={"harness._containers": "containers"},
    package_data={"harness._containers": _CONTEXTS},
)

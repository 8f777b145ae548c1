"""lvmass: left-ventricular mass from UK Biobank short-axis cine CMR (Khurshid et al. 2021), at scale."""

from setuptools import find_packages, setup

# Direct dependencies. Exact versions that resolve together are pinned in constraints.txt
# (see the Makefile); the ranges here are what the code is written against.
INSTALL_REQUIRES = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow==2.21.0",
    "tensorboard==2.21.*",  # TF 2.21 no longer pulls it in; Keras' TensorBoard callback needs it
    "protobuf>=6.33,<7",
    "numpy>=2.0,<2.5",
    "pyarrow>=20,<26",
    "pandas>=2.2,<2.4",
    "scipy>=1.13",
    "pydicom>=3.0,<4",
    "nibabel>=5.3,<6",  # NIfTI inputs and the NIfTI labels of --save_labels (lvmass/core/nifti.py)
    "statsmodels>=0.14",
    "matplotlib>=3.9",
    "pillow>=10",  # the QC gallery draws its pictures with it (matplotlib needs it too)
    "duckdb>=1.1",
    "google-cloud-storage>=2.18",
    "tqdm>=4.66",
]

TEST_REQUIRES = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    "ruff>=0.6",
    "gcp-storage-emulator>=2024.8.3",
    "pydicom-data>=1.0",
    "python-hcl2>=8.1,<9",  # tests/test_terraform.py parses terraform/*.tf (checkov has its own virtualenv)
    "hypothesis>=6.100",  # tests/test_fuzz.py: DICOM bytes and zip structure
    "mypy>=2.4,<3",  # `make typecheck`: the domain package (lvmass/core), [tool.mypy] in pyproject.toml
    "import-linter>=2.1",  # `make imports`: the layers of docs/architecture.md, [tool.importlinter]
]

setup(
    name="lvmass",
    version="0.2.0",
    description=__doc__,
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["lvmass", "lvmass.*", "beam_pipeline", "beam_pipeline.*",
                                    "trainer", "trainer.*", "analysis", "analysis.*"]),
    include_package_data=True,
    package_data={"beam_pipeline": ["models/*.md", "models/*/*", "models/*/*/*", "models/*/*/*/*"],
                  "lvmass.storage": ["sql/*.sql", "sql/bigquery/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={"console_scripts": ["lvmass = lvmass.cli:main"]},
)

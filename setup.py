from setuptools import find_packages, setup

setup(
    name="cifar-runner",
    version="0.1.0",
    description="A plugin-based experiment runner for deep-learning studies on CIFAR-10",
    # The built-in plugins keep their top-level plugins/ folder in the repository but install as
    # runner.plugins: a top-level `plugins` package in site-packages would clash with other projects'.
    packages=[*find_packages(include=["runner", "runner.*"]), "runner.plugins"],
    package_dir={"runner.plugins": "plugins"},
    python_requires=">=3.11",
    install_requires=[
        # A range 2.13.0 satisfies: constraints.txt pins the exact build (see README).
        "torch>=2.2",
        "pytorch-ignite>=0.5.5",  # resume passes max_iters to Engine.load_state_dict, new in 0.5.5
        "torchmetrics>=1.0",
        "matplotlib>=3.7",
        "pluggy>=1.3",
        "tomli-w>=1.0",
        "visdom>=0.2.4",
        "typst>=0.13",  # runner report's PDF: a Typst compiler inside the wheel, no system packages
        # Imported directly too, so declared although the packages above bring them.
        "numpy>=1.24",
        "requests>=2.28",
        "tornado>=6.2",
        "tqdm>=4.66",  # the progress bar
        "shtab>=1.7",  # runner completion SHELL
    ],
    # With the tests: the linter and type checker CI runs (.ci/run; settings in pyproject.toml), and a
    # setuptools that builds wheels itself (tests/test_packaging.py builds one).
    extras_require={"test": ["pytest>=8", "hypothesis>=6", "pypdf>=4", "optuna>=4", "ruff>=0.6", "mypy>=1.10",
                             "types-requests", "types-tqdm", "setuptools>=70.1"],
                    # runner SUITE --executor dask: the suite on a Dask cluster
                    "dask": ["dask[distributed]>=2024.1"],
                    # the tensorboard and mlflow plugins (docs/trackers.md)
                    "tensorboard": ["tensorboard>=2.14"],
                    "mlflow": ["mlflow>=2.10"],
                    # runner SPEC --search: Optuna studies (docs/search.md)
                    "search": ["optuna>=4"]},
    entry_points={"console_scripts": ["runner=runner.cli:main"],
                  # runner.testing's fixtures (synthetic_cifar, run_spec, run_plugin) in every pytest run; not
                  # named "runner": pytest has a plugin of that name (_pytest.runner)
                  "pytest11": ["runner_testing = runner.testing"]},
)

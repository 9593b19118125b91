"""The software stack lmft runs on: the installed versions of the libraries whose behaviour it depends on.

Preprocessing records them in each output's ``metadata.json``; ``python -m lmft_core.stack`` prints them
(``.ci/run`` does, before the tests, so a red run says which stack it ran on). The ranges the test suite
passes with are declared in ``pyproject.toml``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# import name -> distribution name, in the order they are printed
PACKAGES = ("lmft", "torch", "torchvision", "ray", "mlflow", "open_clip_torch", "decord", "av", "pyarrow",
            "numpy", "pillow", "transformers")


def library_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each distribution, or ``"not installed"``."""
    out = {}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def main() -> None:
    print("stack: " + ", ".join(f"{pkg} {v}" for pkg, v in library_versions().items()), flush=True)


if __name__ == "__main__":
    main()

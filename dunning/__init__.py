"""The dunning engine's domain package: policy engine, models, data tables, store, API and CLI."""

from pathlib import Path


def refuse_stale_builds(package: Path) -> None:
    """`make install` compiles the engine's hot path with mypyc into extension modules beside
    their sources, and Python imports those first: one older than its source would silently run
    the old code."""
    for build in package.glob("*.so"):
        source = build.with_name(build.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > build.stat().st_mtime:
            raise ImportError(
                f"{source} changed after it was compiled into {build.name}: run `make install` to "
                f"compile it again, or delete {build} to run the source"
            )


refuse_stale_builds(Path(__file__).parent)

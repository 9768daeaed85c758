"""MkDocs hook: publish the benchmark figures under results/ in the site, read from benchmarks/results/.

The figures have one home, where the benchmark scripts write them; pages link `results/<path>.png` (e.g.
`results/grids/demo_pds_a5_0040.png`), and the strict build fails on a link to a figure that is not there.
"""

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def on_files(files, config):
    for path in sorted(RESULTS.rglob("*.png")):
        files.append(File.generated(config, f"results/{path.relative_to(RESULTS).as_posix()}",
                                    abs_src_path=str(path)))
    return files

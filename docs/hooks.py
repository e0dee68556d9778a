"""MkDocs hooks: the README is the site's home page and the committed benchmark results (``benchmarks/results/``)
its ``results/`` pages; links written to work when browsing the repository are pointed at them."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = "../benchmarks/results/"


def on_files(files, config):
    repo = Path(config.config_file_path).parent
    files.append(File("README.md", str(repo), config.site_dir, config.use_directory_urls, dest_uri="index.html"))
    root = repo / "benchmarks"
    for path in sorted((root / "results").iterdir()):
        if path.suffix in (".md", ".png"):
            files.append(File(f"results/{path.name}", str(root), config.site_dir, config.use_directory_urls))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "README.md":
        return markdown.replace("](docs/)", "](#documentation)").replace("](docs/", "](")
    return markdown.replace(RESULTS, "results/")

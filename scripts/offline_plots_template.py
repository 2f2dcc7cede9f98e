"""Write .dvc/plots/offline.html: DVC's plots page with Vega inlined, so `dvc plots show` opens
complete without network (DVC's own page loads vega, vega-lite and vega-embed from a CDN).

The three libraries are the versions DVC's renderer names (dvc_render's VegaRenderer.SCRIPTS),
their minified builds taken from the npm registry's release tarballs, each with its license.
The page keeps DVC's placeholders ({refresh_tag}, {plot_divs}) and drops {scripts}, where DVC
would put the CDN tags; it says its charset, as inlined scripts need (DVC's page does not). .dvc/config points `plots.html_template` at it.

    python scripts/offline_plots_template.py [--out .dvc/plots/offline.html]
"""

from __future__ import annotations

import argparse
import io
import re
import tarfile
import urllib.request
from pathlib import Path

from dvc_render.vega import VegaRenderer

REGISTRY = "https://registry.npmjs.org"
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def cdn_packages() -> list[tuple[str, str]]:
    """(name, version) of every library DVC's page loads, in its order."""
    return re.findall(r"cdn\.jsdelivr\.net/npm/([\w-]+)@([\d.]+)", VegaRenderer.SCRIPTS)


def package_files(name: str, version: str) -> tuple[str, str]:
    """(build/<name>.min.js, LICENSE) of an npm release."""
    url = f"{REGISTRY}/{name}/-/{name}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as response:
        archive = tarfile.open(fileobj=io.BytesIO(response.read()), mode="r:gz")
    read = lambda member: archive.extractfile(f"package/{member}").read().decode()  # noqa: E731
    return read(f"build/{name}.min.js"), read("LICENSE")


def page(packages: list[tuple[str, str]]) -> str:
    scripts = []
    for name, version in packages:
        code, license_text = package_files(name, version)
        if "</script" in code:
            raise ValueError(f"{name} {version} contains '</script': it cannot be inlined as is")
        comment = license_text.replace("*/", "* /")
        scripts.append(f"    <!-- {name} {version}, from {REGISTRY} -->\n"
                       f"    <script>/*\n{comment}*/\n{code}</script>")
    return PAGE.format(scripts="\n".join(scripts))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".dvc/plots/offline.html"))
    args = parser.parse_args(argv)
    packages = cdn_packages()
    args.out.write_text(page(packages))
    print(f"wrote {args.out}: {', '.join(f'{n} {v}' for n, v in packages)}")


if __name__ == "__main__":
    main()

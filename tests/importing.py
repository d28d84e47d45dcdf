"""Helpers of the `sockd import` tests: convert a file, read the output back, check it."""

from __future__ import annotations

import re
import shutil
import tomllib
from pathlib import Path
from typing import Any

from sockd.supervisor import config as sockd_config
from sockd.supervisor import importer, inetdconf, xinetdconf

DATA = Path(__file__).parent / "data" / "debian"
_KEY = re.compile(r"# ([a-z_]+ = .*|\[\[service\]\])")


def inetd(path: Path, text: str | None = None) -> importer.Result:
    """Convert the inetd.conf at `path` (written with `text` first, if given)."""
    if text is not None:
        path.write_text(text)
    return importer.convert(inetdconf.read(str(path)), str(path))


def xinetd(path: Path, text: str | None = None) -> importer.Result:
    """Convert the xinetd.conf at `path` (written with `text` first, if given)."""
    if text is not None:
        path.write_text(text)
    return importer.convert(xinetdconf.read(str(path)), str(path))


def debian_xinetd(tmp_path: Path) -> Path:
    """Copy Debian's xinetd.conf and xinetd.d under `tmp_path`; its includedir names the copy."""
    shutil.copytree(DATA / "xinetd", tmp_path / "etc")
    conf = tmp_path / "etc" / "xinetd.conf"
    text = conf.read_text().replace(
        "includedir /etc/xinetd.d", f"includedir {conf.parent}/xinetd.d"
    )
    conf.write_text(text)
    return conf


def served(result: importer.Result) -> list[dict[str, Any]]:
    """Return the `[[service]]` tables of the output (those not commented out)."""
    services: list[dict[str, Any]] = tomllib.loads(result.text).get("service", [])
    return services


def commented(result: importer.Result) -> list[dict[str, Any]]:
    """Return the services kept as comments, uncommented."""
    lines = [line[2:] for line in result.text.splitlines() if _KEY.fullmatch(line)]
    services: list[dict[str, Any]] = tomllib.loads("\n".join(lines)).get("service", [])
    return services


def check(tmp_path: Path, result: importer.Result) -> sockd_config.Config:
    """Load the output as `sockd check` does (raises ConfigError if it would fail)."""
    path = tmp_path / "sockd.toml"
    path.write_text(result.text)
    return sockd_config.load(str(path))

"""The Python environment the daemon runs in: is it a virtual environment, and can it see the packages apt
installs (`/usr/lib/python3/dist-packages`)? picamera2 and libcamera's Python bindings exist only as
Raspberry Pi OS packages, so a camera service needs a venv made with `--system-site-packages` (or one whose
`pyvenv.cfg` says `include-system-site-packages = true`: the same thing, switched on afterwards)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

APT_SITE = Path("/usr/lib/python3/dist-packages")
_SETTING = re.compile(r"^(\s*include-system-site-packages\s*=\s*)(\S+)\s*$", re.MULTILINE)


def venv_config(prefix: str | None = None) -> Path | None:
    """The `pyvenv.cfg` of this interpreter's virtual environment, or None outside one."""
    if prefix is None and sys.prefix == sys.base_prefix:
        return None
    cfg = Path(prefix or sys.prefix) / "pyvenv.cfg"
    return cfg if cfg.is_file() else None


def sees_system_site(cfg: Path | None) -> bool:
    """True outside a venv, or in one made with `--system-site-packages`."""
    if cfg is None:
        return True
    match = _SETTING.search(cfg.read_text(encoding="utf-8", errors="replace"))
    return match is not None and match.group(2).lower() == "true"


def let_see_system_site(cfg: Path) -> None:
    """Switch a venv to see apt's packages (its own packages still come first), as `--system-site-packages`
    would have made it. The file is replaced atomically."""
    text = cfg.read_text(encoding="utf-8")
    text = _SETTING.sub(r"\g<1>true", text) if _SETTING.search(text) else \
        text.rstrip("\n") + "\ninclude-system-site-packages = true\n"
    tmp = cfg.with_name(cfg.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(cfg)


def apt_python_tag(site: Path = APT_SITE) -> str | None:
    """The CPython version apt's compiled packages are built for (e.g. "311", from libcamera's binding), or
    None when there is none to read."""
    for so in sorted(site.glob("libcamera/_libcamera.cpython-*.so")):
        match = re.match(r"_libcamera\.cpython-(\d+)", so.name)
        if match:
            return match.group(1)
    return None

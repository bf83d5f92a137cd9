"""The node's meta-backend capability, decided as LocalAI decides it, without external tools.

Order: ``LOCALAI_FORCE_META_BACKEND_CAPABILITY`` (LocalAI's variable), then the capability
file ``/run/localai/capability`` (LocalAI's path), then detection from what the kernel shows
(``--capability`` on the agent's command line overrides all three):

* macOS: ``metal`` on Apple Silicon, ``darwin-x86`` on Intel;
* NVIDIA (``/proc/driver/nvidia/version`` or a DRM device with vendor ``0x10de``):
  ``nvidia-l4t`` on ARM64, else ``nvidia-cuda-13``/``nvidia-cuda-12`` when that CUDA directory
  exists under ``/usr/local``, else ``nvidia``;
* AMD (vendor ``0x1002``): ``amd``; Intel (vendor ``0x8086``): ``intel``; for both a known
  VRAM size (``mem_info_vram_total``) of 4 GiB or less means ``default``, and an Intel GPU
  without one (integrated graphics) is ``default`` too;
* nothing: ``default``.

A meta entry then picks its ``capabilities`` key, falling back to ``default`` and ``cpu``
(:func:`protocol.gallery.concrete_for_capability`). Running ``nvidia-smi`` or similar is
deliberately avoided: it may be missing, slow, or hang on a broken driver.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

FORCE_ENV = "LOCALAI_FORCE_META_BACKEND_CAPABILITY"
CAPABILITY_FILE = Path("/run/localai/capability")
DEFAULT = "default"
MIN_VRAM = 4 * 1024**3
_VENDORS = {"0x10de": "nvidia", "0x1002": "amd", "0x8086": "intel"}
_MAX_TEXT = 256


def _read(path: Path) -> str:
    try:
        with path.open("r", errors="replace") as handle:
            return handle.read(_MAX_TEXT).strip()
    except OSError:
        return ""


def _gpus(root: Path) -> dict[str, int | None]:
    """Vendor → largest known VRAM in bytes (None: a device of that vendor, size unknown)."""
    found: dict[str, int | None] = {}
    drm = root / "sys/class/drm"
    try:
        cards = sorted(p for p in drm.iterdir() if p.name.startswith("card") and "-" not in p.name)
    except OSError:
        cards = []
    for card in cards:
        vendor = _VENDORS.get(_read(card / "device/vendor").lower())
        if vendor is None:
            continue
        vram_text = _read(card / "device/mem_info_vram_total")
        vram = int(vram_text) if vram_text.isdigit() else None
        previous = found.get(vendor)
        found[vendor] = (
            max(v for v in (previous, vram) if v is not None)
            if (previous is not None or vram is not None)
            else None
        )
    if (root / "proc/driver/nvidia/version").exists():
        found.setdefault("nvidia", None)
    return found


def detect_hardware(
    root: Path = Path("/"), machine: str | None = None, system: str | None = None
) -> str:
    """The capability this machine's hardware gives (no overrides). ``root`` is for tests."""
    machine = (machine or platform.machine()).lower()
    system = system or platform.system()
    arm = machine in ("aarch64", "arm64")
    if system == "Darwin":
        return "metal" if arm else "darwin-x86"
    gpus = _gpus(root)
    if "nvidia" in gpus:
        vram = gpus["nvidia"]
        if vram is not None and vram <= MIN_VRAM:
            return DEFAULT
        if arm:
            return "nvidia-l4t"
        for major in ("13", "12"):
            if (root / f"usr/local/cuda-{major}").is_dir():
                return f"nvidia-cuda-{major}"
        return "nvidia"
    for vendor in ("amd", "intel"):
        if vendor in gpus:
            vram = gpus[vendor]
            if vram is None and vendor == "intel":
                return DEFAULT
            if vram is not None and vram <= MIN_VRAM:
                return DEFAULT
            return vendor
    return DEFAULT


def detect(root: Path = Path("/"), environ: dict[str, str] | None = None) -> str:
    """The capability: forced by the environment, else the capability file, else hardware."""
    env = os.environ if environ is None else environ
    forced = env.get(FORCE_ENV, "").strip()
    if forced:
        return forced
    written = _read(root / str(CAPABILITY_FILE).lstrip("/"))
    return written or detect_hardware(root)

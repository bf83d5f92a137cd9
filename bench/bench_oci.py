"""Benchmark 7: pull + verify + extract of a multi-layer image from a local registry.

The agent's pull (:func:`node_agent.oci.pull`, in a child process so its RSS is its own)
against the usual tools on the same image in the same run: ``skopeo copy`` to a ``dir:``
(which verifies digests) followed by ``tar -xzf`` of each layer in order. Both read from the
same Debian ``docker-registry`` on loopback; the order alternates each round. Targets: the
pull takes <= 1.0x the baseline's time, and grows the pulling process's RSS by < 100 MB.
Full: ~1 GiB in 4 layers, 1 round; quick: 64 MiB in 4 layers, 2 rounds.
Run: ``python -m bench.bench_oci [--quick]`` (needs ``docker-registry``; ``skopeo`` for the
baseline — ``apt-get install docker-registry skopeo``).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cli import main
from bench.report import Report, median
from durable_installs.devstack.registry import Image, Pusher, files_layer
from durable_installs.servers import registry_binary, registry_server

NAME = "oci"
MIB = 1024 * 1024
CHILD = """
import json, sys, time
from pathlib import Path
from durable_installs.node_agent import oci
from durable_installs.node_agent.blocking import Abort
def status_kb(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0
ref, staging, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
before = status_kb("VmRSS")
began = time.perf_counter()
options = oci.PullOptions(1 << 40, 1 << 40, 120.0)
digest = oci.pull(ref, staging, work, options, lambda _: None, Abort())
elapsed = time.perf_counter() - began
peak = status_kb("VmHWM")  # this process's peak RSS (ru_maxrss would include the parent's)
print(json.dumps({"seconds": elapsed, "rss_growth_kb": peak - before, "digest": digest}))
"""


def build_image(total: int, layers: int) -> Image:
    """``layers`` layers of ~``total/layers`` bytes each: half random, half repetitive text,
    like binaries and data files that compress about 2:1."""
    rng = random.Random(7)
    per_layer = total // layers
    built = []
    for index in range(layers):
        random_part = rng.randbytes(per_layer // 2)
        text_part = (b"backend runtime data %d\n" % index) * (per_layer // 2 // 24)
        built.append(
            files_layer(
                {
                    f"lib/part{index}.so": (random_part, 0o755),
                    f"share/data{index}.txt": (text_part, 0o644),
                }
            )
        )
    built.append(files_layer({"run.sh": (b"#!/bin/sh\nexec true\n", 0o755)}))
    return Image(layers=built)


def ours(ref: str, scratch: Path) -> dict[str, float]:
    staging, work = scratch / "ours", scratch / "ours-work"
    staging.mkdir()
    began = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, ref, str(staging), str(work)],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - began
    result = json.loads(out.stdout.strip().splitlines()[-1])
    shutil.rmtree(staging)
    # the agent is long-running: interpreter start-up is not part of a pull
    return {
        "seconds": result["seconds"],
        "process_seconds": wall,
        "rss_growth_mb": result["rss_growth_kb"] / 1024,
    }


def baseline(ref: str, scratch: Path) -> float:
    blobs, out = scratch / "skopeo", scratch / "tar"
    out.mkdir()
    began = time.perf_counter()
    subprocess.run(
        ["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"dir:{blobs}"],
        check=True,
        capture_output=True,
    )
    manifest = json.loads((blobs / "manifest.json").read_text())
    for layer in manifest["layers"]:
        blob = blobs / layer["digest"].split(":", 1)[1]
        subprocess.run(["tar", "-xzf", str(blob), "-C", str(out)], check=True)
    elapsed = time.perf_counter() - began
    shutil.rmtree(blobs)
    shutil.rmtree(out)
    return elapsed


async def run(quick: bool) -> Report:
    report = Report(NAME, quick)
    if registry_binary() is None:
        report.notes.append("docker-registry not installed (apt-get install docker-registry)")
        return report
    total = 64 * MIB if quick else 1024 * MIB
    rounds = 2 if quick else 1
    with tempfile.TemporaryDirectory(prefix="bench-oci-") as tmp:
        root = Path(tmp)
        image = await asyncio.to_thread(build_image, total, 4)
        compressed = sum(len(layer.data) for layer in image.layers)
        with registry_server(root / "registry") as registry:
            pusher = Pusher(registry.url)
            await asyncio.to_thread(pusher.image, "bench/image", "v1", image)
            pusher.close()
            del image
            ref = f"{registry.host}/bench/image:v1"
            have_skopeo = shutil.which("skopeo") is not None
            times, rss, base = [], [], []
            for round_index in range(rounds):
                scratch = root / f"round{round_index}"
                scratch.mkdir()
                first_ours = round_index % 2 == 0 or not have_skopeo
                if not first_ours:
                    base.append(await asyncio.to_thread(baseline, ref, scratch))
                result = await asyncio.to_thread(ours, ref, scratch)
                times.append(result["seconds"])
                rss.append(result["rss_growth_mb"])
                if first_ours and have_skopeo:
                    base.append(await asyncio.to_thread(baseline, ref, scratch))
    report.row("image", uncompressed_mib=total / MIB, compressed_mib=compressed / MIB, layers=5)
    report.row("node agent pull", median_s=median(times), rss_growth_mb=max(rss))
    if base:
        report.row("skopeo copy + tar", median_s=median(base))
        report.check("pull time / skopeo+tar", median(times) / median(base), 1.0, "<=")
    else:
        report.notes.append("skopeo not installed: no baseline (apt-get install skopeo)")
    report.check("RSS growth during the pull", max(rss), 100, "<=", " MB")
    return report


if __name__ == "__main__":
    main(run)

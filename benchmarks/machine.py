"""What the numbers were measured on."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from coordinator import __version__


def describe() -> list[tuple[str, str]]:
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = "unknown"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        ("date", time.strftime("%Y-%m-%d %H:%M %Z")),
        ("cpu", f"{os.cpu_count()} x {model}"),
        ("memory", memory),
        ("kernel", platform.release()),
        ("python", platform.python_version()),
        ("coordinator", __version__),
        ("load average at start", load),
    ]

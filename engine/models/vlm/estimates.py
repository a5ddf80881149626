"""How long a captioner takes on this computer: seconds per photo and minutes per concept.

Before a captioner's first use the numbers are the benchmark's (cpu_times.py: bench/bench_captioners.py at the real
sizes on a 2-core VM), labelled as such: a quick speed probe of this CPU against the benchmark's proved unreliable
(the benchmark's VM changed hosts between sessions, and on a shared machine the probe varied 1.5x run to run).
After real use (a caption batch, a training run) the time measured here is remembered, per VLM and device, in a
small JSON file in the app's data folder, and shown instead, labelled "measured here". It is a running average, so a
first slow call (weights paged in) fades.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.models.vlm.cpu_times import MEASURED, concept_seconds

log = logging.getLogger(__name__)

ENV_TIMINGS = "MYVLM_TIMINGS"   # another file for the remembered timings (tests, portable installs)
CONCEPT_STEPS = 100             # a concept's training steps (TrainingConfig's default), for "minutes per concept"
WEIGHT = 4                      # running average: the remembered value weighs as at most 4 measurements
BENCH_LABEL = "measured on the benchmark's 2-core CPU"
HERE_LABEL = "measured here"

_LOCK = threading.Lock()


def timings_path() -> Path:
    env = os.environ.get(ENV_TIMINGS)
    if env:
        return Path(env).expanduser()
    import platformdirs

    from engine.storage.library_folder import APP_SLUG

    return Path(platformdirs.user_data_dir(APP_SLUG, appauthor=False)) / "timings.json"


class TimingMemory:
    """{"<vlm>|<device key>": {"caption_s": {"value": s, "n": count}, "step_s": ..., "concept_s": ...}}"""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else timings_path()

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):   # never measured, or a damaged file: the benchmark's numbers stand
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, vlm: str, device_key: str) -> dict[str, float]:
        """The remembered seconds of one VLM on one device: {"caption_s": ..., "step_s": ..., "concept_s": ...}."""
        entry = self.load().get(f"{vlm}|{device_key}")
        if not isinstance(entry, dict):
            return {}
        out = {}
        for kind, v in entry.items():
            if isinstance(v, dict) and isinstance(v.get("value"), (int, float)) and v["value"] > 0:
                out[kind] = float(v["value"])
        return out

    def record(self, vlm: str, device_key: str, kind: str, seconds: float, count: int = 1) -> None:
        """Fold a measurement (seconds per unit over `count` units) into the running average."""
        if not seconds > 0 or count < 1:
            return
        with _LOCK:
            data = self.load()
            entry = data.setdefault(f"{vlm}|{device_key}", {})
            old = entry.get(kind) if isinstance(entry.get(kind), dict) else None
            if old and isinstance(old.get("value"), (int, float)):
                n = int(old.get("n", 1))
                w = min(n, WEIGHT)
                value = (old["value"] * w + seconds * min(count, WEIGHT)) / (w + min(count, WEIGHT))
                entry[kind] = {"value": round(value, 4), "n": n + count}
            else:
                entry[kind] = {"value": round(seconds, 4), "n": count}
            entry["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
                os.replace(tmp, self.path)
            except OSError as exc:   # a read-only data folder: the estimate stays the benchmark's
                log.warning("could not remember the timing in %s: %s", self.path, exc)


@dataclass(frozen=True)
class Estimate:
    vlm: str
    photo_s: float | None        # seconds per caption (batch 1)
    concept_s: float | None      # seconds to teach one concept (100 steps)
    peak_gb: float | None        # peak RAM on the CPU (the benchmark's)
    photo_source: str = ""       # HERE_LABEL | BENCH_LABEL | "" (not known yet)
    concept_source: str = ""

    @property
    def measured_here(self) -> bool:
        return HERE_LABEL in (self.photo_source, self.concept_source)

    def text(self) -> str:
        """'2 s/photo · 2 min/concept', or 'measured on first use'."""
        parts = []
        if self.photo_s is not None:
            parts.append(f"{seconds_text(self.photo_s)}/photo")
        if self.concept_s is not None:
            parts.append(f"{minutes_text(self.concept_s)}/concept")
        return " · ".join(parts) if parts else "measured on first use"

    def detail(self) -> str:
        """Where the numbers come from, for a tooltip or the CLI."""
        if self.photo_s is None and self.concept_s is None:
            return "not measured on this kind of device yet: the first caption batch or training run measures it"
        out = []
        if self.photo_s is not None:
            out.append(f"about {seconds_text(self.photo_s)} per photo ({self.photo_source})")
        if self.concept_s is not None:
            out.append(f"about {minutes_text(self.concept_s)} to teach a concept ({self.concept_source})")
        if self.peak_gb is not None and not self.measured_here:
            out.append(f"peak memory {self.peak_gb:.1f} GB")
        return "; ".join(out)

    def as_dict(self) -> dict[str, Any]:
        return {"vlm": self.vlm, "photo_s": self.photo_s, "concept_s": self.concept_s, "peak_gb": self.peak_gb,
                "photo_source": self.photo_source, "concept_source": self.concept_source, "text": self.text()}


def seconds_text(s: float) -> str:
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min"


def minutes_text(s: float) -> str:
    if s < 90:
        return f"{max(1, round(s / 10) * 10):.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def estimate(vlm: str, device: str, device_key: str, memory: TimingMemory | None = None) -> Estimate:
    """What one VLM costs on `device` ("cpu", "cuda", "mps"): measured here when it ran here, else the benchmark's
    CPU numbers (on a CPU only: the GPU's are measured on first use)."""
    here = (memory or TimingMemory()).get(vlm, device_key)
    bench = MEASURED.get(vlm) if device == "cpu" else None
    photo, photo_src = here.get("caption_s"), HERE_LABEL
    if photo is None and bench:
        photo, photo_src = bench.get("caption_b1_s"), BENCH_LABEL
    concept, concept_src = here.get("concept_s"), HERE_LABEL
    if concept is None and bench:
        concept, concept_src = concept_seconds(vlm), BENCH_LABEL
    return Estimate(vlm, photo, concept, bench.get("peak_rss_gb") if bench else None,
                    photo_src if photo is not None else "", concept_src if concept is not None else "")


def estimates(vlms: list[str], hw: Any = None, memory: TimingMemory | None = None) -> dict[str, Estimate]:
    """Every VLM's estimate on the device a model would load on here (engine.models.hardware.detect())."""
    if hw is None:
        from engine.models.hardware import detect

        hw = detect()
    memory = memory or TimingMemory()
    device = hw.device()
    return {v: estimate(v, device, hw.device_key(device), memory) for v in vlms}


# -- measuring real use -------------------------------------------------------------------------------------------

def device_key(device: Any) -> str:
    """The timing key of a torch device on this computer."""
    from engine.models.hardware import detect

    return detect().device_key(getattr(device, "type", str(device)))


def record_captions(vlm: str, device: Any, seconds: float, photos: int, memory: TimingMemory | None = None) -> None:
    """A caption (or answer) batch ran: remember its seconds per photo."""
    if photos > 0:
        (memory or TimingMemory()).record(vlm, device_key(device), "caption_s", seconds / photos, photos)


class TrainingClock:
    """Watches a training run's progress reports and, when it ends, remembers this computer's seconds per step and
    for a whole concept (what came before the steps, e.g. the feature pool and loading, plus 100 steps)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first: Any = None
        self.last: Any = None

    def __call__(self, p: Any) -> None:
        if self.first is None:
            self.first = p
        self.last = p

    def step_seconds(self) -> float | None:
        if self.first is None or self.last is None or self.last.step <= self.first.step:
            return None
        return (self.last.elapsed_s - self.first.elapsed_s) / (self.last.step - self.first.step)

    def finish(self, vlm: str, device: Any, memory: TimingMemory | None = None) -> float | None:
        """Remember the run's timings; returns the seconds a whole concept takes here (None: too short to tell)."""
        step = self.step_seconds()
        if step is None:
            return None
        steps_run = self.last.step - self.first.step + 1
        before_steps = max(0.0, time.perf_counter() - self.started - step * steps_run)
        concept = before_steps + step * CONCEPT_STEPS
        memory = memory or TimingMemory()
        key = device_key(device)
        memory.record(vlm, key, "step_s", step, steps_run)
        memory.record(vlm, key, "concept_s", concept)
        return concept

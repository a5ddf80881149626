"""What this computer has (GPUs and their memory, Apple's GPU, CPU cores, RAM, fast bf16) and what follows from it:
the captioner that fits (`recommend_captioner`) and how a model is placed when it loads (`plan_placement`).

The decisions are pure functions over a `Hardware` value, so tests can describe any machine; `detect()` fills one in
for this computer. It stays cheap where there is no NVIDIA/AMD driver (the common laptop): torch is imported only
to ask a GPU that is plausibly there, so `myvlm status` does not pay for it.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from engine import settings

if TYPE_CHECKING:
    from engine.storage.catalog import Catalog

GIB = 1024**3
SLACK = 1.15            # weights plus activations and the allocator's slack (the memory check's factor)
GPU_RESERVE_GB = 1.0    # GPU memory left for activations and the CUDA context when a model is split
BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "4bit": 0.55}
# Fast bf16 matrix maths: AMX tiles or AVX512-BF16 on x86, the BF16 extension on ARM (Linux /proc/cpuinfo flags)
BF16_FLAGS = {"amx_bf16", "avx512_bf16", "bf16"}

# The captioner each kind of machine gets when the library has no VLM setting
GPU_LARGE, GPU_PAPER, SMALL_GPU, CPU_DEFAULT = "llava", "blip2", "smolvlm-500m", "smolvlm-256m"


@dataclass(frozen=True)
class Gpu:
    name: str
    total_gb: float
    free_gb: float
    bf16: bool = True
    index: int = 0


@dataclass(frozen=True)
class Hardware:
    """One computer, as far as loading a model is concerned."""

    system: str = "Linux"            # platform.system()
    machine: str = "x86_64"          # platform.machine()
    cpu_name: str = ""
    physical_cores: int = 2
    logical_cores: int = 2
    ram_gb: float = 8.0
    available_gb: float = 6.0
    cpu_bf16: bool = False           # the CPU does bf16 matrix maths fast (AMX / AVX512-BF16, ARM BF16: Apple M2 on)
    gpus: tuple[Gpu, ...] = ()       # CUDA (or ROCm) devices torch can use
    mps: bool = False                # Apple's GPU through Metal
    notes: tuple[str, ...] = field(default=())

    @property
    def gpu(self) -> Gpu | None:
        """The CUDA device a model goes to: the one with the most memory."""
        return max(self.gpus, key=lambda g: g.total_gb) if self.gpus else None

    @property
    def apple_silicon(self) -> bool:
        return self.system == "Darwin" and self.machine == "arm64"

    def device(self) -> str:
        """Where a model runs by default: "cuda", "mps" or "cpu" (vlm.pick_device's order)."""
        return "cuda" if self.gpus else "mps" if self.mps else "cpu"

    def device_key(self, device: str | None = None) -> str:
        """Names the device timings belong to: the same model runs at another speed elsewhere."""
        dev = device or self.device()
        if dev.startswith("cuda") and self.gpu:
            return f"cuda:{self.gpu.name}"
        if dev == "mps":
            return f"mps:{self.cpu_name or self.machine}"
        return f"cpu:{self.cpu_name or self.machine}:{self.physical_cores}"

    def describe(self) -> str:
        """One line for people: 'NVIDIA RTX 4060 (8.0 GB); 8-core CPU (bf16), 32 GB RAM'."""
        parts = [f"{g.name} ({g.total_gb:.1f} GB, {g.free_gb:.1f} free)" for g in self.gpus]
        if self.mps:
            parts.append("Apple GPU (Metal, shares the RAM)")
        cpu = f"{self.physical_cores}-core CPU" + (f" {self.cpu_name}" if self.cpu_name else "")
        if self.logical_cores != self.physical_cores:
            cpu += f" ({self.logical_cores} threads)"
        cpu += ", fast bf16" if self.cpu_bf16 else ", no fast bf16"
        parts.append(f"{cpu}; {self.ram_gb:.0f} GB RAM ({self.available_gb:.1f} GB free)")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["gpus"] = [asdict(g) for g in self.gpus]
        out["notes"] = list(self.notes)
        return out


# -- detection --------------------------------------------------------------------------------------------------------

def cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo (Linux); empty elsewhere."""
    name, flags = "", set()
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not name:
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:   # x86, ARM
                    flags = set(value.split())
                if name and flags:
                    break
    except OSError:
        pass
    return name, flags


def _apple_bf16() -> bool:
    """Apple silicon from the M2 on has the ARM BF16 extension (the M1 does not)."""
    import subprocess

    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                             timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return out.strip() == "1"


def _gpu_driver_present() -> bool:
    """An NVIDIA or AMD GPU driver is installed: only then is torch asked (importing it takes seconds)."""
    if "torch" in sys.modules:
        return True
    if sys.platform.startswith("linux"):
        return os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/kfd")
    if sys.platform == "win32":
        return shutil.which("nvidia-smi") is not None
    return False


def _cuda_gpus() -> tuple[tuple[Gpu, ...], tuple[str, ...]]:
    if not _gpu_driver_present():
        return (), ()
    try:
        import torch

        if not torch.cuda.is_available():
            return (), ()
        out = []
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            props = torch.cuda.get_device_properties(i)
            out.append(Gpu(props.name, round(total / GIB, 1), round(free / GIB, 1),
                           bool(props.major >= 8), i))   # bf16 from Ampere (compute capability 8) on
        return tuple(out), ()
    except Exception as exc:  # noqa: BLE001 - a broken driver: the CPU still works
        return (), (f"the GPU could not be used: {exc}",)


def detect() -> Hardware:
    """This computer, looked at once per process (the GPU's free memory is as it was then)."""
    return _detect_cached()


@functools.lru_cache(maxsize=1)
def _detect_cached() -> Hardware:
    """(detect's work, once)"""
    import psutil

    system, machine = platform.system(), platform.machine()
    name, flags = cpuinfo()
    if not name:
        name = platform.processor() or machine
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    vm = psutil.virtual_memory()
    apple = system == "Darwin" and machine == "arm64"
    gpus, notes = _cuda_gpus()
    return Hardware(system=system, machine=machine, cpu_name=name, physical_cores=int(physical),
                    logical_cores=int(logical), ram_gb=round(vm.total / GIB, 1),
                    available_gb=round(vm.available / GIB, 1),
                    cpu_bf16=_apple_bf16() if apple else bool(flags & BF16_FLAGS),
                    gpus=gpus, mps=apple, notes=notes)


# -- what fits --------------------------------------------------------------------------------------------------------

def need_gb(params_b: float, dtype: str) -> float:
    """GiB a model of `params_b` billion parameters needs in `dtype` ("bf16", "fp32", "4bit"...)."""
    return params_b * 1e9 * BYTES[dtype] * SLACK / GIB


@dataclass(frozen=True)
class Recommendation:
    vlm: str       # a VLM key (engine.models.vlm.specs.VLM_SPECS)
    device: str    # "cuda" | "mps" | "cpu"
    reason: str


def recommend_captioner(hw: Hardware) -> Recommendation:
    """The captioner a new library uses on this machine: the largest that runs whole on its GPU, else the small
    ones that caption in seconds on a CPU (bench/bench_captioners.py: SmolVLM-256M 2 s a photo, 2 GB; BLIP-2
    50 s)."""
    from engine.models.vlm.specs import VLM_SPECS

    gpu = hw.gpu
    if gpu is not None:
        dt = "bf16" if gpu.bf16 else "fp16"
        for key in (GPU_LARGE, GPU_PAPER):
            need = need_gb(VLM_SPECS[key].params_b, dt)
            if need <= gpu.total_gb:
                what = ("captions and answers questions" if key == GPU_LARGE else "the paper's captioner")
                return Recommendation(key, "cuda", f"{gpu.name} has {gpu.total_gb:.1f} GB: {VLM_SPECS[key].title} "
                                                   f"({what}) needs about {need:.1f} GB in {dt} and runs whole on it")
        small = need_gb(VLM_SPECS[SMALL_GPU].params_b, dt)
        if small <= gpu.total_gb:
            blip = need_gb(VLM_SPECS[GPU_PAPER].params_b, dt)
            return Recommendation(SMALL_GPU, "cuda", f"{gpu.name} has {gpu.total_gb:.1f} GB, less than BLIP-2's "
                                                     f"{blip:.1f} GB: {VLM_SPECS[SMALL_GPU].title} runs whole on it")
    if hw.mps:
        need = need_gb(VLM_SPECS[GPU_PAPER].params_b, "fp16")
        if need <= hw.ram_gb / 2:
            return Recommendation(GPU_PAPER, "mps", f"Apple GPU with {hw.ram_gb:.0f} GB of shared memory: "
                                                    f"{VLM_SPECS[GPU_PAPER].title} needs about {need:.1f} GB in fp16")
        return Recommendation(SMALL_GPU, "mps", f"Apple GPU with {hw.ram_gb:.0f} GB of shared memory, too little "
                                                f"for BLIP-2 ({need:.1f} GB) beside the rest: "
                                                f"{VLM_SPECS[SMALL_GPU].title}")
    from engine.models.vlm.cpu_times import MEASURED

    m, blip = MEASURED.get(CPU_DEFAULT, {}), MEASURED.get(GPU_PAPER, {})
    reason = (f"no GPU the captioner can use: {VLM_SPECS[CPU_DEFAULT].title} is the fastest on a CPU "
              f"({m.get('caption_b1_s', 0):.1f} s a photo and {m.get('peak_rss_gb', 0):.1f} GB on the benchmark's "
              f"2-core CPU, where BLIP-2 takes {blip.get('caption_b1_s', 0):.0f} s)")
    if hw.ram_gb < 2 * m.get("peak_rss_gb", 2.0):
        reason += f"; with {hw.ram_gb:.0f} GB of RAM, close other programs while it captions"
    return Recommendation(CPU_DEFAULT, "cpu", reason)


@functools.lru_cache(maxsize=1)
def recommended_vlm() -> str:
    """The recommendation for this computer (detected once per process)."""
    return recommend_captioner(detect()).vlm


def resolve_vlm_name(catalog: Catalog, option: str | None = None) -> str:
    """The VLM this run uses: the front door's option, else the library's setting, else the captioner that fits
    this computer (`recommended_vlm`; `myvlm doctor` says why: a GPU with room gets BLIP-2 or LLaVA, a CPU SmolVLM)."""
    return option or settings.read(catalog, "vlm") or recommended_vlm()


@dataclass(frozen=True)
class Placement:
    """How a model is loaded: where, in which dtype, and how it is split when the GPU is too small."""

    device: str                          # "cuda" | "mps" | "cpu"
    dtype: str                           # "bf16" | "fp16" | "fp32"
    device_map: str | dict | None = None  # None: the whole model on `device`; "auto": accelerate splits it
    max_memory: dict | None = None       # accelerate's per-device budget in bytes ({0: ..., "cpu": ...})
    threads: int | None = None           # torch math threads on the CPU
    reason: str = ""

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        if self.device_map is None:
            dev = "cuda:0" if self.device == "cuda" else self.device
            return {"device_map": {"": dev}}
        return {"device_map": self.device_map, "max_memory": dict(self.max_memory or {})}


def plan_placement(params_b: float, hw: Hardware, device: str | None = None, *, tiny: bool = False,
                   quantized_4bit: bool = False) -> Placement:
    """bf16 on GPUs that have it (fp16 otherwise and on Apple's GPU); on the CPU bf16 where the CPU does it fast,
    fp32 elsewhere (and for the tiny test presets, whose numbers should not depend on the CPU). A CUDA GPU whose
    free memory cannot hold the model gets accelerate's device map: what fits on the GPU, the rest in RAM."""
    dev = (device or hw.device()).split(":")[0]
    threads = max(1, hw.physical_cores)
    if dev == "cuda" and hw.gpu is not None:
        gpu = hw.gpu
        dt = "bf16" if gpu.bf16 else "fp16"
        need = need_gb(params_b, "4bit" if quantized_4bit else dt)
        if tiny or need <= gpu.free_gb:
            return Placement("cuda", dt, threads=threads, reason=f"whole on {gpu.name} ({need:.1f} of "
                                                                 f"{gpu.free_gb:.1f} GB free)")
        on_gpu = max(0.0, gpu.free_gb - GPU_RESERVE_GB)
        in_ram = max(0.0, hw.available_gb * 0.8)
        if on_gpu <= 0 or on_gpu + in_ram < need:
            return Placement("cuda", dt, threads=threads, reason=f"needs {need:.1f} GB; {gpu.free_gb:.1f} GB free "
                                                                 f"on the GPU and {hw.available_gb:.1f} GB of RAM")
        return Placement("cuda", dt, "auto", {gpu.index: int(on_gpu * GIB), "cpu": int(in_ram * GIB)}, threads,
                         f"{on_gpu:.1f} of {need:.1f} GB on {gpu.name}, the rest in RAM (slower)")
    if dev == "mps":
        return Placement("mps", "fp16", threads=threads, reason="Apple GPU in fp16 (its bf16 kernels are patchy)")
    if dev == "cuda":   # asked for a GPU this computer does not have: let torch say so when loading
        return Placement("cuda", "bf16", threads=threads)
    dt = "bf16" if hw.cpu_bf16 and not tiny else "fp32"
    why = "the CPU does bf16 fast" if dt == "bf16" else ("tiny test model" if tiny else "no fast bf16 on this CPU")
    return Placement("cpu", dt, threads=threads, reason=f"CPU in {dt} ({why}), {threads} threads")


def torch_threads(hw: Hardware, batch: bool) -> int:
    """Math threads for one query (all physical cores: the person is waiting) or a background batch (one core
    left for the window and the other stages). Hyper-threads only make matrix maths wait on each other."""
    n = max(1, hw.physical_cores)
    return max(1, n - 1) if batch and n > 2 else n


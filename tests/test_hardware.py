"""Fitting the machine: the captioner a computer gets (recommend_captioner), how a model is placed on it
(plan_placement), the times remembered after real use and shown instead of the benchmark's, `myvlm doctor`, a new
library's default, and Settings ▸ Models' time column. Machines are described, not detected: any can be tested."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from engine.models import hardware
from engine.models.hardware import Gpu, Hardware, Placement, need_gb, plan_placement, recommend_captioner, torch_threads
from engine.models.vlm import estimates as est
from engine.models.vlm.estimates import BENCH_LABEL, HERE_LABEL, TimingMemory, TrainingClock
from engine.models.vlm.specs import VLM_SPECS

LAPTOP = Hardware(cpu_name="Intel Core i5-8250U", physical_cores=4, logical_cores=8, ram_gb=8, available_gb=5)
OLD_LAPTOP = Hardware(cpu_name="Celeron", physical_cores=2, logical_cores=2, ram_gb=4, available_gb=2.5)
WORKSTATION = Hardware(cpu_name="Xeon w5", physical_cores=16, logical_cores=32, ram_gb=64, available_gb=60,
                       cpu_bf16=True)
RTX4090 = Hardware(physical_cores=16, logical_cores=32, ram_gb=64, available_gb=50,
                   gpus=(Gpu("NVIDIA GeForce RTX 4090", 24.0, 23.0),))
RTX3060 = Hardware(physical_cores=8, logical_cores=16, ram_gb=32, available_gb=24,
                   gpus=(Gpu("NVIDIA GeForce RTX 3060", 12.0, 11.2),))
GTX1660 = Hardware(physical_cores=6, logical_cores=12, ram_gb=16, available_gb=12,
                   gpus=(Gpu("NVIDIA GeForce GTX 1660", 6.0, 5.5, bf16=False),))
M2_16 = Hardware(system="Darwin", machine="arm64", cpu_name="Apple M2", physical_cores=8, logical_cores=8,
                 ram_gb=16, available_gb=9, cpu_bf16=True, mps=True)
M3_36 = Hardware(system="Darwin", machine="arm64", cpu_name="Apple M3 Pro", physical_cores=12, logical_cores=12,
                 ram_gb=36, available_gb=25, cpu_bf16=True, mps=True)


@pytest.fixture
def this_computer(monkeypatch):
    """Pretend to be a given machine: detect() answers it and the cached recommendation forgets the real one."""
    from engine.models import downloads as model_manager

    def use(hw: Hardware) -> Hardware:
        monkeypatch.setattr(hardware, "detect", lambda: hw)
        hardware.recommended_vlm.cache_clear()
        monkeypatch.setattr(model_manager, "_CATALOGUE", None)
        return hw

    yield use
    hardware.recommended_vlm.cache_clear()


@pytest.fixture
def memory(tmp_path, monkeypatch) -> TimingMemory:
    path = tmp_path / "timings.json"
    monkeypatch.setenv(est.ENV_TIMINGS, str(path))
    return TimingMemory(path)


@pytest.mark.parametrize("hw, vlm, device, words", [
    (LAPTOP, "smolvlm-256m", "cpu", "no GPU"),
    (WORKSTATION, "smolvlm-256m", "cpu", "fastest on a CPU"),
    (OLD_LAPTOP, "smolvlm-256m", "cpu", "close other programs"),
    (RTX4090, "llava", "cuda", "runs whole on it"),
    (RTX3060, "blip2", "cuda", "the paper's captioner"),
    (GTX1660, "smolvlm-500m", "cuda", "less than BLIP-2's"),
    (M2_16, "smolvlm-500m", "mps", "too little for BLIP-2"),
    (M3_36, "blip2", "mps", "fp16"),
])
def test_each_machine_gets_a_captioner_that_fits(hw, vlm, device, words):
    rec = recommend_captioner(hw)
    assert (rec.vlm, rec.device) == (vlm, device) and words in rec.reason
    assert rec.vlm in VLM_SPECS and not VLM_SPECS[rec.vlm].tiny
    if device == "cuda":   # what it chose fits the card; what it passed over did not
        assert need_gb(VLM_SPECS[vlm].params_b, "bf16" if hw.gpu.bf16 else "fp16") <= hw.gpu.total_gb
    if vlm == "blip2" and device == "cuda":
        assert need_gb(VLM_SPECS["llava"].params_b, "bf16") > hw.gpu.total_gb
    # the CPU default meets the targets in the benchmark: <= 3 s a photo, <= 4 GB, >= 10x BLIP-2
    if device == "cpu":
        from engine.models.vlm.cpu_times import MEASURED

        m, blip = MEASURED[vlm], MEASURED["blip2"]
        assert m["caption_b1_s"] <= 3 and m["peak_rss_gb"] <= 4 and blip["caption_b1_s"] / m["caption_b1_s"] >= 10


def test_placement_for_several_machines():
    blip, llava = VLM_SPECS["blip2"].params_b, VLM_SPECS["llava"].params_b
    # CPUs: bf16 only where the CPU does it fast; the tiny test presets stay fp32 everywhere
    assert plan_placement(blip, LAPTOP) == Placement("cpu", "fp32", threads=4, reason=plan_placement(blip, LAPTOP).reason)
    assert plan_placement(blip, WORKSTATION).dtype == "bf16" and plan_placement(blip, WORKSTATION).threads == 16
    assert plan_placement(0.0001, WORKSTATION, tiny=True).dtype == "fp32"
    assert plan_placement(blip, M2_16).device == "mps" and plan_placement(blip, M2_16).dtype == "fp16"
    # a GPU with room: the whole model on it, nothing for accelerate to split
    whole = plan_placement(blip, RTX4090)
    assert (whole.device, whole.dtype, whole.device_map) == ("cuda", "bf16", None)
    assert whole.from_pretrained_kwargs() == {"device_map": {"": "cuda:0"}}
    # a GPU too small: what fits on it (less a reserve for activations), the rest in RAM
    split = plan_placement(blip, GTX1660)
    assert split.dtype == "fp16" and split.device_map == "auto"
    assert split.max_memory == {0: int(4.5 * 2**30), "cpu": int(12 * 0.8 * 2**30)}
    assert split.from_pretrained_kwargs() == {"device_map": "auto", "max_memory": split.max_memory}
    assert "rest in RAM" in split.reason
    # LLaVA in 4 bits fits the 12 GB card whole; in bf16 it must be split
    assert plan_placement(llava, RTX3060, quantized_4bit=True).device_map is None
    assert plan_placement(llava, RTX3060).device_map == "auto"
    # neither GPU nor RAM can hold it: no split (the memory check refuses with a sentence)
    tight = Hardware(ram_gb=8, available_gb=3, gpus=(Gpu("small", 4.0, 3.5),))
    assert plan_placement(llava, tight).device_map is None and "needs" in plan_placement(llava, tight).reason
    # the CPU asked for on a GPU machine
    assert plan_placement(blip, RTX4090, "cpu").device == "cpu"


def test_fast_bf16_is_read_from_the_cpu_flags(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse avx2 "
                   "avx512f amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    old = tmp_path / "old"
    old.write_text("model name\t: Intel(R) Core(TM) i5-8250U\nflags\t\t: fpu sse avx2 fma\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n")
    assert hardware.cpuinfo(str(x86)) == ("Intel(R) Xeon(R) Platinum 8480+",
                                          {"fpu", "sse", "avx2", "avx512f", "amx_bf16", "amx_tile"})
    assert [bool(hardware.cpuinfo(str(p))[1] & hardware.BF16_FLAGS) for p in (x86, old, arm)] == [True, False, True]
    assert hardware.cpuinfo(str(tmp_path / "absent")) == ("", set())


def test_threads_for_one_query_and_a_batch():
    assert torch_threads(LAPTOP, batch=False) == 4 and torch_threads(LAPTOP, batch=True) == 3
    assert torch_threads(OLD_LAPTOP, batch=True) == 2   # two cores: a batch keeps both
    assert torch_threads(Hardware(physical_cores=1, logical_cores=2), batch=True) == 1


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def test_split_placement_loads_through_accelerate(models_dir, monkeypatch):
    """The wrapper's load hands the device map and budgets to transformers, whose accelerate path loads it (no GPU
    is lent here, so the budget is the CPU's alone: the real split between a GPU and RAM was not run)."""
    from PIL import Image
    from transformers import Blip2ForConditionalGeneration

    from engine.models.vlm.auto import load_vlm
    from engine.models.vlm.blip2 import Blip2Wrapper
    from engine.models.vlm.checkpoints import checkpoint_folder

    plain = load_vlm("tiny-blip2", models_dir=models_dir)
    spec = VLM_SPECS["tiny-blip2"]
    folder = checkpoint_folder(spec, spec.checkpoint, models_dir)
    seen: list[dict] = []
    real = Blip2ForConditionalGeneration.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(Blip2ForConditionalGeneration, "from_pretrained", classmethod(spy))
    budget = {"cpu": 2 * 2**30}
    split = Blip2Wrapper.load(folder, spec, spec.checkpoint, plain.device, plain.dtype,
                              placement=Placement("cpu", "fp32", "auto", budget))
    assert seen[0]["device_map"] == "auto" and seen[0]["max_memory"] == budget
    img = [Image.new("RGB", (64, 48), (200, 40, 40))]
    assert split.caption(img) == plain.caption(img)


def test_timings_remembered_and_shown_instead_of_the_benchmark(memory, this_computer):
    hw = this_computer(LAPTOP)
    key = hw.device_key()
    before = est.estimates(["smolvlm-256m", "llava"], hw, memory)
    assert before["smolvlm-256m"].photo_source == BENCH_LABEL and before["smolvlm-256m"].photo_s == pytest.approx(2.047)
    assert before["llava"].photo_s is None and before["llava"].text() == "measured on first use"
    memory.record("smolvlm-256m", key, "caption_s", 3.0, 4)
    memory.record("smolvlm-256m", key, "caption_s", 5.0, 1)   # a running average: one slow call moves it a little
    again = TimingMemory(memory.path).get("smolvlm-256m", key)   # reloaded from the file
    assert 3.0 < again["caption_s"] < 4.0
    after = est.estimates(["smolvlm-256m"], hw, TimingMemory(memory.path))["smolvlm-256m"]
    assert after.photo_source == HERE_LABEL and after.photo_s == again["caption_s"] and after.measured_here
    assert after.concept_source == BENCH_LABEL   # not trained here yet
    # another device's timings are its own
    assert est.estimates(["smolvlm-256m"], WORKSTATION, memory)["smolvlm-256m"].photo_source == BENCH_LABEL
    # a damaged file: the benchmark's numbers stand, and the next measurement rewrites it
    memory.path.write_text("{not json")
    assert TimingMemory(memory.path).get("smolvlm-256m", key) == {}
    memory.record("smolvlm-256m", key, "caption_s", 1.5)
    assert json.loads(memory.path.read_text())[f"smolvlm-256m|{key}"]["caption_s"]["value"] == 1.5


def test_real_use_is_measured(models_dir, memory):
    """A caption batch and a training run leave their times here (the tiny preset opts in; real models always do)."""
    from PIL import Image

    from engine.domain.personalize.training import TrainingProgress
    from engine.models.vlm.auto import load_vlm

    w = load_vlm("tiny-blip2", models_dir=models_dir)
    w.caption([Image.new("RGB", (64, 48))])
    assert memory.load() == {}   # test presets leave no timings behind
    w.record_timings = True
    w.caption([Image.new("RGB", (64, 48), (9, 9, 9))] * 2)
    key = est.device_key(w.device)
    assert memory.get("tiny-blip2", key)["caption_s"] > 0
    clock = TrainingClock()
    for step in range(1, 11):
        clock(TrainingProgress("training", step, 10, loss=1.0, lm_loss=1.0, elapsed_s=2.0 * step))
    concept = clock.finish("tiny-blip2", w.device, memory)
    got = memory.get("tiny-blip2", key)
    assert got["step_s"] == pytest.approx(2.0) and got["concept_s"] == pytest.approx(concept)
    assert concept >= 200   # 100 steps of 2 s
    shown = est.estimate("tiny-blip2", "cpu", key, memory)
    assert shown.concept_source == HERE_LABEL and shown.concept_s == pytest.approx(concept)
    assert TrainingClock().finish("tiny-blip2", w.device, memory) is None   # no steps, nothing learnt


def test_doctor_shows_the_hardware_and_the_recommendation(tmp_path, memory, this_computer):
    from myvlm_cli.main import main

    this_computer(RTX3060)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--library", str(tmp_path / "lib"), "doctor"]) == 0
    text = out.getvalue()
    assert "Hardware: NVIDIA GeForce RTX 3060 (12.0 GB" in text and "8-core CPU" in text
    assert "Recommended captioner: blip2 (BLIP-2 FlanT5-XL (the paper's)) on the cuda" in text
    # on the GPU nothing was measured yet: no CPU benchmark numbers pretend to be this computer's
    assert "smolvlm-256m" in text and "measured on first use" in text
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["--library", str(tmp_path / "lib"), "doctor", "--json"]) == 0
    cap = json.loads(out.getvalue())["captioners"]
    assert cap["recommended"]["vlm"] == "blip2" and cap["hardware"]["gpus"][0]["total_gb"] == 12.0
    this_computer(LAPTOP)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["--library", str(tmp_path / "lib"), "doctor"])
    assert "Recommended captioner: smolvlm-256m" in out.getvalue() and "2.0 s · " not in out.getvalue()
    assert "2.0 s/photo · 2 min/concept" in out.getvalue()


def test_a_new_library_uses_the_recommendation_and_an_explicit_choice_wins(tmp_path, this_computer):
    from engine.library import Library
    from engine.models.downloads import catalogue
    from engine.models.hardware import resolve_vlm_name

    lib = Library(tmp_path / "lib")
    try:
        this_computer(LAPTOP)
        assert resolve_vlm_name(lib.catalog) == "smolvlm-256m"
        assert [e.name for e in catalogue() if e.default and e.feature == "captions and questions"] == ["smolvlm-256m"]
        this_computer(RTX4090)
        assert resolve_vlm_name(lib.catalog) == "llava"
        lib.catalog.set_setting("vlm", "blip2")   # the user's word: kept on any machine
        assert resolve_vlm_name(lib.catalog) == "blip2"
        this_computer(LAPTOP)
        assert resolve_vlm_name(lib.catalog) == "blip2"
        assert resolve_vlm_name(lib.catalog, "tiny-smolvlm") == "tiny-smolvlm"   # the run's option
    finally:
        lib.close()


def test_models_page_shows_an_estimate_per_captioner(qtbot, tmp_path, memory, this_computer):
    from engine.admin.doctor import captioners
    from engine.models.downloads import ModelManager
    from myvlm_desktop.models_page import HEADERS, TIME_COLUMN, KeyRole, ModelsPanel

    hw = this_computer(LAPTOP)
    memory.record("smolvlm-500m", hw.device_key(), "caption_s", 4.25)
    panel = ModelsPanel()
    qtbot.addWidget(panel)
    panel.set_estimates(captioners(hw, memory)["estimates"])
    panel.set_rows([s.as_dict() for s in ModelManager(tmp_path / "models", cache_dir=tmp_path / "hf").status()])
    assert panel.tree.headerItem().text(TIME_COLUMN) == HEADERS[TIME_COLUMN] == "Time here"
    cells = {panel.tree.topLevelItem(i).data(0, KeyRole): panel.tree.topLevelItem(i).text(TIME_COLUMN)
             for i in range(panel.tree.topLevelItemCount())}
    captioner_keys = [k for k, s in VLM_SPECS.items() if not s.tiny]
    assert all(cells[k] for k in captioner_keys)   # every captioner has a time (or says when it gets one)
    assert cells["smolvlm-256m"] == "2.0 s · 2 min" and cells["blip2"] == "50 s · 46 min"
    assert cells["smolvlm-500m"] == "here: 4.2 s · 4 min"   # measured here wins; its concept is still the bench's
    assert cells["llava"] == "first use" and cells["dlib"] == ""
    panel.select("smolvlm-256m")
    assert "On this computer: about 2.0 s per photo (measured on the benchmark's 2-core CPU)" in panel.detail.text()


def test_training_view_says_how_long_teaching_takes_here(memory, this_computer):
    import torch

    from myvlm_desktop.training import device_text

    this_computer(LAPTOP)
    cpu = torch.device("cpu")
    assert device_text(cpu, "smolvlm-256m") == "CPU (about 2 min a concept on the benchmark's 2-core CPU)"
    memory.record("smolvlm-256m", est.device_key(cpu), "concept_s", 300.0)
    assert device_text(cpu, "smolvlm-256m") == "CPU (about 5 min a concept on this computer)"
    assert "hours" not in device_text(cpu, "blip2") and device_text(cpu, "llava") == "CPU"

"""The image tower's inference path: chosen among those that keep the embeddings, cached, forced, recorded.

Random weights, offline. Speeds are never asserted (a shared machine), only what the choice may pick.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, draw_picture, make_pictures, run_cli, run_cli_commands, run_cli_reporting_imports

from encoders import inference
from encoders.inference import EAGER, MIN_COSINE, ONNX, InferencePath

CONFIGS = Path(__file__).parent / "model_configs"
# Every test config but PE-Core's (timm's smallest PE-Core tower runs at 384 px only: over a minute here).
TOWERS = ["clipsearch-tiny", "family-vit-openai", "family-convnext", "family-siglip", "family-mobileclip"]


@pytest.fixture(scope="module", autouse=True)
def registered():
    import open_clip

    import encoders.loader  # noqa: F401  (registers clipsearch-tiny)

    open_clip.add_model_config(CONFIGS)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch) -> Path:
    """This test's own inference cache, in this process and the CLI's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(inference.INFERENCE_ENV, raising=False)
    return tmp_path / "cache" / "clipsearch" / "inference.json"


def _model(name: str):
    import open_clip

    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    return model.eval(), preprocess


def _tower(name: str):
    """The random-weight image tower of a test config, its input size, and a test library of 40 drawn pictures."""
    model, preprocess = _model(name)
    visual = model.visual
    size = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size,) * 2
    library = torch.stack([preprocess(draw_picture(seed)) for seed in range(40)])
    return visual, tuple(size), library


@pytest.mark.parametrize("name", TOWERS)
def test_every_path_the_choice_keeps_holds_the_bound_on_a_test_library(name):
    visual, size, library = _tower(name)
    paths = inference.candidates(visual, bf16=True)  # bf16 too: this machine may only emulate it, but it runs
    trials = inference.measure(visual, size, paths)
    assert [t.path for t in trials][0] == EAGER and {t.path for t in trials} == {p.name for p in paths}
    reference = inference.embed(visual, InferencePath(), library)
    kept = [t.path for t in trials if t.agreement.ok]
    assert EAGER in kept and inference.choose(trials) in kept
    for name_kept in kept:
        path = InferencePath.parse(name_kept)
        vectors = inference.embed(path.tower(visual), path, library)
        assert np.min(np.sum(reference * vectors, axis=1)) >= MIN_COSINE, name_kept
        assert inference.same_top_k(reference, vectors), name_kept
    # The tower as built is left as built: every path works on a copy.
    np.testing.assert_array_equal(inference.embed(visual, InferencePath(), library), reference)


@pytest.mark.parametrize("name", TOWERS)
def test_the_onnx_export_of_every_family_holds_the_bound_on_a_test_library(name, tmp_path):
    """Each family's image tower exports (re-parameterised where it can be) and, run by ONNX Runtime on pictures
    prepared by the saved plan (no torch), keeps PyTorch's fp32 vectors and neighbours."""
    from encoders import ClipEncoder, ModelFingerprint, ModelSpec
    from encoders.onnx.image import OnnxImageEncoder, export_image_tower

    model, preprocess = _model(name)
    pictures = [draw_picture(seed) for seed in range(40)]
    library = torch.stack([preprocess(p) for p in pictures])
    with torch.inference_mode():
        dim = int(model.visual(library[:1]).shape[-1])
    encoder = ClipEncoder(model, preprocess, None, torch.device("cpu"), ModelSpec(name, "none"),
                          ModelFingerprint(name, "random-init:seed=0", f"test:{name}", dim))
    exported = export_image_tower(encoder, tmp_path)
    assert exported.meta["probe_min_cosine"] >= MIN_COSINE
    again = OnnxImageEncoder.for_library(tmp_path, encoder.fingerprint)  # as a later run finds it
    vectors = again.encode_images(again.split.array([again.split.pil(p) for p in pictures]))
    reference = inference.embed(model.visual, InferencePath(), library)
    assert np.min(np.sum(reference * vectors, axis=1)) >= MIN_COSINE
    assert inference.same_top_k(reference, vectors)


def test_paths_offered_follow_the_tower():
    offered = {name: {p.name for p in inference.candidates(_tower(name)[0], bf16=False)}
               for name in ("clipsearch-tiny", "family-convnext", "family-mobileclip")}
    assert offered["clipsearch-tiny"] == {EAGER}  # a ViT: one patch convolution, nothing to fuse
    assert offered["family-convnext"] == {EAGER, "cl"}
    assert offered["family-mobileclip"] == {EAGER, "cl", "reparam", "reparam-cl"}  # FastViT: fused for inference


def test_a_path_whose_neighbours_differ_is_refused_even_within_the_cosine_bound():
    reference = np.random.default_rng(0).standard_normal((24, 64)).astype(np.float32)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    first, second = inference.top_k(reference, 2)[0]
    moved = reference.copy()
    step = 0.0
    while moved[0] @ moved[second] <= reference[0] @ reference[first]:  # nudge the 2nd neighbour of 0 past the 1st
        step += 0.001
        moved[second] = reference[second] + step * reference[0]
        moved[second] /= np.linalg.norm(moved[second])
    result = inference.agreement(reference, moved)
    assert result.min_cosine >= MIN_COSINE and not result.same_top_k and not result.ok
    assert inference.agreement(reference, reference).ok
    assert inference.choose([inference.Trial(EAGER, 1.0, inference.agreement(reference, reference)),
                             inference.Trial("cl", 9.0, result)]) == EAGER


def test_the_choice_is_measured_once_then_read_from_the_cache(tiny_encoder, own_cache, monkeypatch):
    assert inference.cached_choice(tiny_encoder) == EAGER  # a ViT on a CPU without native bf16: nothing else
    entry = json.loads(own_cache.read_text())[inference.machine_key(tiny_encoder.fingerprint.id)]
    assert entry["path"] == EAGER and entry["architecture"] == "clipsearch-tiny" and EAGER in entry["kept"]

    def no_measuring(*args):
        raise AssertionError("measured again")

    monkeypatch.setattr(inference, "measure", no_measuring)
    assert inference.cached_choice(tiny_encoder) == EAGER
    # Another model (or CPU, torch, threads) is another key: measured anew.
    assert inference.machine_key("another-model") != inference.machine_key(tiny_encoder.fingerprint.id)


def test_settle_forced_then_recorded_then_chosen(tiny_encoder, monkeypatch):
    from encoders import ModelError

    assert inference.settle(tiny_encoder, recorded="fp32-eager", forced=None) == EAGER
    monkeypatch.setattr(inference, "cached_choice", lambda encoder, offer_onnx=None: "chosen")
    assert inference.settle(tiny_encoder, recorded="reparam-cl", forced=None) == "reparam-cl"  # the library's own
    assert inference.settle(tiny_encoder, recorded=None, forced=None) == "chosen"
    assert inference.settle(tiny_encoder, recorded="reparam-cl", forced="auto") == "chosen"
    assert inference.settle(tiny_encoder, recorded="reparam-cl", forced=EAGER) == EAGER
    monkeypatch.setenv(inference.INFERENCE_ENV, EAGER)
    assert inference.settle(tiny_encoder, recorded="reparam-cl", forced=None) == EAGER
    with pytest.raises(ModelError, match="does not apply to clipsearch-tiny"):
        inference.settle(tiny_encoder, recorded=None, forced="reparam")
    with pytest.raises(ModelError, match="unknown inference path 'fast'"):
        inference.settle(tiny_encoder, recorded=None, forced="fast")


def _mobileclip_folder(tmp_path: Path) -> Path:
    """family-mobileclip exported (the CLI knows test configs only as exported folders)."""
    import open_clip

    from train.checkpoint import export_model

    torch.manual_seed(0)
    return export_model(open_clip.create_model("family-mobileclip"), open_clip.get_model_config("family-mobileclip"),
                        "family-mobileclip", tmp_path / "mobileclip")


def test_forced_path_runs_is_recorded_and_kept_by_later_runs(tmp_path):
    folder, pictures = tmp_path / "lib", tmp_path / "pictures"
    make_pictures(pictures, 3)
    model = ("--checkpoint", str(_mobileclip_folder(tmp_path)))
    first = run_cli("index", str(pictures), "--library", str(folder), *model, "--inference", "reparam-cl", "--json",
                    check=True)
    assert json.loads(first.stdout)["inference"] == "reparam-cl"
    status = json.loads(run_cli("status", "--library", str(folder), "--json", check=True).stdout)
    assert status["inference"] == "reparam-cl"
    make_pictures(pictures, 2, start=3)
    later = json.loads(run_cli("index", str(pictures), "--library", str(folder), "--json", check=True).stdout)
    assert (later["added"], later["inference"]) == (2, "reparam-cl")  # the library's path, not a new choice
    make_pictures(pictures, 1, start=5)
    forced = run_cli("index", str(pictures), "--library", str(folder), "--json", env={inference.INFERENCE_ENV: "cl"},
                     check=True)
    assert json.loads(forced.stdout)["inference"] == "cl"
    status = json.loads(run_cli("status", "--library", str(folder), "--json", check=True).stdout)
    assert status["inference"] == "cl"


def test_a_path_that_does_not_apply_or_does_not_exist_is_one_clear_line(tmp_path):
    pictures = tmp_path / "pictures"
    make_pictures(pictures, 1)
    result = run_cli("index", str(pictures), "--library", str(tmp_path / "lib"), *TINY, "--inference", "reparam")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning: RANDOM WEIGHTS")]
    assert errors == [errors[0]] and "inference path reparam does not apply to clipsearch-tiny" in errors[0], errors
    # A name that is no path at all is refused before torch and the model load (a typo costs no seconds).
    errors, imported = run_cli_reporting_imports("index", str(pictures), "--library", str(tmp_path / "lib"), *TINY,
                                                 "--inference", "fast", exit_code=2)
    assert errors.splitlines() == [errors.strip()] and "unknown inference path 'fast'" in errors, errors
    assert imported == "[]"


def test_an_index_run_with_nothing_to_embed_imports_no_torch(tmp_path):
    folder, pictures = tmp_path / "lib", tmp_path / "pictures"
    make_pictures(pictures, 2)
    run_cli("index", str(pictures), "--library", str(folder), *TINY, check=True)
    summary, imported = run_cli_reporting_imports("index", str(pictures), "--library", str(folder), "--json")
    assert json.loads(summary)["unchanged"] == 2 and json.loads(summary)["inference"] is None
    assert imported == "[]"


def test_onnx_is_chosen_when_it_keeps_the_embeddings_and_comes_within_the_margin():
    ok, off = inference.Agreement(1.0, True), inference.Agreement(1.0, False)
    trials = [inference.Trial(EAGER, 10.0, ok), inference.Trial("cl", 20.0, ok)]
    assert inference.choose([*trials, inference.Trial(ONNX, 19.5, ok)]) == ONNX  # as fast: no torch at start-up
    assert inference.choose([*trials, inference.Trial(ONNX, 15.0, ok)]) == "cl"  # clearly slower
    assert inference.choose([*trials, inference.Trial(ONNX, 50.0, off)]) == "cl"  # other neighbours
    assert inference.choose([*trials, inference.Trial(ONNX, 50.0, ok)], onnx=False) == "cl"  # no export here


def test_onnx_is_measured_once_with_the_others_and_offered_only_when_it_may_win(tiny_encoder, own_cache,
                                                                                monkeypatch):
    assert inference.cached_choice(tiny_encoder) == EAGER  # no library to export into: PyTorch paths only
    offers = []

    def offer():
        offers.append(1)
        return None  # this library cannot have an export (refused, or no onnxruntime)

    assert inference.cached_choice(tiny_encoder, offer) == EAGER and len(offers) == 1
    measured = []
    real_measure = inference.measure
    monkeypatch.setattr(inference, "measure", lambda *args: measured.append(args[-1]) or real_measure(*args))

    class Exported:  # what OnnxImageEncoder gives, twice as fast as any tower (a perfect export)
        def encode_images(self, pixels):
            return inference.embed(tiny_encoder.model.visual, InferencePath(), torch.from_numpy(pixels))

    assert inference.cached_choice(tiny_encoder, Exported) in (ONNX, EAGER) and len(measured) == 1
    entry = json.loads(own_cache.read_text())[inference.machine_key(tiny_encoder.fingerprint.id)]
    assert ONNX in entry["images_per_second"] and ONNX in entry["kept"]
    # Measured with ONNX now: later runs read the cache, and export only where the cache chose ONNX.
    offers.clear()
    chosen = inference.cached_choice(tiny_encoder, offer)
    assert len(measured) == 1 and len(offers) == (1 if entry["path"] == ONNX else 0)
    assert chosen == (entry["path"] if entry["path"] != ONNX else EAGER)  # ONNX chosen but not available here


def test_a_library_on_onnx_embeds_new_pictures_without_torch_and_as_pytorch_does(tmp_path, tiny_encoder):
    folder, pictures = tmp_path / "lib", tmp_path / "pictures"
    make_pictures(pictures, 3)
    first = run_cli("index", str(pictures), "--library", str(folder), *TINY, "--inference", ONNX, "--json",
                    check=True)
    assert json.loads(first.stdout)["inference"] == ONNX
    assert sorted(p.suffix for p in folder.glob("image.*")) == [".json", ".onnx", ".weights"]
    make_pictures(pictures, 2, start=3)
    summary, imported = run_cli_reporting_imports("index", str(pictures), "--library", str(folder), "--json")
    assert (json.loads(summary)["added"], json.loads(summary)["inference"], imported) == (2, ONNX, "[]")
    # Each picture's vector, embedded in ONNX Runtime, against PyTorch's fp32 one for the same file.
    names = sorted(p.name for p in pictures.iterdir())
    answers = run_cli_commands(folder, {name: ["query", "--image", str(pictures / name), "--json"] for name in names})
    for name in names:
        assert answers[name].returncode == 0, answers[name].stderr
        top = json.loads(answers[name].stdout)["results"][0]
        assert Path(top["path"]).name == name and top["score"] >= MIN_COSINE, (name, top)


def test_onnx_where_it_cannot_be_had_is_one_clear_line(tmp_path):
    pictures = tmp_path / "pictures"
    make_pictures(pictures, 1)
    run_cli("index", str(pictures), "--library", str(tmp_path / "lib"), *TINY, check=True)
    errors, imported = run_cli_reporting_imports("reindex", *TINY, "--library", str(tmp_path / "lib"),
                                                 "--inference", ONNX, exit_code=2)
    assert errors.splitlines() == [errors.strip()] and "only `search index` takes it" in errors, errors
    assert imported == "[]"  # refused before torch and the model load

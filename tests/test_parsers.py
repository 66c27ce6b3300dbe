"""The face parsers: the 19-to-8 class map, BiSeNet loading and inference steps, the landmark parser."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.images import decode_image
from pipeline.labels import PART_NAMES
from pipeline.parsers import ParserSetupError, create_parser
from pipeline.parsers.base import FaceNotFoundError, file_sha256
from pipeline.parsers.bisenet import (
    IMAGENET_MEAN, IMAGENET_STD, WEIGHTS_FILE, WEIGHTS_URL, BiSeNetParser, first_output, fold_batch_norms,
    load_bisenet, logits_to_masks, normalise, resolve_weights,
)
from pipeline.parsers.class_map import BISENET_LABELS, ClassMapError, default_class_map_path, load_class_map
from pipeline.parsers.landmarks import LandmarkMasker, predictor_path

# facexlib's BiSeNet label order (face-parsing.PyTorch), index: name.
FACEXLIB_ORDER = {
    0: "background", 1: "skin", 2: "l_brow", 3: "r_brow", 4: "l_eye", 5: "r_eye", 6: "eyeglasses",
    7: "l_ear", 8: "r_ear", 9: "earring", 10: "nose", 11: "mouth", 12: "u_lip", 13: "l_lip",
    14: "neck", 15: "necklace", 16: "cloth", 17: "hair", 18: "hat",
}

# The default collapse: brows and eyeglasses to eye, earring to ear, lips and
# inner mouth to mouth, necklace to neck, hat to hair, cloth to background.
EXPECTED_PARTS = {
    "background": "background", "skin": "skin", "l_brow": "eye", "r_brow": "eye", "l_eye": "eye",
    "r_eye": "eye", "eyeglasses": "eye", "l_ear": "ear", "r_ear": "ear", "earring": "ear", "nose": "nose",
    "mouth": "mouth", "u_lip": "mouth", "l_lip": "mouth", "neck": "neck", "necklace": "neck",
    "cloth": "background", "hair": "hair", "hat": "hair",
}


def write_map(tmp_path, document: dict):
    path = tmp_path / "map.json"
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def map_document() -> dict:
    return json.loads(default_class_map_path().read_text())


@pytest.fixture(scope="module")
def random_bisenet(tmp_path_factory):
    """A randomly initialised facexlib BiSeNet state dict saved as a weights file."""
    from facexlib.parsing.bisenet import BiSeNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / WEIGHTS_FILE
    torch.save(BiSeNet(num_class=19).state_dict(), path)
    return path


@pytest.mark.parametrize("index, name", sorted(FACEXLIB_ORDER.items()))
def test_label_order(index, name):
    assert BISENET_LABELS[index] == name


def test_label_count():
    assert len(BISENET_LABELS) == 19


def test_map_file_states_parser_order(map_document):
    assert tuple(map_document["source_labels"]) == BISENET_LABELS


@pytest.mark.parametrize("label, part", sorted(EXPECTED_PARTS.items()))
def test_default_collapse(label, part):
    lookup = load_class_map().lookup
    assert PART_NAMES[lookup[BISENET_LABELS.index(label)]] == part


def test_lookup_dtype():
    assert load_class_map().lookup.dtype == np.uint8


def test_map_other_order_rejected(tmp_path, map_document):
    labels = map_document["source_labels"]
    labels[4], labels[5] = labels[5], labels[4]
    with pytest.raises(ClassMapError, match=r"expects label 4 to be 'r_eye', but the parser's label 4 is 'l_eye'"):
        load_class_map(write_map(tmp_path, map_document))


def test_map_shorter_order_rejected(tmp_path, map_document):
    map_document["source_labels"] = map_document["source_labels"][:18]
    with pytest.raises(ClassMapError, match="written for 18 parser labels"):
        load_class_map(write_map(tmp_path, map_document))


def test_map_unknown_part_rejected(tmp_path, map_document):
    map_document["map"]["hat"] = "headwear"
    with pytest.raises(ClassMapError, match="'hat' to 'headwear', which is not a part"):
        load_class_map(write_map(tmp_path, map_document))


def test_map_unmapped_label_rejected(tmp_path, map_document):
    del map_document["map"]["necklace"]
    with pytest.raises(ClassMapError, match=r"does not map the labels \['necklace'\]"):
        load_class_map(write_map(tmp_path, map_document))


def test_map_other_parts_rejected(tmp_path, map_document):
    map_document["target_parts"] = list(reversed(map_document["target_parts"]))
    with pytest.raises(ClassMapError, match="target_parts"):
        load_class_map(write_map(tmp_path, map_document))


def test_map_missing_file_rejected(tmp_path):
    with pytest.raises(ClassMapError, match="not found"):
        load_class_map(tmp_path / "absent.json")


def test_device_argmax_matches_numpy():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 19, 24, 40, generator=generator)
    lookup_table = load_class_map().lookup
    parts, labels = logits_to_masks(logits, torch.from_numpy(lookup_table))

    expected_labels = logits.numpy().argmax(axis=1)
    assert np.array_equal(labels.numpy(), expected_labels)
    assert np.array_equal(parts.numpy(), lookup_table[expected_labels])


def test_device_argmax_returns_uint8():
    parts, labels = logits_to_masks(torch.randn(1, 19, 4, 4), torch.from_numpy(load_class_map().lookup))
    assert parts.dtype == torch.uint8
    assert labels.dtype == torch.uint8


def test_normalise_matches_facexlib():
    from facexlib.utils.misc import img2tensor
    from torchvision.transforms.functional import normalize

    image = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    expected = img2tensor(image.astype("float32") / 255.0, bgr2rgb=False, float32=True)
    normalize(expected, IMAGENET_MEAN, IMAGENET_STD, inplace=True)
    actual = normalise(torch.from_numpy(image[None]))[0]
    assert torch.allclose(actual, expected, atol=1e-6)


def test_first_output_matches_forward(random_bisenet):
    model = load_bisenet(random_bisenet, torch.device("cpu"))
    pixels = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert torch.allclose(first_output(model, pixels), model(pixels)[0], atol=1e-5)


def test_folded_batch_norms_match_first_output(random_bisenet):
    model = load_bisenet(random_bisenet, torch.device("cpu"))
    # Freshly initialised batch norms are the identity, so spread them to make folding change the weights.
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            for tensor, low, high in ((module.running_mean, -0.5, 0.5), (module.running_var, 0.5, 2.0),
                                      (module.weight.data, 0.5, 1.5), (module.bias.data, -0.2, 0.2)):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
    folded = fold_batch_norms(model)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    pixels = torch.randn(2, 3, 100, 76, generator=generator)
    with torch.inference_mode():
        assert torch.allclose(folded(pixels), first_output(model, pixels), atol=1e-4)


def test_cpu_parses_one_image_per_batch_without_workers(random_bisenet):
    parser = BiSeNetParser(random_bisenet, load_class_map(), torch.device("cpu"))
    assert (parser.default_batch_size, parser.default_workers) == (1, 0)


def test_load_bisenet_keeps_weights(random_bisenet):
    model = load_bisenet(random_bisenet, torch.device("cpu"))
    saved = torch.load(random_bisenet, map_location="cpu", weights_only=True)
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in saved.items())


def test_load_rejects_other_file(tmp_path):
    path = tmp_path / "not_weights.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ParserSetupError, match="not a facexlib BiSeNet state dict"):
        load_bisenet(path, torch.device("cpu"))


def test_load_rejects_other_model(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(ParserSetupError, match="not a facexlib BiSeNet state dict"):
        load_bisenet(path, torch.device("cpu"))


def test_weights_explicit_missing(tmp_path):
    with pytest.raises(ParserSetupError, match="not found"):
        resolve_weights(tmp_path / "absent.pth")


def test_weights_found_in_cache(tmp_path, monkeypatch, random_bisenet):
    monkeypatch.setenv("SLFER_CACHE", str(tmp_path))
    cached = tmp_path / "weights" / WEIGHTS_FILE
    cached.parent.mkdir()
    cached.write_bytes(random_bisenet.read_bytes())
    assert resolve_weights(None) == cached


def test_weights_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SLFER_CACHE", str(tmp_path))
    # A proxy on a closed local port makes the download fail at once, as offline.
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with pytest.raises(ParserSetupError) as raised:
        resolve_weights(None)
    assert WEIGHTS_URL in str(raised.value)
    assert str(tmp_path / "weights" / WEIGHTS_FILE) in str(raised.value)


def test_bisenet_parser_masks(random_bisenet):
    parser = BiSeNetParser(random_bisenet, load_class_map(), torch.device("cpu"), save_raw=True)
    images = [np.full((30, 20, 3), 128, np.uint8), np.zeros((7, 9, 3), np.uint8)]
    results = parser.parse_batch([parser.prepare(image) for image in images], [(30, 20), (7, 9)])
    assert results[0].parts.shape == (30, 20)
    assert results[1].parts.shape == (7, 9)
    assert np.array_equal(results[0].parts, load_class_map().lookup[results[0].raw])


def test_bisenet_parser_sha256(random_bisenet):
    parser = BiSeNetParser(random_bisenet, load_class_map(), torch.device("cpu"))
    assert parser.weights_sha256 == file_sha256(random_bisenet)


def test_predictor_file_found():
    assert predictor_path().stat().st_size > 50_000_000


def test_landmarks_hidden_parts():
    parser = create_parser("landmarks")
    assert parser.metadata()["hidden_parts"] == ["ear", "neck", "hair"]


def test_landmarks_blank_image_fails():
    with pytest.raises(FaceNotFoundError, match="uniform"):
        LandmarkMasker("whole")(np.full((48, 48, 3), 90, np.uint8))


def test_landmarks_detect_noise_fails():
    noise = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with pytest.raises(FaceNotFoundError, match="found no face"):
        LandmarkMasker("detect")(noise)


def test_landmarks_real_face(fer2013_images):
    image = decode_image(fer2013_images["happy"][0])
    mask = LandmarkMasker("whole")(image).parts
    present = {PART_NAMES[value] for value in np.unique(mask)}
    assert mask.shape == image.shape[:2]
    assert {"skin", "eye", "nose", "mouth"} <= present
    assert not present & {"ear", "neck", "hair"}

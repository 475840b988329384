"""ISIC 2018: images and masks matched across the release's folders; dermoscopy phantoms."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from monai.transforms import LoadImaged
from PIL import Image

from medseg.datasets import discover
from medseg.datasets.synthetic import synthesize
from medseg.errors import ConfigError
from medseg.transforms.readers import image_readers

INPUT = "ISIC2018_Task1-2_Training_Input"
TRUTH = "ISIC2018_Task1_Training_GroundTruth"


def test_discovers_images_and_masks_from_separate_folders(phantom_roots):
    root = phantom_roots["isic"]
    index = discover("isic", root)
    assert [c.id for c in index.cases] == ["ISIC_0000000", "ISIC_0000001"]
    assert index.cases[1].image == (root / INPUT / "ISIC_0000001.jpg",)
    assert index.cases[1].label == root / TRUTH / "ISIC_0000001_segmentation.png"
    assert (index.channels, index.modality, index.spatial_dims) == (
        ("red", "green", "blue"),
        "rgb",
        2,
    )
    assert index.labels.foreground == {"lesion": (255,)}


def test_loaded_cases_have_three_channels_and_a_matching_mask(phantom_roots):
    case = discover("isic", phantom_roots["isic"]).datalist()[0]
    load = LoadImaged(["image", "label"], reader=image_readers(), ensure_channel_first=True)
    loaded = load(case)
    assert loaded["image"].shape == (3, 80, 60)
    assert loaded["label"].shape == (1, 80, 60)


def test_missing_partners_and_other_task_files(copy_of):
    root = copy_of("isic")
    (root / TRUTH / "ISIC_0000001_segmentation.png").unlink()
    shutil.copy(
        root / TRUTH / "ISIC_0000000_segmentation.png",
        root / TRUTH / "ISIC_0000042_segmentation.png",
    )
    (root / INPUT / "ISIC_0000000_superpixels.png").write_bytes(b"")
    (root / INPUT / "LICENSE.txt").write_text("CC-0")
    index = discover("isic", root)
    assert [c.id for c in index.cases] == ["ISIC_0000000"]
    assert [(p.path.name, p.reason) for p in index.problems] == [
        ("ISIC_0000001.jpg", "mask missing (expected ISIC_0000001_segmentation.png)"),
        ("ISIC_0000042_segmentation.png", "image missing (expected ISIC_0000042.jpg)"),
    ]
    assert len(discover("isic", root, need_labels=False).cases) == 2


def test_folder_without_isic_images_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no ISIC images"):
        discover("isic", tmp_path)


def test_phantoms_are_skin_coloured_jpegs_with_darker_lesions_and_binary_masks(phantom_roots):
    root = phantom_roots["isic"]
    for number in (0, 1):
        with Image.open(root / INPUT / f"ISIC_000000{number}.jpg") as picture:
            assert (picture.format, picture.mode, picture.size) == ("JPEG", "RGB", (80, 60))
            image = np.asarray(picture, dtype=float)
        with Image.open(root / TRUTH / f"ISIC_000000{number}_segmentation.png") as mask_file:
            assert (mask_file.format, mask_file.mode) == ("PNG", "L")
            mask = np.asarray(mask_file)
        assert set(np.unique(mask)) == {0, 255}
        lesion, skin = image[mask == 255], image[mask == 0]
        assert lesion.mean() < 0.75 * np.median(skin, axis=0).mean()
        assert np.median(skin[:, 0]) > np.median(skin[:, 2])  # skin is redder than it is blue


def test_default_sizes_are_those_of_the_release(tmp_path):
    synthesize("isic", tmp_path, cases=4, seed=3)
    sizes = set()
    for path in (tmp_path / INPUT).glob("*.jpg"):
        with Image.open(path) as picture:
            sizes.add(picture.size)
    assert sizes <= {(600, 450), (1022, 767), (1024, 768), (640, 480)}
    assert len(sizes) > 1

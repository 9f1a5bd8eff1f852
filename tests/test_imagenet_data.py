"""ImageNet-style folders: WordNet-id labels, class-count checks, top-k evaluation, --val-dir.

Small folders of solid-colour PNGs are written by the tests; no real images are needed.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from _support.data import GOLDFISH, SHARK, TENCH, TISSUE, write_folder
from zsq_engine.data import ImageFolder
from zsq_engine.data.imagenet_classes import folder_class_indices, imagenet_wnids, is_wnid
from zsq_engine.evaluation import evaluate_topk

def test_wnid_list_is_the_standard_order():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)
    assert all(is_wnid(w) for w in wnids)
    assert wnids.index(TENCH) == 0 and wnids.index(GOLDFISH) == 1 and wnids.index(SHARK) == 2
    assert wnids.index(TISSUE) == 999


def test_subset_folder_gets_imagenet_indices(tmp_path):
    ds = ImageFolder(write_folder(tmp_path, [TISSUE, TENCH, SHARK]), resize_size=32, crop_size=32)
    assert ds.label_scheme == "imagenet" and ds.num_labels == 1000
    assert ds.class_to_idx == {TENCH: 0, SHARK: 2, TISSUE: 999}
    assert sorted({label for _, label in ds.samples}) == [0, 2, 999]
    x, y = ds[len(ds) - 1]
    assert x.shape == (3, 32, 32) and y == 999
    ds.check_num_classes(1000)
    with pytest.raises(ValueError, match="10 outputs.*ImageNet folder"):
        ds.check_num_classes(10, "tiny")


def test_plain_folder_labels_by_sorted_position(tmp_path):
    ds = ImageFolder(write_folder(tmp_path, ["dog", "cat", "bird"]), resize_size=32, crop_size=32)
    assert ds.label_scheme == "sorted" and ds.class_to_idx == {"bird": 0, "cat": 1, "dog": 2}
    with pytest.raises(ValueError, match="1000 outputs.*3 class directories"):
        ds.check_num_classes(1000, "resnet18")


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="not ImageNet-1k WordNet ids: n00000001"):
        folder_class_indices([TENCH, "n00000001"], "val")
    with pytest.raises(ValueError, match="mix WordNet ids.*other names \\(cats\\)"):
        folder_class_indices([TENCH, "cats"], "val")
    empty = tmp_path / "empty"
    (empty / TENCH).mkdir(parents=True)
    (empty / TENCH / "notes.txt").write_text("no image")
    with pytest.raises(RuntimeError, match="no image files"):
        ImageFolder(empty)


class FixedLogits(nn.Module):
    """Returns the rows of a fixed logit table, one per image, indexed by the image's first pixel."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].long()]


def test_topk_against_hand_count():
    # 4 images, 6 classes; true labels 0, 1, 2, 3
    table = torch.tensor([[9, 1, 0, 0, 0, 0],      # top-1 right
                          [9, 8, 7, 6, 5, 4],      # label 1 is 2nd: top-5 only
                          [9, 8, 7, 6, 5, 4],      # label 2 is 3rd: top-5 only
                          [0, 9, 8, 7, 6, 5.]])    # label 3 is 3rd: top-5 only
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    y = torch.tensor([0, 1, 2, 3])
    acc = evaluate_topk(FixedLogits(table), [(x[:3], y[:3]), (x[3:], y[3:])], ks=(1, 5), show_progress=False)
    assert acc[1] == pytest.approx(25.0) and acc[5] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="label 7 is outside the model's 6 outputs"):
        evaluate_topk(FixedLogits(table), [(x[:1], torch.tensor([7]))], show_progress=False)

"""Class names from the data's labels: any names, the seed's aliases, the class map, the order."""

from __future__ import annotations

import pytest

from trainables.classes import name_classes, parse_class_map
from trainables.vocab import class_key

COVID_DB = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]  # the COVID-19 Radiography DB


def test_any_names_keep_their_spelling_in_imagefolder_order():
    naming = name_classes(["tuberculosis", "Lung Opacity", "pleural_effusion", "Atelectasis"])
    # No seed class: sorted as torchvision's ImageFolder sorts folder names.
    assert naming.classes == ["Atelectasis", "Lung Opacity", "pleural_effusion", "tuberculosis"]
    assert [class_key(c) for c in naming.classes] == [
        "atelectasis",
        "lung_opacity",
        "pleural_effusion",
        "tuberculosis",
    ]


def test_seed_names_come_first_with_their_canonical_spelling():
    naming = name_classes(["zebra", "healthy", "Bacterial Pneumonia", "Aardvark"])
    assert naming.classes == ["NORMAL", "BACTERIA", "Aardvark", "zebra"]
    assert naming.of["healthy"] == "NORMAL"
    assert naming.sources["BACTERIA"] == ["Bacterial Pneumonia"]


def test_two_labels_aliasing_one_class_stay_apart_until_merged():
    naming = name_classes(COVID_DB)
    # COVID and Viral Pneumonia both alias VIRAL: kept apart, spelled as found, and the note
    # says how to merge them.
    assert naming.classes == ["NORMAL", "COVID", "Lung_Opacity", "Viral Pneumonia"]
    assert "COVID=VIRAL,Viral Pneumonia=VIRAL" in naming.notes[0]
    seed = name_classes(COVID_DB, class_map="seed")
    assert seed.classes == ["NORMAL", "VIRAL", "Lung_Opacity"]
    assert seed.sources["VIRAL"] == ["COVID", "Viral Pneumonia"]
    explicit = name_classes(COVID_DB, class_map="covid=VIRAL, viral pneumonia = viral")
    assert explicit.classes == seed.classes  # targets are spelled canonically too


def test_test_labels_join_trains_classes_by_any_spelling_and_strays_are_refused():
    naming = name_classes(["Lung Opacity", "NORMAL"], ["lung_opacity", "Healthy"])
    assert naming.of["lung_opacity"] == "Lung Opacity" and naming.of["Healthy"] == "NORMAL"
    with pytest.raises(ValueError, match=r"test has classes \['Edema'\]"):
        name_classes(["Lung Opacity", "NORMAL"], ["Edema"])


def test_bad_class_maps_and_colliding_keys_are_refused_by_name():
    with pytest.raises(ValueError, match="'COVID' is not LABEL=CLASS.*'seed'"):
        parse_class_map("COVID")
    with pytest.raises(ValueError, match="maps 'B' twice"):
        parse_class_map("a=X,b=Y,B=Z")
    with pytest.raises(ValueError, match=r"class_map names labels \['tb'\].*'Normal'"):
        name_classes(COVID_DB, class_map="TB=VIRAL")
    with pytest.raises(ValueError, match=r"share the metric key 'lung_opacity'"):
        name_classes(["lung.opacity", "Lung Opacity"])

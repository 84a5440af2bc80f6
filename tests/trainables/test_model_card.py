"""MODEL_CARD.md of a bundle whose classes, data path, experiment and skipped files are named to
attack it: every name is shown as spelled, and the card gains no link, tag or heading."""

from __future__ import annotations

import re

from trainables.bundle import save_bundle, update_bundle_meta
from trainables.config import TrialConfig
from trainables.model_card import MODEL_CARD_FILE
from trainables.models import build_model

LINK = "[click](javascript:alert%281%29)"
HOSTILE = [LINK, "**bold**", "a|b", "<img src=x onerror=alert(1)>"]
ROOT = "/data/<script>alert(2)</script>/# not a heading"
MARKDOWN_ESCAPE = re.compile(r"\\[!-/:-@\[-`{-~]")


def _card(tmp_path) -> str:
    cfg = TrialConfig(model="simple_cnn_10m", image_size=32, augment="none", data=ROOT)
    model = build_model(cfg, num_classes=len(HOSTILE)).eval()
    report = {
        "root": ROOT, "layout": "image-folder", "classes": HOSTILE, "image_size": 32,
        "counts": {"train": {c: 4 for c in HOSTILE}},
        "skipped": [{"path": f"{ROOT}/{LINK}.png", "reason": "</li><b>broken</b>\n# x"}],
    }  # fmt: skip
    source = {"experiment": f"/s/{LINK}", "metric": "val_acc", "mode": "max", "value": 0.5,
              "trial_id": "t_1", "checkpoint": "checkpoint_000001"}  # fmt: skip
    path = save_bundle(
        tmp_path / "b", model, cfg, HOSTILE, {"val_acc": 0.5}, [],
        extra={"data": report, "source": source},
    )  # fmt: skip
    metrics = [{"metric": "acc", "tta": "<b>none</b>", "value": 0.5, "low": 0.4, "high": 0.6}]
    update_bundle_meta(path, {"evaluation": {"data": ROOT, "images": 8, "metrics": metrics}})
    return (path / MODEL_CARD_FILE).read_text()


def test_the_model_card_shows_hostile_names_as_text(tmp_path):
    card = _card(tmp_path)
    meaning = MARKDOWN_ESCAPE.sub("", card)  # what is left keeps its Markdown meaning
    assert "<" not in meaning  # no raw HTML anywhere, the title included
    assert "](" not in meaning  # no link at all: the card links nothing
    assert "**bold**" not in meaning
    # Headings are the card's own: the title and its sections, nothing from a name.
    headings = [line for line in card.splitlines() if line.startswith("#")]
    assert headings[0].startswith("# Model card: simple\\_cnn\\_10m (")
    assert all(h.startswith("## ") for h in headings[1:]) and len(headings) == 7
    # Tables keep their shape: a|b is one cell.
    table = [line for line in card.splitlines() if line.startswith("| split")]
    assert len(re.split(r"(?<!\\)\|", table[0])) == len(HOSTILE) + 4
    # Each name is still there to read once the escapes are undone.
    readable = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", card)
    for name in [*HOSTILE, ROOT, "</li><b>broken</b>\\n# x"]:
        assert name in readable, name

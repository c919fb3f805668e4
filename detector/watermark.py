"""DAWN, dynamic adversarial watermarking (Szyller, Atli, Marchal & Asokan, ACM MM 2021): the
gateway answers a keyed, secret fraction of each client's queries with a wrong label and keeps
those queries; a surrogate trained on the answers reproduces the wrong labels, which an
independently trained model does with probability at most 1/(K-1) each.

Selection is deterministic per (secret key, client, image) and secret without the key:
``HMAC-SHA256(key, "select" | client | sha256(image))`` read as a number in [0, 1) below
`fraction` marks the query, and ``HMAC-SHA256(key, "label" | client | sha256(image))`` picks the
wrong label uniformly among the K-1 classes other than the victim's top-1. The same image sent
again by the same client gets the same answer (a thief cannot find the watermarks by asking
twice); another client, or another key, gets an independent selection.

A watermarked answer swaps the victim's probability of its top-1 class with that of the chosen
wrong class and, when the wrong class then holds less than `WATERMARK_MASS` (0.9) of the mass,
raises it to that and scales the other classes down in proportion (their order kept): the answer
is a confident wrong one (a label-only answer is the wrong label). The plain swap was too weak
for a thief that trains on probabilities: on the out-of-domain images a Knockoff thief sends,
the victim's top-1 probability is about 0.5 (median), so the swapped answer pulled the
surrogate only half-way to the wrong label and 100 replayed watermarks did not identify it.
Only the watermarked rows change (their top-1 is wrong either way), so a benign client's cost
is the watermark fraction of its top-1 answers. `WatermarkRecord` is what the gateway stores per
marked query (with its audit log, `serving.gateway.store`); `save_watermarks`/`load_watermarks`
move a client's set to an ``.npz`` file that `python -m detector.verify` replays against a
suspect model. Numpy and the standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import invalid

__all__ = [
    "WatermarkRecord",
    "Watermarker",
    "image_digest",
    "load_watermarks",
    "read_key",
    "save_watermarks",
]

MIN_KEY_BYTES = 16
WATERMARK_MASS = 0.9  # the least probability a watermarked answer gives its wrong label


def image_digest(image: np.ndarray) -> str:
    """SHA-256 of an image's shape, dtype and bytes (hex): the identity of a query."""
    array = np.ascontiguousarray(image)
    head = f"{array.dtype.str}{array.shape}".encode()
    return hashlib.sha256(head + array.tobytes()).hexdigest()


def read_key(path: str | os.PathLike[str]) -> bytes:
    """The watermark key from a file (its bytes, surrounding whitespace stripped)."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as err:
        raise invalid("watermark.key_file", str(path),
                      f"a readable file holding the secret key ({err.strerror})") from None
    if len(key) < MIN_KEY_BYTES:
        raise invalid("watermark.key_file", str(path),
                      f"a key of at least {MIN_KEY_BYTES} bytes (got {len(key)})")
    return key


@dataclass(frozen=True)
class WatermarkRecord:
    """One watermarked query: who sent it, the image, the wrong label answered and the truth."""

    client: str
    model: str
    digest: str
    label: int          # the wrong label the client received
    true_label: int     # the victim's top-1
    time: float
    image: np.ndarray   # uint8 [H, W, C] as the client sent it

    def image_bytes(self) -> bytes:
        return np.ascontiguousarray(self.image, dtype=np.uint8).tobytes()

    @staticmethod
    def image_from(blob: bytes, shape: Sequence[int]) -> np.ndarray:
        return np.frombuffer(blob, dtype=np.uint8).reshape(tuple(int(s) for s in shape)).copy()


class Watermarker:
    """Keyed selection and wrong labels (see the module docstring). `fraction` in (0, 0.5]."""

    def __init__(self, key: bytes, fraction: float) -> None:
        if not isinstance(key, (bytes, bytearray)):
            raise invalid("key", type(key).__name__, "the secret key as bytes")
        if len(key) < MIN_KEY_BYTES:
            raise invalid("key", f"{len(key)} bytes", f"at least {MIN_KEY_BYTES} bytes")
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
                or not math.isfinite(fraction) or not 0.0 < fraction <= 0.5:
            raise invalid("watermark.fraction", fraction, "a number in (0, 0.5]")
        self._key = bytes(key)
        self.fraction = float(fraction)

    def __repr__(self) -> str:  # never the key
        return f"Watermarker(fraction={self.fraction})"

    def _mac(self, purpose: bytes, client: str, digest: str) -> int:
        message = purpose + b"|" + client.encode("utf-8") + b"|" + digest.encode("ascii")
        return int.from_bytes(hmac.new(self._key, message, hashlib.sha256).digest()[:8], "big")

    def selected(self, client: str, digests: Sequence[str]) -> np.ndarray:
        """Which of these queries (by image digest) this client gets watermarked, bool [N]."""
        return np.array([self._mac(b"select", client, d) / 2.0**64 < self.fraction
                         for d in digests], dtype=bool)

    def wrong_label(self, client: str, digest: str, top1: int, classes: int) -> int:
        """The keyed wrong label for one query: uniform over the classes other than `top1`."""
        if classes < 2:
            raise invalid("classes", classes, "at least 2 classes")
        return int((int(top1) + 1 + self._mac(b"label", client, digest) % (classes - 1))
                   % classes)

    def choose(self, client: str, images: np.ndarray, top1: np.ndarray, classes: int
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Which rows of this batch `client` gets watermarked and their wrong labels.

        `top1`: the victim's top-1 class per image ``[N]``. Returns (marked row indices, their
        wrong labels, the digests of all N images).
        """
        imgs = np.asarray(images)
        top1 = np.asarray(top1).reshape(-1)
        if len(top1) != len(imgs):
            raise invalid("top1", f"{len(top1)} classes", f"one per image ({len(imgs)})")
        digests = [image_digest(image) for image in imgs]
        rows = np.flatnonzero(self.selected(client, digests))
        wrong = np.array([self.wrong_label(client, digests[i], int(top1[i]), classes)
                          for i in rows], dtype=np.int64)
        return rows, wrong, digests

    @staticmethod
    def relabel(probs: np.ndarray, rows: np.ndarray, wrong: np.ndarray,
                mass: float = WATERMARK_MASS) -> np.ndarray:
        """`probs` (float32 copy) with each marked row's top entry swapped with its wrong
        label's, so the wrong label is the row's strict top-1 (a tie becomes its one-hot), then
        the wrong label raised to at least `mass` of the row's total, the other entries scaled
        down in proportion (a row that does not sum to 1, e.g. scores, keeps its sum)."""
        out = np.array(probs, dtype=np.float32, copy=True)
        for i, w in zip(rows, wrong):
            row = out[i].astype(np.float64)
            top = int(np.argmax(row))
            row[top], row[w] = row[w], row[top]
            if np.count_nonzero(row == row[w]) > 1:
                row[:] = 0.0
                row[w] = 1.0
            total, rest = row.sum(), row.sum() - row[w]
            if total > 0 and row[w] < mass * total:
                others = np.arange(len(row)) != w
                row[others] *= (1.0 - mass) * total / rest if rest > 0 else 0.0
                row[w] = mass * total
            out[i] = row
        return out

    def apply(self, client: str, images: np.ndarray, probs: np.ndarray, *, model: str = "",
              now: float = 0.0) -> tuple[np.ndarray, list[WatermarkRecord]]:
        """Watermark `client`'s answers `probs` [N, K] to `images` [N, H, W, C].

        Returns the answers (float32, the marked rows with their top-1 and wrong-label
        probabilities swapped) and one `WatermarkRecord` per marked row.
        """
        p = np.asarray(probs, dtype=np.float32)
        imgs = np.asarray(images)
        if p.ndim != 2 or p.shape[1] < 2 or len(imgs) != len(p):
            raise invalid("probs", f"array of shape {p.shape} for {len(imgs)} images",
                          "probability rows [N, K >= 2], one per image")
        top1 = np.argmax(p, axis=1)
        rows, wrong, digests = self.choose(client, imgs, top1, p.shape[1])
        records = self.records(client, imgs, rows, wrong, top1, digests, model=model, now=now)
        return self.relabel(p, rows, wrong), records

    @staticmethod
    def records(client: str, images: np.ndarray, rows: np.ndarray, wrong: np.ndarray,
                top1: np.ndarray, digests: Sequence[str], *, model: str = "",
                now: float = 0.0) -> list[WatermarkRecord]:
        """The `WatermarkRecord`s of the rows `choose` marked."""
        return [WatermarkRecord(client, model, digests[i], int(w), int(top1[i]), float(now),
                                np.array(images[i], dtype=np.uint8, copy=True))
                for i, w in zip(rows, wrong)]


def save_watermarks(path: str | os.PathLike[str], records: Sequence[WatermarkRecord]) -> Path:
    """Write records (one client's, or several) to an ``.npz`` (atomically)."""
    if not records:
        raise invalid("watermarks", "0 records", "at least one watermark record")
    shapes = {r.image.shape for r in records}
    if len(shapes) != 1:
        raise invalid("watermarks", f"images of shapes {sorted(shapes)}", "one image shape")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, images=np.stack([r.image for r in records]).astype(np.uint8),
             labels=np.array([r.label for r in records], np.int64),
             true_labels=np.array([r.true_label for r in records], np.int64),
             clients=np.array([r.client for r in records]),
             models=np.array([r.model for r in records]),
             digests=np.array([r.digest for r in records]),
             times=np.array([r.time for r in records], np.float64))
    os.replace(tmp, path)
    return path


def load_watermarks(path: str | os.PathLike[str]) -> list[WatermarkRecord]:
    """Read a file written by `save_watermarks`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            fields = {k: data[k] for k in ("images", "labels", "true_labels", "clients",
                                           "models", "digests", "times")}
    except (OSError, KeyError, ValueError) as err:
        raise invalid("watermarks", str(path), f"a watermark .npz written by the gateway "
                      f"({type(err).__name__}: {err})") from None
    return [WatermarkRecord(str(c), str(m), str(d), int(lab), int(t), float(tm), img)
            for img, lab, t, c, m, d, tm in zip(fields["images"], fields["labels"],
                                                 fields["true_labels"], fields["clients"],
                                                 fields["models"], fields["digests"],
                                                 fields["times"])]


def agreement(records: Sequence[WatermarkRecord], predictions: Any) -> tuple[int, int]:
    """(how many suspect predictions equal the watermark's wrong label, how many compared)."""
    pred = np.asarray(predictions).reshape(-1)
    labels = np.array([r.label for r in records], np.int64)
    if pred.shape != labels.shape:
        raise invalid("predictions", f"{pred.shape[0]} predictions",
                      f"one per watermark ({len(labels)})")
    return int(np.sum(pred == labels)), int(len(labels))

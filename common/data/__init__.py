"""The data loader layer: one function, `load_dataset`, turns a dataset *spec* into uint8 images.

Victim training, the attacks' transfer sets (Knockoff Nets' natural-image set P_A, Orekondy et al.
2019) and the OOD query detector (Atli et al. 2020) all read their images through it, so every
package sees the same pixels, labels and class order. A spec is one of:

1. **tensorflow-datasets**: ``tfds:NAME`` (``tfds:cifar10``, ``tfds:mnist:3.0.1``) or a bare
   registered name (``cifar10``) when no file or folder of that name exists. Data already prepared
   in `data_dir` (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``) is read as is. Otherwise
   it is downloaded with tfds' own ``download_and_prepare`` if this machine is online, decided by
   ``MEXT_OFFLINE`` (``1``: never download, ``0``: always try) or, when that is unset, by a
   3-second TCP probe of ``storage.googleapis.com:443``. Offline, nothing is written and a
   `UsageError` says which local copy to pass instead.
2. **Image folder**, a directory or a ``.zip``: ``[<split>/]<class>/<image>``. With split folders
   (``train/``, ``test/``, ...) `split` picks one; without, the whole folder is the split ``all``
   (``train`` is accepted too). Classes are the sorted class-folder names of all splits together.
   One top folder that is not itself a split or class folder (``cifar10/train/cat/1.png``) is
   skipped.
3. **Tiny-ImageNet layout**, a directory or ``.zip``, recognised by ``wnids.txt`` beside
   ``train/<wnid>/images/`` (possibly inside a top folder such as ``tiny-imagenet-200/``).
   Splits ``train`` and ``val`` (``val/images/`` labelled by column 2 of
   ``val/val_annotations.txt``, or ``val/<wnid>/images/``). Classes are the wnids in
   ``wnids.txt`` order; ``words.txt`` fills `ImageDataset.class_descriptions`.
4. **Arrays**: a ``.npz`` with ``x_<split>``/``y_<split>`` pairs (or ``x``/``y``, the split
   ``all``) and an optional ``class_names`` array; a directory or a ``.tar``/``.tar.gz``/``.tgz``/
   ``.tar.xz``/``.tar.bz2`` of ``x_<split>.npy``/``y_<split>.npy`` files; or one ``.npy`` of
   images whose labels sit beside it: ``x.npy``/``x_<split>.npy`` take ``y.npy``/``y_<split>.npy``
   (``x_test.npy`` -> ``y_test.npy``, split ``test``), any other name adds ``_labels``
   (``digits.npy`` -> ``digits_labels.npy``, split ``all``). Images are ``[N, H, W]`` (given a
   channel axis) or ``[N, H, W, 1|3]`` uint8; labels ``[N]`` integers. Class names are
   ``"0"`` .. ``"K-1"`` unless a class list says otherwise: ``classes.txt`` (one name a line) or
   ``classes.json`` (a list) inside a directory or tar, or beside the file as
   ``<stem>.classes.txt``/``.json`` or ``classes.txt``/``.json``.

`split` may join several splits with ``+`` (``train+val``), concatenated in that order. Then
`image_size` resizes (Pillow's antialiased bilinear filter), `channels` converts (1: ITU-R 601
luma, 3: grey copied to RGB), `exclude_classes` drops classes (their images and their names;
labels are re-indexed) and `limit` keeps a seeded, class-stratified random subset.

Decoded image folders, zips, Tiny-ImageNet sets, tar archives, resized arrays and prepared
tensorflow-datasets splits are cached under ``$MEXT_CACHE_DIR`` (default ``~/.cache/mext``) as
``.npz`` files keyed by the source's absolute path, size and modification time (for
tensorflow-datasets: its data folder, name and version), the split, `image_size` and
`channels`; they are written atomically, and an unreadable cache file is rebuilt
(``cache=False`` skips the cache). Images are decoded by Pillow on a thread pool fed in order by
the thread reading the archive.

`sample_dataset` picks a seeded sample of a split before decoding it, `prepare_dataset` makes a
spec readable here (downloading by the policy above) and `common.data.presets` names the
datasets of the full-scale study (Atli et al. 2020) and where each comes from.

One module per concept: `dataset` (the `ImageDataset` type), `spec` (spec forms and argument
checks), `loader` (the entry points), `folders` (image folders and zips), `tinyimagenet`,
`arrays` (``.npz``/``.npy``/tar), `tfds_source` (tensorflow-datasets and the download policy),
`imaging` (decoding and resizing), `cache`, `presets`.
"""

from __future__ import annotations

from common.data.cache import cache_dir
from common.data.dataset import ImageDataset
from common.data.loader import (
    count_images,
    exclude_classes,
    load_dataset,
    prepare_dataset,
    sample_dataset,
    split_names,
)
from common.data.tfds_source import can_download

__all__ = ["ImageDataset", "cache_dir", "can_download", "count_images", "exclude_classes",
           "load_dataset", "prepare_dataset", "sample_dataset", "split_names"]

"""`python -m quickstart`: the whole story on the embedded default, one command, in minutes.

It runs, and prints before running, the same commands a user types (README "Step by step"):
1. train a CIFAR-10 CNN victim and export it for TF Serving (`python -m victim_export`);
2. serve it with the embedded model server started with `tensorflow_model_server`'s flags
   (`python -m serving.model_server --model_config_file=...`);
3. query CIFAR-10 test images through the gRPC Predict API with the project's client and
   compare the accuracy seen through the wire with the one the exporter measured in-process;
4. steal it with Knockoff Nets through the same API (`python -m attack.knockoff`): natural images
   outside CIFAR-10's classes as the transfer set, the ImageNet MobileNet (alpha 0.25) as the
   surrogate's backbone, and print the report's headline;
5. train Atli et al.'s OOD query detector for this victim (`python -m detector.train`) on other
   natural images than the ones the attacker queries;
6. defend: put the gateway (`python -m serving.gateway`) in front of the server with the detector
   and a policy that answers flagged clients with labels only, give the attacker an API key,
   run the same attack through the gateway, and print when the client was flagged and what
   the attacker got.

Where the data come from: `--data-dir` holding the shared files (CIFAR-10 zip, Tiny-ImageNet zip
and its list of CIFAR-10-like classes, the MobileNet weights file); where that folder is absent
and this machine can download, CIFAR-10 from tensorflow-datasets (`cifar10`), Imagenette
(`imagenette/160px-v2`, its two CIFAR-10 classes, a dog breed and the garbage truck, left out by
name) as the natural images, and the MobileNet weights from Keras (`weights="imagenet"`).

The default settings fit the story into minutes on a 2-core CPU (a short victim training on a
subset, one surrogate per attack, a detector trained on fewer images, evaluation on a stated
subset of the test set); `--full` takes the longer settings (every training image, the whole
test set, a three-point learning curve), and each setting has its own flag. Every figure printed
says how many images it was measured on. A finished stage is not run again: an exported
victim, a trained detector or a finished attack in `--out` is reused (an interrupted attack
resumes); `--out` remembers its settings and refuses others.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from common.errors import UsageError, invalid

MODEL = "cifar10_cnn"
LOCAL_FILES = ("cifar10_jpeg_q75.zip", "tinyimagenet200_val10k_train50pc.zip",
               "tinyimagenet_cifar10_overlap_wnids.txt", "mobilenet_2_5_224_tf_no_top.h5")
# Online: tensorflow-datasets names, and the Imagenette classes (ImageNet wnids, as
# tensorflow-datasets names them) that are CIFAR-10 classes, left out of the natural images.
ONLINE_DATASET = "cifar10"
ONLINE_TRANSFER = "imagenette/160px-v2"
ONLINE_OVERLAP = {"n02102040": "English springer (a dog: CIFAR-10 'dog')",
                  "n03417042": "garbage truck (CIFAR-10 'truck')"}
TRANSFER_SIZE = 64  # side of the prepared copy of the online natural images (as Tiny-ImageNet)
# Transfer images the attack keeps out of its queries to measure fidelity off the test set.
HELDOUT = 500
# Images per pool, for checking --budget before anything runs: Tiny-ImageNet's val split
# without its 24 CIFAR-10-like classes (176 x 50); Imagenette 160px-v2's train split without
# its 2 CIFAR-10 classes (9,469 - 955 - 961).
POOL_SIZE = {"local": 8800, "online": 7553}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the run trains and measures; `quick` is the default, `full` is `--full`."""

    epochs: int
    limit: int | None  # victim training images (None: all 50,000)
    augment: str
    learning_rate: float
    victim_args: tuple[str, ...]  # --arch-args of the victim's CNN
    test_limit: int | None  # test images queried and evaluated on (None: all 10,000)
    budget: int
    attack_epochs: int
    curve_points: int
    detector_epochs: int
    detector_limit: int  # benign images the detector trains on
    detector_attack_limit: int | None  # natural images it trains on (None: the whole split)


PROFILES = {
    # Measured on 2 cores (docs/quickstart.md). The victim: the same CNN without its dropout
    # (a 3-epoch run underfits; dropout only slows it further: 0.48 test accuracy with it, see
    # the page) at a higher learning rate, on 16,000 images (20,000 took 8 min 13 s end to end
    # on a quiet machine, over the 8-minute goal); one surrogate per attack (no learning
    # curve); a detector on 3,000 + 3,000 images; figures on 2,000 test images.
    "quick": Settings(epochs=3, limit=16000, augment="flip", learning_rate=0.002,
                      victim_args=("block_dropout=[0,0,0]", "dense_dropout=0"), test_limit=2000,
                      budget=3000, attack_epochs=5, curve_points=1, detector_epochs=3,
                      detector_limit=3000, detector_attack_limit=3000),
    # The settings the quickstart had before (16 minutes on a quiet 2-core machine).
    "full": Settings(epochs=3, limit=None, augment="crop+flip", learning_rate=0.001,
                     victim_args=(), test_limit=None, budget=5000, attack_epochs=5,
                     curve_points=3, detector_epochs=3, detector_limit=10000,
                     detector_attack_limit=None),
}
# The gateway flags a client once this share of its last 256 queries (at least 64) looks out
# of distribution; the detector's threshold lets about 1% of benign queries through as flagged,
# so a benign client's share stays near 0.01, far below it.
FLAG_LEVEL = 0.25


@dataclasses.dataclass(frozen=True)
class Sources:
    """Where each input comes from: local files (`--data-dir`) or downloads (online)."""

    mode: str  # "local" or "online"
    dataset: str  # the victim's dataset spec
    transfer: str  # the attacker's natural images (a spec)
    transfer_split: str
    detector_split: str  # split of `transfer` the detector trains on (disjoint from the attack's)
    exclude: str | None  # class list to drop from `transfer`
    weights: str  # MobileNet weights: a file or "imagenet"


def _show(cmd: list[str]) -> None:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m quickstart",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir",
                        default=os.environ.get("MEXT_SHARED_DATA", "../shared/data"),
                        help="folder with " + ", ".join(LOCAL_FILES) + "; where it is absent "
                             "and this machine can download, CIFAR-10 and Imagenette come from "
                             "tensorflow-datasets and the MobileNet weights from Keras "
                             "(default: ../shared/data)")
    parser.add_argument("--out", default="runs/quickstart", help="output folder")
    parser.add_argument("--full", action="store_true",
                        help="the longer settings: every training image, the whole test set, "
                             "5,000 queries, a three-point learning curve, a detector trained "
                             "on 10,000 images (about 16 minutes on a quiet 2-core machine)")
    quick, full = PROFILES["quick"], PROFILES["full"]

    def both(name: str) -> str:
        a, b = getattr(quick, name), getattr(full, name)
        return f"default {'all' if a is None else a}; --full: {'all' if b is None else b}"

    parser.add_argument("--epochs", type=int, help=f"victim training epochs ({both('epochs')})")
    parser.add_argument("--limit", type=int,
                        help=f"victim training images ({both('limit')})")
    parser.add_argument("--test-limit", type=int,
                        help=f"test images queried and evaluated on ({both('test_limit')})")
    parser.add_argument("--budget", type=int, help=f"attack queries ({both('budget')})")
    parser.add_argument("--attack-epochs", type=int,
                        help=f"surrogate epochs ({both('attack_epochs')})")
    parser.add_argument("--detector-epochs", type=int,
                        help=f"OOD detector epochs ({both('detector_epochs')})")
    parser.add_argument("--detector-limit", type=int,
                        help=f"benign images the OOD detector trains on ({both('detector_limit')})")
    parser.add_argument("--no-defence", action="store_true",
                        help="stop after the undefended attack (steps 1-4)")
    return parser


def settings_from(ns: argparse.Namespace) -> Settings:
    """The profile (`--full` or the quick default) with the flags given on top, checked."""
    base = PROFILES["full" if ns.full else "quick"]
    chosen = {name: getattr(ns, name) for name in ("epochs", "limit", "test_limit", "budget",
                                                   "attack_epochs", "detector_epochs",
                                                   "detector_limit")
              if getattr(ns, name) is not None}
    for name, value in chosen.items():
        if value < 1:
            raise invalid(name.replace("_", "-"), value, "a positive integer")
    return dataclasses.replace(base, **chosen)


def _writable(path: Path) -> bool:
    """Whether `path` can be created or written: its nearest existing folder is writable."""
    probe = path.resolve()
    while not probe.exists():
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def resolve_sources(data_dir: str, out: Path) -> Sources:
    """The local files when `data_dir` holds them all, else the downloads when this machine can
    download; otherwise one `UsageError` naming both ways."""
    data = Path(data_dir).expanduser()
    missing = [name for name in LOCAL_FILES if not (data / name).is_file()]
    if not missing:
        return Sources("local", str(data / LOCAL_FILES[0]), str(data / LOCAL_FILES[1]),
                       "val", "train", str(data / LOCAL_FILES[2]), str(data / LOCAL_FILES[3]))
    from common.data import can_download

    why = "absent" if not data.is_dir() else f"missing {', '.join(missing)}"
    if not can_download():
        raise invalid("data-dir", data_dir,
                      f"a folder holding {', '.join(LOCAL_FILES)} ({why}), or a machine that can "
                      f"download CIFAR-10 and Imagenette (tensorflow-datasets) and the MobileNet "
                      f"weights (Keras); this one is offline")
    return Sources("online", f"tfds:{ONLINE_DATASET}",
                   str(out / "data" / f"imagenette{TRANSFER_SIZE}.npz"),
                   "train", "validation", None, "imagenet")


def fetch_online(out: Path, *, dataset: str = ONLINE_DATASET, transfer: str = ONLINE_TRANSFER,
                 overlap: dict[str, str] | None = None, size: int = TRANSFER_SIZE,
                 data_dir: str | None = None) -> Path:
    """Download (tensorflow-datasets) the victim's dataset and the natural images, leave out the
    natural images' classes that are the victim's (`overlap`, by class name), and write them at
    `size` x `size` as `<out>/data/imagenette<size>.npz` (``x_train``, ``y_train``,
    ``x_validation``, ``y_validation``, ``class_names``): the attack and the detector need
    images of one size. Returns that file; a finished file is reused."""
    import numpy as np

    from common.data import load_dataset, split_names
    from common.fileio import write_text_atomic

    overlap = ONLINE_OVERLAP if overlap is None else overlap
    target = out / "data" / f"imagenette{size}.npz"
    load_dataset(f"tfds:{dataset}", "test", data_dir=data_dir)  # downloads and prepares it
    if target.is_file():
        return target
    exclude = out / "data" / "imagenette_cifar10_classes.txt"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(exclude, "".join(f"{wnid}  # {what}\n" for wnid, what in overlap.items()))
    arrays: dict[str, np.ndarray] = {}
    names: tuple[str, ...] = ()
    for split in ("train", "validation"):
        part = load_dataset(f"tfds:{transfer}", split, image_size=size, channels=3,
                            exclude_classes=exclude, data_dir=data_dir)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = part.images, part.labels
        names = part.class_names
    assert split_names(f"tfds:{transfer}", data_dir=data_dir)  # prepared: its splits are known
    partial = target.with_suffix(".partial.npz")
    np.savez(partial, **arrays, class_names=np.array(names))
    os.replace(partial, target)
    return target


def same_record(path: Path, record: dict) -> bool:
    """Whether `path` is absent or records `record` (what an earlier run in `--out` used)."""
    if not path.is_file():
        return True
    try:
        return json.loads(path.read_text()) == json.loads(json.dumps(record))
    except (OSError, ValueError):
        return False


def _run(cmd: list[str], env: dict) -> bool:
    _show(cmd)
    return subprocess.run(cmd, env=env).returncode == 0


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished child processes (user + system)."""
    me, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                          resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


class _Clock:
    """Per-step wall-clock and CPU seconds (this process and the commands it ran), printed
    after each step and as a table at the end: on a shared machine, CPU seconds are the
    figure that does not grow with the other jobs' load."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, float, float]] = []
        self._start = self._step = time.perf_counter()
        self._cpu_start = self._cpu_step = _cpu_seconds()

    def done(self, name: str) -> None:
        now, cpu = time.perf_counter(), _cpu_seconds()
        self.steps.append((name, now - self._step, cpu - self._cpu_step))
        print(f"      ({name}: {now - self._step:.0f} s, {cpu - self._cpu_step:.0f} CPU s)",
              flush=True)
        self._step, self._cpu_step = now, cpu

    def table(self) -> str:
        wall, cpu = time.perf_counter() - self._start, _cpu_seconds() - self._cpu_start
        rows = "\n".join(f"  {name:<30}{seconds:6.0f} s {used:8.0f} CPU s"
                         for name, seconds, used in self.steps)
        return (f"time per step (wall clock, CPU):\n{rows}\n"
                f"  {'total':<30}{wall:6.0f} s {cpu:8.0f} CPU s")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    out = Path(ns.out)
    try:
        settings = settings_from(ns)
        if not _writable(out):
            raise invalid("out", ns.out, "a folder this user can create or write")
        sources = resolve_sources(ns.data_dir, out)
        if settings.budget > POOL_SIZE[sources.mode] - HELDOUT:
            raise invalid("budget", settings.budget,
                          f"at most {POOL_SIZE[sources.mode] - HELDOUT} (the attacker's pool)")
        record = {"settings": dataclasses.asdict(settings), "data": sources.mode}
        saved = out / "quickstart.json"
        if not same_record(saved, record):
            raise invalid("out", ns.out, "a new folder, or the settings it was run with "
                                         f"(recorded in {saved})")
    except UsageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(record, indent=2) + "\n")
    except OSError as err:
        print(f"{parser.prog}: error: {invalid('out', ns.out, f'a writable folder ({err})')}",
              file=sys.stderr)
        return 2
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    clock = _Clock()
    print(f"settings ({'--full' if ns.full else 'quick; --full for the longer ones'}): "
          + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(settings).items()), flush=True)

    if sources.mode == "online":
        print(f"[0/6] {ns.data_dir} is absent: download CIFAR-10 ({ONLINE_DATASET}) and "
              f"Imagenette ({ONLINE_TRANSFER}, without its CIFAR-10 classes "
              f"{', '.join(ONLINE_OVERLAP)}) with tensorflow-datasets, as {TRANSFER_SIZE}x"
              f"{TRANSFER_SIZE} images in {sources.transfer}; the MobileNet weights come from "
              "Keras (--weights imagenet)", flush=True)
        fetch_online(out)
        clock.done("data (tensorflow-datasets)")

    victims = out / "victims"
    if (victims / MODEL / "card.json").is_file():
        print(f"[1/6] victim already exported in {victims / MODEL}; reusing it", flush=True)
    else:
        print("[1/6] train the victim and export it for TF Serving", flush=True)
        cmd = [sys.executable, "-m", "victim_export", "--dataset", sources.dataset,
               "--arch", "cnn", "--epochs", str(settings.epochs), "--augment", settings.augment,
               "--learning-rate", str(settings.learning_rate),
               "--out", str(victims), "--name", MODEL]
        if settings.victim_args:
            cmd += ["--arch-args", *settings.victim_args]
        if settings.limit:
            cmd += ["--limit", str(settings.limit)]
        if not _run(cmd, env):
            return 1
    clock.done("1 victim")
    card = json.loads((victims / MODEL / "card.json").read_text())
    version, entry = max(card["versions"].items(), key=lambda kv: int(kv[0]))

    from serving import testing

    print("[2/6] serve it with the embedded model server (TF Serving's flags)", flush=True)
    server = testing.model_server(config_file=victims / "models.config", process=True,
                                  rest=True, log_file=out / "model_server.log")
    _show(server.args)
    try:
        clock.done("2 serve")
        return _served(ns, settings, sources, out, server.target, version, entry, env, clock)
    finally:
        server.stop()


def _served(ns, settings: Settings, sources: Sources, out: Path, target: str, version: str,
            entry: dict, env: dict, clock: _Clock) -> int:
    """Steps 3 and 4 against the running server, then the defended steps."""
    from common.data import load_dataset
    from serving.client import ServingClient

    test = load_dataset(sources.dataset, "test", limit=settings.test_limit)
    on_test = (f"{len(test)} test images" if settings.test_limit is None else
               f"{len(test)} test images (a class-stratified subset, --test-limit)")
    print(f"[3/6] query {on_test} through gRPC Predict", flush=True)
    with ServingClient(target, MODEL, max_in_flight=4, batch_size=256) as client:
        info = client.metadata()
        print(f"      signature: {info.input_name} {info.input_dtype} "
              f"{list(info.input_shape)} -> {info.probabilities} [batch, {info.num_classes}]")
        start = time.perf_counter()
        probs = client.predict(test.images)
        spent = time.perf_counter() - start
        accuracy = float((probs.argmax(1) == test.labels).mean())
        print(f"      {client.queries} queries in {spent:.1f} s "
              f"({client.queries / spent:.0f} images/s)")
    trained_on = f"{settings.limit} training images" if settings.limit else "all training images"
    print(f"\nvictim {MODEL} version {version} ({entry.get('epochs_run')} epochs on "
          f"{trained_on}, {entry.get('training_seconds')} s): test accuracy through gRPC "
          f"{accuracy:.4f} on {on_test}; in-process at export {entry.get('test_accuracy')} on "
          f"{entry.get('test_examples')} test images")
    clock.done("3 query the test set")

    print("\n[4/6] steal it with Knockoff Nets through the same gRPC API", flush=True)
    run_dir = out / "knockoff"
    cmd = [sys.executable, "-m", "attack.knockoff", "--grpc", target, "--model", MODEL,
           "--transfer-set", sources.transfer, "--transfer-split", sources.transfer_split]
    if sources.exclude:
        cmd += ["--exclude-classes", sources.exclude]
    cmd += ["--heldout", str(HELDOUT), "--budget", str(settings.budget),
            "--backbone", "mobilenet", "--arch-args", "alpha=0.25", "--input-size", "96",
            "--weights", sources.weights, "--epochs", str(settings.attack_epochs),
            "--test-set", sources.dataset, "--curve-points", str(settings.curve_points),
            "--out", str(run_dir)]
    if settings.test_limit:
        cmd += ["--test-limit", str(settings.test_limit)]
    if (run_dir / "report.json").is_file():
        print(f"      attack already finished in {run_dir}; reusing its report")
    else:
        if not _run(cmd + (["--resume"] if (run_dir / "config.json").is_file() else []), env):
            return 1
    e = json.loads((run_dir / "report.json").read_text())["evaluation"]
    print(f"\nsurrogate after {settings.budget} queries: accuracy {e['surrogate_acc']:.4f} vs "
          f"victim {e['victim_acc']:.4f} (ratio {e['ratio']:.2f}) on {on_test}; fidelity on "
          f"them {e['fidelity_test']:.4f}, on {HELDOUT} held-out transfer images "
          f"{e['fidelity_transfer_heldout']:.4f}, on uniform noise {e['fidelity_noise']:.4f}"
          f"\nreport: {run_dir / 'report.md'}")
    clock.done("4 attack")
    if ns.no_defence:
        print("\n" + clock.table())
        return 0
    code = _defended(settings, sources, out, target, cmd, env, clock, on_test)
    if code == 0:
        print("\n" + clock.table())
    return code


def _defended(settings: Settings, sources: Sources, out: Path, upstream: str,
              attack_cmd: list[str], env: dict, clock: _Clock, on_test: str) -> int:
    """Steps 5 and 6: the detector, the gateway in front of the server, the same attack."""
    import shutil

    from serving import testing

    detector = out / "detectors" / "cifar10_ood" / "1"
    if (detector / "saved_model.pb").is_file():
        print(f"\n[5/6] detector already exported in {detector}; reusing it", flush=True)
    else:
        print("\n[5/6] train the OOD query detector (victim's data vs natural images outside "
              "its task, none of them among the attacker's queries)", flush=True)
        cmd = [sys.executable, "-m", "detector.train", "--benign", sources.dataset,
               "--attack", sources.transfer, "--attack-split", sources.detector_split]
        if sources.exclude:
            cmd += ["--exclude-classes", sources.exclude]
        cmd += ["--backbone", "MobileNet", "--arch-args", "alpha=0.25",
                "--weights", sources.weights, "--input-size", "96",
                "--benign-limit", str(settings.detector_limit)]
        if settings.detector_attack_limit:
            cmd += ["--attack-limit", str(settings.detector_attack_limit)]
        cmd += ["--epochs", str(settings.detector_epochs),
                "--work-dir", str(out / "detector_work"), "--out", str(detector)]
        if not _run(cmd, env):
            return 1
    clock.done("5 detector")

    print("\n[6/6] defend: the gateway in front of the server, the same attack through it",
          flush=True)
    state = out / "gateway_state.db"
    for stale in out.glob("gateway_state.db*"):
        stale.unlink()  # a fresh gateway: the attacker starts unflagged
    keys = [sys.executable, "-m", "serving.gateway", "keys", "add", "--state",
            f"sqlite:{state}", "--client", "attacker"]
    _show(keys)
    added = subprocess.run(keys, env=env, capture_output=True, text=True)
    if added.returncode != 0:
        print(added.stderr.strip(), file=sys.stderr)
        return 1
    key = added.stdout.strip().split()[-1]
    policy = {
        "limits": {"budget": 100000, "rate_per_second": 1000, "burst": 4000},
        "detectors": {"ood": {"path": str(detector.resolve()), "window": 256, "level": FLAG_LEVEL,
                              "min_queries": 64}},
        "on_flag": {"action": "degrade", "policy": "label_only"},
        "models": [MODEL]}
    gateway = testing.gateway(upstream, policy=policy, state=state.resolve(),
                              workdir=out.resolve(), process=True, key=key, models=[MODEL])
    _show(gateway.args)
    try:
        run_dir = out / "knockoff_defended"
        if any((run_dir / stale).exists() for stale in ("config.json", "journal.bin")):
            shutil.rmtree(run_dir)  # the gateway state is fresh: so is the attack
        cmd = list(attack_cmd)
        cmd[cmd.index("--grpc") + 1] = gateway.target
        cmd[cmd.index("--out") + 1] = str(run_dir)
        cmd += ["--api-key", key]
        _show([c if c != key else "$KEY" for c in cmd])
        if subprocess.run(cmd, env=env).returncode != 0:
            return 1
    finally:
        gateway.stop()
    from serving.gateway.store import open_store

    store = open_store(f"sqlite:{state}")
    try:
        records = [r for r in store.audit_records() if r.client == "attacker"
                   and r.method == "Predict" and r.code == "OK"]
    finally:
        store.close()
    sent, flagged_at, degraded = 0, None, 0
    for record in records:
        if sent >= settings.budget:
            break  # what follows is the evaluator's victim queries, not the attack's
        sent += record.rows
        if record.verdicts.get("flagged"):
            flagged_at = sent if flagged_at is None else flagged_at
        if record.action.startswith("degrade"):
            degraded += record.rows
    e = json.loads((run_dir / "report.json").read_text())["evaluation"]
    when = f"flagged by the OOD detector after {flagged_at} queries" if flagged_at else \
        "never flagged"
    print(f"\nthrough the gateway: the attacker was {when}; {degraded} of its {sent} answers "
          f"were labels only.\nsurrogate: accuracy {e['surrogate_acc']:.4f} vs victim "
          f"{e['victim_acc']:.4f} (ratio {e['ratio']:.2f}) on {on_test}, fidelity on them "
          f"{e['fidelity_test']:.4f}\nreport: {run_dir / 'report.md'}; audit log: {state}")
    clock.done("6 defended attack")
    return 0


if __name__ == "__main__":
    sys.exit(main())

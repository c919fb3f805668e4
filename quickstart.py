"""`python -m quickstart`: the whole story on the embedded default, one command.

It runs, and prints before running, the same commands a user types (README "Step by step"):
1. train a CIFAR-10 CNN victim and export it for TF Serving (`python -m victim_export`);
2. serve it with the embedded model server started with `tensorflow_model_server`'s flags
   (`python -m serving.model_server --model_config_file=...`);
3. query the CIFAR-10 test set through the gRPC Predict API with the project's client and
   compare the accuracy seen through the wire with the one the exporter measured in-process;
4. steal it with Knockoff Nets through the same API (`python -m attack.knockoff`): Tiny-ImageNet
   images outside CIFAR-10's classes as the transfer set, the real ImageNet MobileNet (alpha
   0.25) from the shared data as the surrogate's backbone, and print the report's headline;
5. train Atli et al.'s OOD query detector for this victim (`python -m detector.train`);
6. defend: put the gateway (`python -m serving.gateway`) in front of the server with the detector
   and a policy that answers flagged clients with labels only, give the attacker an API key,
   run the same attack through the gateway, and print when the client was flagged and what
   the attacker got.

A finished stage is not run again: an exported victim or a finished attack in `--out` is reused
(an interrupted attack resumes).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common.errors import UsageError, invalid
from serving.model_server import free_port, launch

MODEL = "cifar10_cnn"



def _show(cmd: list[str]) -> None:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m quickstart",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir",
                        default=os.environ.get("MEXT_SHARED_DATA", "../shared/data"),
                        help="folder with cifar10_jpeg_q75.zip (default: ../shared/data)")
    parser.add_argument("--out", default="runs/quickstart", help="output folder")
    parser.add_argument("--epochs", type=int, default=3, help="victim training epochs")
    parser.add_argument("--limit", type=int, default=None,
                        help="train on at most this many images (quick look)")
    parser.add_argument("--test-limit", type=int, default=None,
                        help="query at most this many test images")
    parser.add_argument("--budget", type=int, default=5000, help="attack queries")
    parser.add_argument("--attack-epochs", type=int, default=5, help="surrogate epochs")
    parser.add_argument("--detector-epochs", type=int, default=3, help="OOD detector epochs")
    parser.add_argument("--detector-limit", type=int, default=10000,
                        help="benign images the OOD detector trains on")
    parser.add_argument("--no-defence", action="store_true",
                        help="stop after the undefended attack (steps 1-4)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        data = Path(ns.data_dir)
        dataset = data / "cifar10_jpeg_q75.zip"
        needed = ("cifar10_jpeg_q75.zip", "tinyimagenet200_val10k_train50pc.zip",
                  "tinyimagenet_cifar10_overlap_wnids.txt", "mobilenet_2_5_224_tf_no_top.h5")
        missing = [name for name in needed if not (data / name).is_file()]
        if missing:
            raise invalid("data-dir", ns.data_dir, f"a folder holding {', '.join(needed)} "
                          f"(missing: {', '.join(missing)})")
        if ns.epochs < 1:
            raise invalid("epochs", ns.epochs, "a positive integer")
    except UsageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    out = Path(ns.out)
    victims = out / "victims"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    # 1. train and export
    if (victims / MODEL / "card.json").is_file():
        print(f"[1/6] victim already exported in {victims / MODEL}; reusing it", flush=True)
    else:
        print("[1/6] train the victim and export it for TF Serving", flush=True)
        cmd = [sys.executable, "-m", "victim_export", "--dataset", str(dataset), "--arch", "cnn",
               "--epochs", str(ns.epochs), "--out", str(victims), "--name", MODEL]
        if ns.limit:
            cmd += ["--limit", str(ns.limit)]
        _show(cmd)
        if subprocess.run(cmd, env=env).returncode != 0:
            return 1
    card = json.loads((victims / MODEL / "card.json").read_text())
    version, entry = max(card["versions"].items(), key=lambda kv: int(kv[0]))

    # 2. serve
    print("[2/6] serve it with the embedded model server (TF Serving's flags)", flush=True)
    server, port = launch([f"--rest_api_port={free_port()}",
                           f"--model_config_file={victims / 'models.config'}"])
    _show(server.args)
    try:
        from common.data import load_dataset
        from serving.client import ServingClient

        test = load_dataset(str(dataset), "test", limit=ns.test_limit)
        print(f"[3/6] query {len(test)} test images through gRPC Predict", flush=True)
        with ServingClient(f"127.0.0.1:{port}", MODEL, max_in_flight=4, batch_size=256) as client:
            client.wait_until_available(timeout=120)
            info = client.metadata()
            print(f"      signature: {info.input_name} {info.input_dtype} "
                  f"{list(info.input_shape)} -> {info.probabilities} [batch, {info.num_classes}]")
            start = time.perf_counter()
            probs = client.predict(test.images)
            spent = time.perf_counter() - start
            accuracy = float((probs.argmax(1) == test.labels).mean())
            print(f"      {client.queries} queries in {spent:.1f} s "
                  f"({client.queries / spent:.0f} images/s)")
        print(f"\nvictim {MODEL} version {version}: test accuracy through gRPC {accuracy:.4f} "
              f"on {len(test)} images; in-process at export {entry.get('test_accuracy')} on "
              f"{entry.get('test_examples')} images ({entry.get('epochs_run')} epochs, "
              f"{entry.get('training_seconds')} s)")

        print("\n[4/6] steal it with Knockoff Nets through the same gRPC API", flush=True)
        run_dir = out / "knockoff"
        cmd = [sys.executable, "-m", "attack.knockoff", "--grpc", f"127.0.0.1:{port}",
               "--model", MODEL,
               "--transfer-set", str(data / "tinyimagenet200_val10k_train50pc.zip"),
               "--transfer-split", "train+val",
               "--exclude-classes", str(data / "tinyimagenet_cifar10_overlap_wnids.txt"),
               "--budget", str(ns.budget), "--backbone", "mobilenet",
               "--arch-args", "alpha=0.25", "--input-size", "96",
               "--weights", str(data / "mobilenet_2_5_224_tf_no_top.h5"),
               "--epochs", str(ns.attack_epochs), "--test-set", str(dataset),
               "--curve-points", "3", "--out", str(run_dir)]
        if ns.test_limit:
            cmd += ["--test-limit", str(ns.test_limit)]
        if (run_dir / "report.json").is_file():
            print(f"      attack already finished in {run_dir}; reusing its report")
        else:
            if (run_dir / "config.json").is_file():
                cmd.append("--resume")
            _show(cmd)
            if subprocess.run(cmd, env=env).returncode != 0:
                return 1
        report = json.loads((run_dir / "report.json").read_text())
        e = report["evaluation"]
        print(f"\nsurrogate after {ns.budget} queries: accuracy {e['surrogate_acc']:.4f} vs "
              f"victim {e['victim_acc']:.4f} (ratio {e['ratio']:.2f}); fidelity on the test "
              f"set {e['fidelity_test']:.4f}, on held-out transfer images "
              f"{e['fidelity_transfer_heldout']:.4f}, on uniform noise "
              f"{e['fidelity_noise']:.4f}\nreport: {run_dir / 'report.md'}")
        if ns.no_defence:
            return 0
        return _defended(ns, data, out, port, cmd, env)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _defended(ns, data: Path, out: Path, upstream_port: int, attack_cmd: list[str],
              env: dict) -> int:
    """Steps 5 and 6: the detector, the gateway in front of the server, the same attack."""
    detector = out / "detectors" / "cifar10_ood" / "1"
    if (detector / "saved_model.pb").is_file():
        print(f"\n[5/6] detector already exported in {detector}; reusing it", flush=True)
    else:
        print("\n[5/6] train the OOD query detector (victim's data vs natural images outside "
              "its task)", flush=True)
        cmd = [sys.executable, "-m", "detector.train",
               "--benign", str(data / "cifar10_jpeg_q75.zip"),
               "--attack", str(data / "tinyimagenet200_val10k_train50pc.zip"),
               "--attack-split", "train",
               "--exclude-classes", str(data / "tinyimagenet_cifar10_overlap_wnids.txt"),
               "--backbone", "MobileNet", "--arch-args", "alpha=0.25",
               "--weights", str(data / "mobilenet_2_5_224_tf_no_top.h5"),
               "--input-size", "96", "--benign-limit", str(ns.detector_limit),
               "--epochs", str(ns.detector_epochs), "--work-dir", str(out / "detector_work"),
               "--out", str(detector)]
        _show(cmd)
        if subprocess.run(cmd, env=env).returncode != 0:
            return 1

    print("\n[6/6] defend: the gateway in front of the server, the same attack through it",
          flush=True)
    state = out / "gateway_state.db"
    if state.exists():
        for stale in out.glob("gateway_state.db*"):
            stale.unlink()  # a fresh gateway: the attacker starts unflagged
    policy = out / "policy.json"
    policy.write_text(json.dumps({
        "limits": {"budget": 100000, "rate_per_second": 1000, "burst": 4000},
        "detectors": {"ood": {"path": str(detector), "window": 256, "level": 0.5,
                              "min_queries": 64}},
        "on_flag": {"action": "degrade", "policy": "label_only"},
        "models": [MODEL]}, indent=2) + "\n")
    keys = [sys.executable, "-m", "serving.gateway", "keys", "add", "--state",
            f"sqlite:{state}", "--client", "attacker"]
    _show(keys)
    added = subprocess.run(keys, env=env, capture_output=True, text=True)
    if added.returncode != 0:
        print(added.stderr.strip(), file=sys.stderr)
        return 1
    key = added.stdout.strip().split()[-1]
    gateway_port = free_port()
    gateway_cmd = [sys.executable, "-m", "serving.gateway", "--upstream",
                   f"127.0.0.1:{upstream_port}", "--host", "127.0.0.1",
                   "--port", str(gateway_port), "--policy", str(policy),
                   "--state", f"sqlite:{state}", "--metrics-port", "0"]
    _show(gateway_cmd)
    with open(out / "gateway.log", "w") as gateway_log:
        gateway = subprocess.Popen(gateway_cmd, env=env, stdout=subprocess.DEVNULL,
                                   stderr=gateway_log)
    try:
        from serving.client import ServingClient

        with ServingClient(f"127.0.0.1:{gateway_port}", MODEL, api_key=key) as client:
            client.wait_until_available(timeout=180)
        run_dir = out / "knockoff_defended"
        if any((run_dir / stale).exists() for stale in ("config.json", "journal.bin")):
            shutil.rmtree(run_dir)  # the gateway state is fresh: so is the attack
        cmd = [c for c in attack_cmd if c != "--resume"]
        cmd[cmd.index("--grpc") + 1] = f"127.0.0.1:{gateway_port}"
        cmd[cmd.index("--out") + 1] = str(run_dir)
        cmd += ["--api-key", key]
        _show([c if c != key else "$KEY" for c in cmd])
        if subprocess.run(cmd, env=env).returncode != 0:
            return 1
    finally:
        gateway.terminate()
        gateway.wait(timeout=30)
    from serving.gateway.store import open_store

    store = open_store(f"sqlite:{state}")
    try:
        records = [r for r in store.audit_records() if r.client == "attacker"
                   and r.method == "Predict" and r.code == "OK"]
    finally:
        store.close()
    sent, flagged_at, degraded = 0, None, 0
    for record in records:
        if sent >= ns.budget:
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
          f"{e['victim_acc']:.4f} (ratio {e['ratio']:.2f}), fidelity on the test set "
          f"{e['fidelity_test']:.4f}\nreport: {run_dir / 'report.md'}; audit log: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

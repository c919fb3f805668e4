"""Training on several devices or machines: the `--distribute` strategies of tf.distribute.

Victim training (`victim_export`), surrogate training (`attack.surrogate.SurrogateTrainer`, so
every attack) and detector training (`detector.train`) take ``--distribute none|mirrored|
multiworker``:

- ``none``: one device, TensorFlow's default placement (what the toolkit always did);
- ``mirrored``: `tf.distribute.MirroredStrategy` over every GPU of this machine (without a GPU,
  over the logical CPU devices, which is how the tests run it);
- ``multiworker``: `tf.distribute.MultiWorkerMirroredStrategy` over several machines, each
  running the same command with its own ``TF_CONFIG`` (the cluster's ``host:port`` list and this
  task's place in it). ``TF_CONFIG`` is checked when the config is built (`check_distribute`),
  before anything is loaded, queried, trained or written.

The batch-size rule: ``batch_size`` is the *global* batch of one optimizer step, split evenly over
the replicas (``batch_size / replicas`` each, `per_replica_batch`), and must be a multiple of the
replica count. The learning rate, the epochs and the schedule mean what they mean on one device,
so a distributed run trains the same model within noise (not bit for bit: the replicas sum their
gradients in another order) and a checkpoint fingerprint does not depend on the strategy. Batch
normalisation is synchronised (`synchronize_batch_norm`): its batch statistics are those of the
global batch, as on one device, and every replica and worker keeps the same moving averages. To
keep every device as busy as a single one was, multiply ``--batch-size`` by the replica count
yourself (and the learning rate with it if you want the linear scaling rule of Goyal et al.
2017).

Models are built and compiled under `scope` (Keras 3 with the TensorFlow backend creates
mirrored variables there); the trained weights are then copied into a plain model built outside
any strategy, so prediction, checkpoints and the SavedModel export are exactly those of a
single-device run. In a multi-worker run every worker trains; only the chief (`is_chief`) writes
the shared outputs, each other worker keeps its checkpoints under its own suffix
(`worker_suffix`).

This module imports TensorFlow only in `make_strategy`, so the CLIs validate their flags fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import field
from typing import Any

from common.constraints import check_choice, check_host_port, is_int
from common.errors import UsageError, invalid

__all__ = [
    "DISTRIBUTE_HELP",
    "STRATEGIES",
    "TF_CONFIG_VAR",
    "check_distribute",
    "check_global_batch",
    "distribute_field",
    "is_chief",
    "make_strategy",
    "parse_tf_config",
    "per_replica_batch",
    "replicas",
    "scope",
    "shard_by_data",
    "synchronize_batch_norm",
    "worker_suffix",
]

logger = logging.getLogger(__name__)

STRATEGIES = ("none", "mirrored", "multiworker")
TF_CONFIG_VAR = "TF_CONFIG"
DISTRIBUTE_HELP = (
    "training strategy: none (one device), mirrored (every GPU of this machine), multiworker "
    "(several machines, each with its own TF_CONFIG); --batch-size is the global batch, split "
    "evenly over the replicas (see docs/distributed.md)")

_JOBS = ("chief", "worker")
_STRATEGY: dict[str, Any] = {}  # one strategy per process (MultiWorker can be created once)


def distribute_field() -> Any:
    """The ``distribute`` field every training config declares the same way."""
    return field(default="none", metadata={"help": DISTRIBUTE_HELP, "choices": STRATEGIES})


def parse_tf_config(text: str | None) -> dict[str, Any]:
    """The validated ``TF_CONFIG`` of a multi-worker task (`UsageError` naming ``TF_CONFIG``).

    Expected: ``{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker",
    "index": i}}``, optionally with one ``"chief"`` address; no other job types (no parameter
    servers: this is all-reduce training).
    """
    if text is None or not text.strip():
        raise invalid(TF_CONFIG_VAR, text, "a JSON cluster spec for --distribute multiworker, "
                      'e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                      '"task": {"type": "worker", "index": 0}}')
    shown = _short(text)
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise invalid(TF_CONFIG_VAR, shown, f"JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(spec, dict):
        raise invalid(TF_CONFIG_VAR, shown, "a JSON object with 'cluster' and 'task'")
    cluster, task = spec.get("cluster"), spec.get("task")
    if not isinstance(cluster, dict) or not cluster:
        raise invalid(TF_CONFIG_VAR, shown, "a 'cluster' object mapping 'worker' (and "
                      "optionally 'chief') to lists of host:port")
    extra = sorted(set(cluster) - set(_JOBS))
    if extra:
        raise invalid(TF_CONFIG_VAR, shown, "only 'chief' and 'worker' jobs (all-reduce "
                      f"training), not {', '.join(map(repr, extra))}")
    seen: set[str] = set()
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise invalid(TF_CONFIG_VAR, shown, f"cluster.{job} as a non-empty list of host:port")
        for address in addresses:
            try:
                check_host_port(TF_CONFIG_VAR, address)
            except UsageError:
                raise invalid(TF_CONFIG_VAR, shown,
                              f"host:port addresses in cluster.{job}, not {address!r}") from None
            if address in seen:
                raise invalid(TF_CONFIG_VAR, shown, f"each address once, not {address!r} twice")
            seen.add(address)
    if len(cluster.get("chief", [])) > 1:
        raise invalid(TF_CONFIG_VAR, shown, "at most one chief address")
    if not isinstance(task, dict):
        raise invalid(TF_CONFIG_VAR, shown, "a 'task' object {\"type\": ..., \"index\": ...}")
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster:
        raise invalid(TF_CONFIG_VAR, shown, "task.type among the cluster's jobs "
                      f"({', '.join(sorted(cluster))}), not {kind!r}")
    count = len(cluster[kind])
    if not is_int(index) or not 0 <= index < count:
        raise invalid(TF_CONFIG_VAR, shown, f"task.index in 0..{count - 1} for {count} {kind} "
                      f"address(es), not {index!r}")
    return {"cluster": {job: list(cluster[job]) for job in cluster},
            "task": {"type": kind, "index": index}}


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_distribute(value: Any, argument: str = "distribute",
                     environ: Mapping[str, str] | None = None) -> str:
    """`value` when it names a strategy (and, for multiworker, ``TF_CONFIG`` is valid)."""
    check_choice(argument, value, STRATEGIES)
    if value == "multiworker":
        parse_tf_config((os.environ if environ is None else environ).get(TF_CONFIG_VAR))
    return value


def make_strategy(name: str) -> Any:
    """The process's strategy for `name` (None for ``none``), created once and then reused.

    ``mirrored`` mirrors over every GPU, or, without one, over every logical CPU device
    (`tf.config.set_logical_device_configuration` splits the CPU; one device otherwise).
    ``multiworker`` must be created before TensorFlow runs its first operation (TensorFlow
    configures its collective ops at start-up): call it first thing in a worker's program.
    """
    check_distribute(name)
    if name == "none":
        return None
    if name in _STRATEGY:
        return _STRATEGY[name]
    import tensorflow as tf

    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        try:
            strategy = _keras_multi_worker_strategy(tf)()
        except (RuntimeError, ValueError) as err:
            raise invalid("distribute", name,
                          "a multiworker strategy created before TensorFlow's first operation "
                          f"in this process ({err})") from err
    _STRATEGY[name] = strategy
    logger.info("--distribute %s: %d replica(s) in sync%s", name,
                strategy.num_replicas_in_sync, _where(strategy))
    return strategy


def _keras_multi_worker_strategy(tf: Any) -> type:
    """`MultiWorkerMirroredStrategy` with the `reduce` Keras 3's `fit` expects.

    Keras 3.15's TensorFlow trainer calls ``strategy.reduce`` on a nested batch (its symbolic
    build) and with ``axis=0`` on per-replica scalars (the step's loss and metrics); Mirrored
    accepts both, MultiWorkerMirrored raises (keras-team/keras#20585). This subclass reduces
    each leaf of a structure on its own, a scalar across the replicas (``axis=None``).
    """

    class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op: Any, value: Any, axis: Any) -> Any:
            parent = super().reduce

            def leaf(v: Any) -> Any:
                first = v.values[0] if isinstance(v, tf.distribute.DistributedValues) else v
                rank = getattr(getattr(first, "shape", None), "rank", None)
                return parent(reduce_op, v, None if rank == 0 else axis)

            return tf.nest.map_structure(leaf, value)

    return KerasMultiWorkerMirroredStrategy


def _where(strategy: Any) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return " on " + ", ".join(getattr(strategy.extended, "worker_devices", ()))
    return f" (this is {resolver.task_type} {resolver.task_id})"


def replicas(strategy: Any) -> int:
    """How many replicas a step runs on (1 without a strategy)."""
    return 1 if strategy is None else int(strategy.num_replicas_in_sync)


def check_global_batch(batch_size: int, strategy: Any, argument: str = "batch_size") -> int:
    """`batch_size` when it splits evenly over the strategy's replicas (the batch-size rule)."""
    count = replicas(strategy)
    if batch_size % count:
        raise invalid(argument, batch_size,
                      f"a multiple of the {count} replicas (it is the global batch, split "
                      "evenly over them)")
    return batch_size


def per_replica_batch(batch_size: int, strategy: Any) -> int:
    """Each replica's share of the global `batch_size`."""
    return check_global_batch(batch_size, strategy) // replicas(strategy)


def synchronize_batch_norm(model: Any) -> int:
    """Make every `BatchNormalization` layer of `model` (nested models too) compute its batch
    statistics over the global batch (Keras' ``synchronized=True``, an all-reduce across the
    replicas); returns how many layers it switched.

    Keras keeps the moving averages of an unsynchronised layer per replica, each from its own
    share of the batch, so the replicas' (and the workers') copies of the model drift apart and
    the weights read back after training are one replica's. Call it after building the model
    under the strategy's scope and before its first training step.
    """
    import keras

    switched, stack, seen = 0, [model], set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            switched += 1
        stack.extend(getattr(layer, "layers", ()))
    return switched


def shard_by_data(dataset: Any, strategy: Any) -> Any:
    """`dataset` with multi-worker auto-sharding by element (each worker reads the whole
    in-memory pipeline and keeps its share of every global batch): our datasets come from
    arrays, not files, so TensorFlow's default file sharding does not apply."""
    if dataset is None or strategy is None or getattr(strategy, "cluster_resolver", None) is None:
        return dataset
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


@contextlib.contextmanager
def scope(strategy: Any) -> Iterator[None]:
    """`strategy.scope()`, or nothing without a strategy."""
    if strategy is None:
        yield
    else:
        with strategy.scope():
            yield


def _task(strategy: Any) -> tuple[str | None, int | None]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy: Any) -> bool:
    """Whether this process writes the shared outputs: always, except on a multi-worker task
    that is not the chief (the ``chief`` task, or worker 0 when the cluster has none)."""
    kind, index = _task(strategy)
    if kind is None:
        return True
    has_chief = "chief" in strategy.cluster_resolver.cluster_spec().as_dict()
    return kind == "chief" or (kind == "worker" and index == 0 and not has_chief)


def worker_suffix(strategy: Any) -> str:
    """``""`` for the chief, ``".worker-<i>"`` for another task: where it keeps its own files."""
    if is_chief(strategy):
        return ""
    kind, index = _task(strategy)
    return f".{kind}-{index}"

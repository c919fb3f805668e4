"""The embedded server's model manager: which versions of which models are served, and their states.

It follows TF Serving's `ServerCore` over a file-system source: a `ModelServerConfig` lists the
models; each model's `base_path` holds integer version folders; the model's
`model_version_policy` (latest N, default 1; all; specific) picks the versions to serve; new
folders are found by polling; a version goes START -> LOADING -> AVAILABLE and, when the policy
drops it, UNLOADING -> END, always loading the new before unloading the old (TF Serving's
availability-preserving policy), so a client never sees a model with no version. Version labels
map names to versions. Loading happens outside the request path; requests only read a snapshot.

Departures from TF Serving, all on the side of safety: a version folder that is still being
written (no `saved_model.pb`, or a variables index without data) is not tried until it is whole;
a version that failed to load is tried again when its `saved_model.pb` changes.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import status
from serving.embedded.savedmodel import LoadedVersion, is_complete_version_dir

__all__ = ["ModelManager", "VersionState", "no_versions_message", "resolve_base_path"]

log = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State


def _is_dir(path: Path) -> bool:
    """`Path.is_dir` that is False, not an error, for names the OS refuses (ENAMETOOLONG)."""
    try:
        return path.is_dir()
    except OSError:
        return False


def resolve_base_path(base_path: str, name: str, config_dir: Path | None) -> Path:
    """Where a model's versions live on this machine.

    `models.config` files written for the official container name container paths
    (`/models/<name>`). When such a path does not exist here, the folder beside the config file
    with the same last component (or the model's name) is used, so one `models.config` starts
    both the container and the embedded server.
    """
    path = Path(base_path)
    if _is_dir(path) or config_dir is None:
        return path
    for candidate in (config_dir / path.name, config_dir / name):
        if _is_dir(candidate):
            log.info("model %s: base_path %s not found here; using %s", name, base_path,
                     candidate)
            return candidate
    if not path.is_absolute():
        return config_dir / path
    return path


@dataclass
class VersionState:
    """One version's life as GetModelStatus reports it."""

    version: int
    state: int = State.START
    error: status.ServingStatus | None = None
    loaded: LoadedVersion | None = None
    stamp: tuple = ()  # the folder's _fingerprint when last tried

    def to_proto(self) -> get_model_status_pb2.ModelVersionStatus:
        proto = get_model_status_pb2.ModelVersionStatus(version=self.version, state=self.state)
        proto.status.SetInParent()  # TF Serving always sets it (error_code OK when fine)
        if self.error is not None:
            proto.status.error_code = self.error.code.value[0]
            proto.status.error_message = self.error.message
        return proto


@dataclass
class _Model:
    config: model_server_config_pb2.ModelConfig
    base_path: Path
    versions: dict[int, VersionState] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    warned_empty: bool = False  # "No versions of servable ..." said once per empty spell

    def available(self) -> dict[int, LoadedVersion]:
        return {v: s.loaded for v, s in self.versions.items()
                if s.state == State.AVAILABLE and s.loaded is not None}


def _version_dirs(base: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    try:
        entries = list(base.iterdir())
    except OSError:
        return found
    for entry in entries:
        version = status.parse_version(entry.name)
        if version is not None and version >= 0 and entry.is_dir():
            found[version] = entry
    return found


def no_versions_message(name: str, base: Path) -> str:
    """TF Serving's warning for a base path without version folders
    (file_system_storage_path_source.cc), plus what is there instead when it is telling."""
    message = (f"No versions of servable {name} found under base path {base}. Did you forget "
               "to name your leaf directory as a number (eg. '/1/')?")
    try:
        children = sorted(p for p in base.iterdir() if p.is_dir())
    except OSError:
        readable = os.path.exists(base)  # False for any OSError (e.g. a name too long)
        return f"{message} (the base path {'cannot be read' if readable else 'is missing'})"
    if (base / "saved_model.pb").is_file():
        return message + f" ({base} is itself a SavedModel: move it into {base / '1'})"
    models = [p.name for p in children if (p / "saved_model.pb").is_file()]
    if models:
        shown = ", ".join(repr(n) for n in models[:5]) + (", ..." if len(models) > 5 else "")
        return message + f" (SavedModel folders named {shown}: rename them to integers)"
    return message


def _fingerprint(path: Path) -> tuple:
    """Names, sizes and mtimes of a version folder's graph and variables files: a failed load is
    retried only when this changes. The graph's mtime alone is not enough: a copy that keeps
    mtimes (`cp -p`, `shutil.copytree`) can write saved_model.pb before variables/."""
    entries = []
    for sub in (path, path / "variables"):
        try:
            children = sorted(sub.iterdir())
        except OSError:
            continue
        for child in children:
            try:
                st = child.stat()
            except OSError:
                continue
            if not child.is_dir():
                entries.append((str(child.relative_to(path)), st.st_size, st.st_mtime_ns))
    return tuple(entries)


def _aspired(config: model_server_config_pb2.ModelConfig, on_disk: dict[int, Path]) -> list[int]:
    """The versions the model's policy serves, among the folders that are whole on disk."""
    policy = config.model_version_policy
    complete = [v for v, p in on_disk.items() if is_complete_version_dir(p)]
    choice = policy.WhichOneof("policy_choice") or "latest"
    return status.aspired_versions(complete, choice,
                                   num_versions=policy.latest.num_versions,
                                   versions=policy.specific.versions)


class ModelManager:
    """Loads, serves and retires model versions per a `ModelServerConfig`."""

    def __init__(self, *, config_dir: Path | None = None,
                 allow_version_labels_for_unavailable_models: bool = False) -> None:
        self._config_dir = config_dir
        self._allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._models: dict[str, _Model] = {}
        self._config = model_server_config_pb2.ModelServerConfig()
        self._lock = threading.RLock()  # guards _models / _config
        self._load_lock = threading.Lock()  # one reload/poll at a time
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- configuration ---------------------------------------------------------------------------
    @property
    def config(self) -> model_server_config_pb2.ModelServerConfig:
        with self._lock:
            copy = model_server_config_pb2.ModelServerConfig()
            copy.CopyFrom(self._config)
            return copy

    def reload(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Apply a new config: add, keep, or remove models, then load what the policies ask.

        Raises `ServingStatus` (nothing changed) when the config is invalid. Returns when every
        model of the new config has its aspired versions AVAILABLE or failed, as TF Serving's
        ReloadConfig does.
        """
        self._validate(config)
        with self._load_lock:
            with self._lock:
                new_models: dict[str, _Model] = {}
                for mc in config.model_config_list.config:
                    base = resolve_base_path(mc.base_path, mc.name, self._config_dir)
                    old = self._models.get(mc.name)
                    if old is not None and old.base_path == base:
                        old.config = mc
                        new_models[mc.name] = old
                    else:
                        new_models[mc.name] = _Model(config=mc, base_path=base)
                removed = [m for n, m in self._models.items() if new_models.get(n) is not m]
                self._models = new_models
                self._config = model_server_config_pb2.ModelServerConfig()
                self._config.CopyFrom(config)
            for model in removed:
                self._retire(model, keep=())
            self._poll_locked()
            self._apply_labels(config, strict=True)

    def _validate(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        if config.WhichOneof("config") == "custom_model_config":
            raise status.custom_model_config_unsupported()
        seen: set[str] = set()
        for mc in config.model_config_list.config:
            if mc.name in seen:
                raise status.duplicate_model_in_config(mc.name)
            seen.add(mc.name)
            if not mc.base_path.startswith("/") and "://" not in mc.base_path:
                raise status.relative_base_path(mc.name, mc.base_path)
            if not mc.model_platform:
                raise status.missing_platform()
            if mc.model_platform != "tensorflow":
                raise status.unsupported_platform(mc.name, mc.model_platform)

    def _apply_labels(self, config, *, strict: bool) -> None:
        with self._lock:
            for mc in config.model_config_list.config:
                model = self._models.get(mc.name)
                if model is None:
                    continue
                available = model.available()
                labels = {}
                for label, version in mc.version_labels.items():
                    if (version not in available and not self._allow_unavailable_labels
                            and model.labels.get(label) != version):
                        if strict:
                            raise status.label_to_unavailable_version(label, version, mc.name)
                        continue
                    labels[label] = version
                model.labels = labels

    # -- polling ---------------------------------------------------------------------------------
    def poll(self) -> None:
        """Scan every model's base path once and load or retire versions to match policies."""
        with self._load_lock:
            self._poll_locked()
            self._apply_labels(self.config, strict=False)

    def _poll_locked(self) -> None:
        with self._lock:
            models = list(self._models.values())
        for model in models:
            on_disk = _version_dirs(model.base_path)
            if on_disk:
                model.warned_empty = False
            elif not model.versions and not model.warned_empty:
                # TF Serving repeats this every poll; once is enough to be read
                model.warned_empty = True
                log.warning("%s", no_versions_message(model.config.name, model.base_path))
            aspired = _aspired(model.config, on_disk)
            for version in aspired:  # load the new before retiring the old
                self._ensure_loaded(model, version, on_disk[version])
            keep = set(aspired)
            with self._lock:
                available = model.available()
            if aspired and not keep & set(available) and available:
                # TF Serving's AvailabilityPreservingPolicy: while no aspired version is
                # ready (still loading, or failed), the newest serving one stays.
                keep.add(max(available))
            self._retire(model, keep=keep)

    def _ensure_loaded(self, model: _Model, version: int, path: Path) -> None:
        stamp = _fingerprint(path)
        with self._lock:
            current = model.versions.get(version)
            if current is not None and current.state == State.AVAILABLE:
                return
            if (current is not None and current.state == State.END
                    and current.error is not None and current.stamp == stamp):
                return  # failed before and unchanged on disk: do not hammer it
            state = VersionState(version, State.LOADING, stamp=stamp)
            model.versions[version] = state
        try:
            loaded = LoadedVersion.load(model.config.name, version, path)
        except Exception as err:  # a broken SavedModel must not take the server down
            log.error("failed to load %s version %d from %s: %s", model.config.name, version,
                      path, err)
            with self._lock:
                state.state = State.END
                state.error = status.load_failed(err)
            return
        with self._lock:
            state.loaded = loaded
            state.state = State.AVAILABLE

    def _retire(self, model: _Model, keep) -> None:
        keep = set(keep)
        with self._lock:
            doomed = [s for v, s in model.versions.items()
                      if v not in keep and s.state in (State.AVAILABLE, State.LOADING)]
            for s in doomed:
                s.state = State.UNLOADING
        for s in doomed:
            with self._lock:
                loaded, s.loaded = s.loaded, None
                s.state = State.END
            if loaded is not None:
                loaded.close()
                log.info("unloaded %s version %d", model.config.name, s.version)

    def start_polling(self, interval_s: float) -> None:
        """Poll version folders every `interval_s` seconds in a daemon thread (0: never)."""
        if interval_s <= 0:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.poll()
                except Exception:  # keep polling whatever one scan met
                    log.exception("file-system poll failed")

        thread = threading.Thread(target=loop, name="version-poller", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._lock:
            models = list(self._models.values())
        for model in models:
            self._retire(model, keep=())

    # -- lookups used by the services -------------------------------------------------------------
    def model_names(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def resolve(self, model_spec) -> LoadedVersion:
        """The servable a request's ModelSpec names, with TF Serving's errors when there is none."""
        name = model_spec.name
        if not name:
            raise status.model_spec_missing_name()
        choice = model_spec.WhichOneof("version_choice")
        with self._lock:
            model = self._models.get(name)
            available = model.available() if model is not None else {}
            if choice == "version":
                version = model_spec.version.value
                if version not in available:
                    raise status.servable_not_found(name, version=version)
                return available[version]
            if choice == "version_label":
                label = model_spec.version_label
                if model is None or label not in model.labels:
                    raise status.unknown_version_label(label)
                version = model.labels[label]
                if version not in available:
                    raise status.servable_not_found(name, version=version)
                return available[version]
            if not available:
                raise status.servable_not_found(name)
            return available[max(available)]

    def version_statuses(self, model_spec) -> list[get_model_status_pb2.ModelVersionStatus]:
        """GetModelStatus: one version, or every version ever seen, newest first.

        As in TF Serving's get_model_status_impl.cc, a version label is not consulted.
        """
        name = model_spec.name
        with self._lock:
            model = self._models.get(name)
            versions = model.versions if model is not None else {}
            if model_spec.WhichOneof("version_choice") == "version":
                version = model_spec.version.value
                if version not in versions:
                    raise status.version_not_found_in_status(name, version)
                return [versions[version].to_proto()]
            if not versions:
                raise status.model_not_found_in_status(name)
            return [versions[v].to_proto() for v in sorted(versions, reverse=True)]

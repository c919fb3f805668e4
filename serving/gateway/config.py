"""The gateway's configuration: the policy file (JSON) and the server flags, frozen dataclasses.

The policy says who may query (API keys), how much (a per-client query budget and a token-bucket
rate limit), which detectors watch each client (Atli et al.'s OOD query classifier aggregated
over a sliding window, PRADA of Juuti et al.), what happens to a flagged client (refuse with
PERMISSION_DENIED, or degrade its answers with an output policy such as label-only), which output
policy every answer gets, and which models the gateway exposes. `load_policy` validates the whole
file before anything starts and names the offending field, what it expected and what it got.

```json
{
  "auth": {"required": true},
  "limits": {"budget": 100000, "rate_per_second": 100, "burst": 400},
  "detectors": {
    "ood": {"path": "detectors/cifar10_ood/1", "upstream_model": null, "threshold": null,
            "window": 256, "level": 0.5, "min_queries": 64},
    "prada": {"delta": 0.9, "min_samples": 100, "max_set": 2000}
  },
  "on_flag": {"action": "degrade", "policy": "label_only"},
  "always": "identity",
  "models": ["cifar10_cnn"]
}
```

Every field is optional. Without "detectors" no detector runs; "models" absent or null exposes
every model of the upstream; `limits.budget` null means no budget (the rate limit still holds).

The detector sections are the detectors' own configs: ``detectors.ood`` is
`detector.ood.OODConfig` and ``detectors.prada`` is `detector.prada.PradaConfig` (every
parameter of PRADA can be set, e.g. ``max_distances`` and ``outlier_std``), and
``misinformation`` is `detector.misinformation.SwitchConfig`; the gateway builds
its `detector.monitor.Monitor` from them. ``"output"`` names the victim's class-score output the
detectors read (default: from the model's signature, as GetModelMetadata describes it: the
float ``[batch, K]`` output, ``probabilities`` when there are several); every float ``[batch,
K]`` output is rewritten by the output policies.

Two more actions (`docs/defence.md`):

* **misinform** (Kariyappa & Qureshi's Adaptive Misinformation, `detector.misinformation`):
  `"on_query": "misinform"` for every answer, or `"on_flag": {"action": "misinform"}` for a
  flagged client's; each answer is blended with a misinformation function's by the query's OOD
  score (`detectors.ood` is required). `"misinformation": {"tau": null, "nu": 50, "function":
  "reverse"}`; `tau` null is the OOD detector's threshold; `"function": "model"` with `path` (an
  export of `python -m detector.misinformation`, loaded in process) or `upstream_model` (served by
  the upstream). With `on_flag.policy` label_only, the label is the misinformation's top-1 for
  queries at or above `tau`.
* **watermark** (DAWN, `detector.watermark`): `"watermark": {"key_file": PATH, "fraction":
  0.005}` answers that keyed fraction of each client's Predict queries with a wrong label and
  keeps them in the state store for `python -m detector.verify`.

``"per_model": {"cifar10_cnn": {...}, "gtsrb_resnet34": {...}}`` gives a model its own
``detectors``, ``on_flag``, ``on_query``, ``misinformation``, ``watermark``, ``always``,
``output`` and ``input_range`` (each key given replaces the policy's for that model's Predict
calls; auth, limits and models stay global). A client's detector state is one per client,
whatever model it asks: the OOD window counts the flagged queries to every model (the binomial
window stays exact when the models' detectors are calibrated at the same FPR), and a flag holds
for every model.

``"input_range"`` says how a model with a float image input reads its pixels (``"0,1"``,
``"-1,1"`` or ``"0,255"``): the detectors, the misinformation model and the watermark records
take uint8 pixels 0..255, so the gateway maps a float request back to them. A uint8 input needs
nothing; a float input without it cannot be watched and its Predict calls are answered
FAILED_PRECONDITION naming the key (a detector fed float pixels read as 0..255 would see black
images and pass every thief).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.constraints import check_fields, check_int, check_number
from common.errors import UsageError, invalid
from detector.misinformation import SwitchConfig as MisinformationConfig
from detector.ood import OODConfig
from detector.policies import parse_policy
from detector.prada import PradaConfig

__all__ = [
    "GatewayConfig",
    "GatewayPolicy",
    "MisinformationConfig",
    "OODConfig",
    "PradaConfig",
    "WatermarkConfig",
    "load_policy",
    "parse_state_url",
    "policy_from_dict",
    "read_policy",
]

INPUT_RANGES = ("0,255", "0,1", "-1,1")
"""The pixel ranges a float image input may be declared in (``input_range``)."""

_POLICY_RE = re.compile(r"^(identity|label_only|top_k:\d+|round:\d+|noise:[0-9.eE+-]+|"
                        r"reverse_sigmoid:[0-9.eE+-]+,[0-9.eE+-]+)$")


def _check_output_policy(name: str, spec: Any) -> None:
    expected = ("an output policy: identity, label_only, top_k:K, round:D, noise:SIGMA or "
                "reverse_sigmoid:BETA,GAMMA")
    if not isinstance(spec, str) or not _POLICY_RE.match(spec):
        raise invalid(name, spec, expected)
    try:
        parse_policy(spec)
    except UsageError as err:
        raise invalid(name, spec, f"{expected} ({err})") from None


@dataclass(frozen=True)
class WatermarkConfig:
    """DAWN: answer a keyed `fraction` of each client's queries with a wrong label. The secret
    key is read from `key_file` (at least 16 bytes), never written in the policy."""

    key_file: str | None = None
    fraction: float = 0.005

    def __post_init__(self) -> None:
        if not isinstance(self.key_file, str) or not self.key_file:
            raise invalid("watermark.key_file", self.key_file, "the path of the secret key file")
        check_number("watermark.fraction", self.fraction, gt=0, max=0.5)


@dataclass(frozen=True)
class GatewayPolicy:
    """The policy file, validated. Limits here are the defaults; `keys add` can override them."""

    auth_required: bool = True
    budget: int | None = 100000
    rate_per_second: float = 100.0
    burst: float = 400.0
    ood: OODConfig | None = None
    prada: PradaConfig | None = None
    on_flag_action: str = "degrade"
    on_flag_policy: str = "label_only"
    always: str = "identity"
    models: tuple[str, ...] | None = None
    on_query: str = "pass"
    misinformation: MisinformationConfig | None = None
    watermark: WatermarkConfig | None = None
    output: str | None = None
    input_range: str | None = None
    per_model: tuple[tuple[str, GatewayPolicy], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.auth_required, bool):
            raise invalid("auth.required", self.auth_required, "true or false")
        check_int("limits.budget", self.budget, min=0, optional=True)
        check_number("limits.rate_per_second", self.rate_per_second, gt=0)
        check_number("limits.burst", self.burst, min=1)
        if self.ood is not None and not isinstance(self.ood, OODConfig):
            raise invalid("detectors.ood", self.ood, "a JSON object")
        if self.prada is not None and not isinstance(self.prada, PradaConfig):
            raise invalid("detectors.prada", self.prada, "a JSON object")
        if self.output is not None and (not isinstance(self.output, str) or not self.output):
            raise invalid("output", self.output, "the name of the model's class-score output "
                          "(float [batch, K]) the detectors read, or null (from the signature)")
        if self.input_range is not None and self.input_range not in INPUT_RANGES:
            raise invalid("input_range", self.input_range, "the pixel range of the model's "
                          "float image input: '0,1', '-1,1' or '0,255' (null: a uint8 input)")
        if self.on_flag_action not in ("refuse", "degrade", "misinform"):
            raise invalid("on_flag.action", self.on_flag_action,
                          "'refuse', 'degrade' or 'misinform'")
        if self.on_query not in ("pass", "misinform"):
            raise invalid("on_query", self.on_query, "'pass' or 'misinform'")
        if self.misinforms and self.ood is None:
            raise invalid("detectors.ood", None, "an OOD detector: the misinform action "
                          "switches on its per-query score")
        if self.misinformation is not None and not isinstance(self.misinformation,
                                                              MisinformationConfig):
            raise invalid("misinformation", self.misinformation, "a JSON object")
        if self.watermark is not None and not isinstance(self.watermark, WatermarkConfig):
            raise invalid("watermark", self.watermark, "a JSON object")
        for name, spec in (("on_flag.policy", self.on_flag_policy), ("always", self.always)):
            _check_output_policy(name, spec)
        if self.models is not None and (
                not isinstance(self.models, tuple) or not self.models
                or not all(isinstance(m, str) and m for m in self.models)):
            raise invalid("models", self.models, "a non-empty list of model names, or null")

        for name, sub in self.per_model:
            if not isinstance(sub, GatewayPolicy) or sub.per_model:
                raise invalid(f"per_model.{name}", sub, "a model's policy without per_model")
            if self.models is not None and name not in self.models:
                raise invalid("per_model", name,
                              f"a model listed in models ({', '.join(self.models)})")

    def for_model(self, name: str) -> GatewayPolicy:
        """The policy that decides `name`'s answers: its ``per_model`` entry, else this one."""
        return next((sub for model, sub in self.per_model if model == name), self)

    @property
    def detectors(self) -> bool:
        return self.ood is not None or self.prada is not None

    @property
    def misinforms(self) -> bool:
        """Whether any answer can be misinformed (on every query, or once flagged)."""
        return self.on_query == "misinform" or self.on_flag_action == "misinform"

    @property
    def rewrites(self) -> bool:
        """Whether an answer can be rewritten (output policy, misinformation, watermark)."""
        return (self.always != "identity" or self.misinforms or self.watermark is not None
                or (self.detectors and self.on_flag_action == "degrade"))

    @property
    def inspects(self) -> bool:
        """Whether Predict answers are decoded and possibly rewritten beyond `always`."""
        return self.detectors or self.watermark is not None


_SECTIONS = {
    "auth": {"required"},
    "limits": {"budget", "rate_per_second", "burst"},
    "detectors": {"ood", "prada"},
    "on_flag": {"action", "policy"},
}


def _section(data: dict, name: str, source: str) -> dict:
    value = data.get(name, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(name, value, f"a JSON object in {source}")
    unknown = sorted(set(value) - _SECTIONS[name])
    if unknown:
        raise invalid(name, f"keys {unknown}",
                      f"only the keys {sorted(_SECTIONS[name])} in {source}")
    return value


def _sub(cls, data: Any, name: str, source: str, prefix: str = "detectors."):
    if data is None:
        return None
    if not isinstance(data, dict):
        raise invalid(f"{prefix}{name}", data, f"a JSON object in {source}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise invalid(f"{prefix}{name}", f"keys {unknown}",
                      f"only the keys {sorted(known)} in {source}")
    try:
        return cls(**data)
    except UsageError as err:
        # the section's own config names its field; the policy names it by its path
        if err.argument is None or err.argument.startswith(f"{prefix}{name}."):
            raise
        raise invalid(f"{prefix}{name}.{err.argument}", err.received, err.expected) from None


def policy_from_dict(data: Any, source: str = "the policy") -> GatewayPolicy:
    """Validate a decoded policy file; raise `UsageError` naming the first bad field."""
    if not isinstance(data, dict):
        raise invalid("policy", type(data).__name__, f"a JSON object in {source}")
    unknown = sorted(set(data) - set(_SECTIONS) - {"always", "models", "on_query",
                                                    "misinformation", "watermark", "output",
                                                    "input_range", "per_model"})
    if unknown:
        raise invalid("policy", f"keys {unknown}", "only the keys auth, limits, detectors, "
                      "on_flag, always, models, on_query, misinformation, watermark, output, "
                      f"input_range, per_model in {source}")
    auth = _section(data, "auth", source)
    limits = _section(data, "limits", source)
    detectors = _section(data, "detectors", source)
    on_flag = _section(data, "on_flag", source)
    values: dict[str, Any] = {}
    if "required" in auth:
        values["auth_required"] = auth["required"]
    for key in ("budget", "rate_per_second", "burst"):
        if key in limits:
            values[key] = limits[key]
    values["ood"] = _sub(OODConfig, detectors.get("ood"), "ood", source)
    values["prada"] = _sub(PradaConfig, detectors.get("prada"), "prada", source)
    if "action" in on_flag:
        values["on_flag_action"] = on_flag["action"]
    if "policy" in on_flag:
        values["on_flag_policy"] = on_flag["policy"]
    if "always" in data:
        values["always"] = data["always"]
    if "on_query" in data:
        values["on_query"] = data["on_query"]
    for key in ("output", "input_range"):
        if key in data:
            values[key] = data[key]
    values["misinformation"] = _sub(MisinformationConfig, data.get("misinformation"),
                                    "misinformation", source, prefix="")
    values["watermark"] = _sub(WatermarkConfig, data.get("watermark"), "watermark", source,
                               prefix="")
    models = data.get("models")
    if models is not None:
        values["models"] = tuple(models) if isinstance(models, list) else models
    values["per_model"] = _per_model(data, source)
    return GatewayPolicy(**values)


# What a per_model entry may set: everything that decides a model's answers.
PER_MODEL_KEYS = ("detectors", "on_flag", "on_query", "misinformation", "watermark", "always",
                  "output", "input_range")


def _per_model(data: dict, source: str) -> tuple[tuple[str, GatewayPolicy], ...]:
    """``per_model``: {model: {key of PER_MODEL_KEYS: ...}}; each entry replaces those keys
    of the policy for that model's Predict calls (auth, limits and models stay global)."""
    entries = data.get("per_model")
    if entries is None:
        return ()
    if not isinstance(entries, dict) or not entries:
        raise invalid("per_model", entries, f"a JSON object of model name -> policy keys in "
                      f"{source}")
    shared = {k: v for k, v in data.items() if k != "per_model"}
    out = []
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise invalid(f"per_model.{name}", entry, f"a JSON object in {source}")
        unknown = sorted(set(entry) - set(PER_MODEL_KEYS))
        if unknown:
            raise invalid(f"per_model.{name}", f"keys {unknown}",
                          f"only the keys {', '.join(PER_MODEL_KEYS)} in {source}")
        try:
            out.append((name, policy_from_dict({**shared, **entry}, source)))
        except UsageError as err:
            where = f"per_model.{name}" + (f".{err.argument}" if err.argument else "")
            raise invalid(where, err.received, err.expected or str(err)) from None
    return tuple(out)


def load_policy(path: str | Path | None) -> GatewayPolicy:
    """Read and validate a policy file; None gives the default policy (auth on, no detector)."""
    if path is None or path == "":
        return GatewayPolicy()
    return policy_from_dict(read_policy(path), source=str(path))


def read_policy(path: str | Path) -> Any:
    """The decoded JSON of a policy file, not yet validated; `UsageError` naming ``policy``
    when it is missing, unreadable or not JSON."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise invalid("policy", str(path), "an existing JSON policy file") from None
    except OSError as err:
        raise invalid("policy", str(path), f"a readable JSON file ({err.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise invalid("policy", str(path),
                      f"valid JSON (line {err.lineno} column {err.colno}: {err.msg})") from None
    return data


def parse_state_url(url: str) -> tuple[str, str]:
    """`sqlite:PATH` -> ("sqlite", PATH); `redis://...` -> ("redis", url); else UsageError."""
    if isinstance(url, str) and url.startswith("sqlite:") and len(url) > len("sqlite:"):
        return "sqlite", url[len("sqlite:"):]
    if isinstance(url, str) and (url.startswith("redis://") or url.startswith("rediss://")
                                 or url.startswith("unix://")):
        return "redis", url
    raise invalid("state", url, "sqlite:PATH or redis://HOST:PORT/DB")


@dataclass(frozen=True)
class GatewayConfig:
    """The gateway server: where it listens, what it forwards to, where it keeps its state."""

    upstream: str = field(metadata={"help": "the TF Serving gRPC address: HOST:PORT or "
                                            "unix:/path/to/socket", "rule": "target"})
    port: int = field(default=8500, metadata={"help": "gRPC port (0: any free port)",
                                              "min": 0, "max": 65535})
    host: str = field(default="0.0.0.0", metadata={"help": "address to bind"})
    policy: str | None = field(default=None, metadata={
        "help": "JSON policy file (none: auth required, default limits, no detector)"})
    state: str = field(default="sqlite:gateway_state.db", metadata={
        "help": "per-client state and audit log: sqlite:PATH or redis://HOST:PORT/DB"})
    metrics_port: int = field(default=9102, metadata={
        "help": "Prometheus /metrics port (0: off)", "min": 0, "max": 65535})
    tls_cert: str | None = field(default=None, metadata={"help": "PEM server certificate"})
    tls_key: str | None = field(default=None, metadata={"help": "PEM server private key"})
    tls_client_ca: str | None = field(default=None, metadata={
        "help": "PEM CA bundle: require client certificates signed by it"})
    upstream_timeout: float = field(default=30.0, metadata={
        "help": "seconds an upstream call may take when the client sets no shorter deadline",
        "gt": 0})
    health_interval: float = field(default=2.0, metadata={
        "help": "seconds between upstream health probes", "gt": 0})
    max_workers: int = field(default=16, metadata={"help": "gRPC worker threads", "min": 1})
    max_request_mb: int = field(default=64, metadata={
        "help": "largest request accepted, MiB (the gateway faces the internet: a small "
                "compressed request must not inflate to TF Serving's 2 GiB limit)",
        "min": 1, "max": 2047})

    def __post_init__(self) -> None:
        check_fields(self)
        parse_state_url(self.state)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise invalid("tls_key" if self.tls_key is None else "tls_cert",
                          None, "both --tls-cert and --tls-key, or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise invalid("tls_client_ca", self.tls_client_ca,
                          "--tls-cert and --tls-key as well (client certificates need TLS)")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise invalid(name, value, "an existing PEM file")
        if self.policy is not None:
            load_policy(self.policy)  # validate before anything starts


"""Typed settings: defaults < TOML file < environment ``FETALNODE__SECTION__KEY`` < CLI flags.

Model parameters are not here: they live in each bundle's ``configs/metadata.json``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints
from urllib.parse import urlsplit

from fetalnode.errors import ConfigError
from fetalnode.vocab import PixelCleaning, Role, UidConflict

ENV_PREFIX = "FETALNODE__"


@dataclass
class NodeSettings:
    """Identity and storage of this node."""

    ae_title: str = "FETALNODE"
    host: str = "127.0.0.1"
    port: int = 11112
    data_dir: str = "var"
    station_name: str = "fetalnode"
    role: str = Role.ALL
    metrics_port: int = 0
    plugins: list[str] = field(default_factory=list)


@dataclass
class ScpSettings:
    """The data terminal (DICOM SCP)."""

    allowed_calling_aets: list[str] = field(default_factory=list)
    allowed_sources: list[str] = field(default_factory=list)
    station_names: list[str] = field(default_factory=list)
    check_called_aet: bool = True
    # The ARTIM timer: a connection that sends no A-ASSOCIATE-RQ within this many seconds is closed.
    acse_timeout: float = 10.0
    dimse_timeout: float = 30.0
    # An association that receives nothing for this long is aborted.
    network_timeout: float = 60.0
    # A PDU that stops arriving for this long (a stalled or lying peer) ends the association.
    stall_timeout: float = 10.0
    # Negotiated associations in all, and from one address; when all are taken, the one idle the longest
    # (at least idle_eviction_seconds) is aborted to make room for a new one.
    maximum_associations: int = 16
    maximum_associations_per_address: int = 8
    idle_eviction_seconds: float = 2.0
    # A different object under an already received SOP Instance UID: "refuse" (0x0111) or "replace".
    uid_conflict: str = "refuse"
    # Largest P-DATA PDU a peer may send us (bytes; DICOM's usual 16382 makes a 300 kB image ~20 PDUs).
    maximum_pdu_size: int = 1_048_576
    # pynetdicom's DUL thread sleeps this long when its socket is idle (its default 1 ms: the wait,
    # not the work, bounded one sender to ~300 objects/s; pydicom/pynetdicom#650). Lower: faster, more idle CPU.
    dul_loop_delay: float = 0.0001
    min_free_bytes: int = 200_000_000
    tls_port: int = 0
    tls_certificate: str = ""
    tls_private_key: str = ""
    tls_ca_certificates: str = ""


@dataclass
class PrintSettings:
    """The virtual DICOM printer (Basic Grayscale/Color Print Management SCP) on the same AE."""

    enabled: bool = True
    printer_name: str = "fetalnode virtual printer"
    max_image_pixels: int = 16_000_000


@dataclass
class WorkerSettings:
    """The analysis worker."""

    enabled: bool = True
    poll_interval: float = 0.5
    lease_seconds: float = 300.0
    max_pixels: int = 40_000_000
    max_frames: int = 2000
    # Threads of torch / ONNX Runtime per worker process. processes x torch_threads above the CPU cores
    # thrashes (2 x 2 on 2 cores: 1.7 images/s against 13.1 for 2 x 1; docs/operations.md).
    torch_threads: int = 1
    # ``serve`` (role all): analysis worker processes beside the SCP's (0: one worker thread inside it).
    processes: int = 2
    # Niceness added to those worker processes (0-19): the SCP, whose answers a modality waits for, comes first.
    nice: int = 10
    application: str = "view-router"


@dataclass
class ModelSettings:
    """Which bundles the worker loads, by name, from ``dir``."""

    dir: str = "models"
    segmentation: str = "hc18-headseg"
    classifier: str = "fba-classifier"
    # The labour-progress application's pubic symphysis + fetal head segmentation.
    labour_segmentation: str = "psfhs-seg"
    view: str = "fetal-view"


def _default_routes() -> dict[str, str]:
    return {"axial_fetal_head": "fetal-head", "intrapartum_transperineal": "labour-progress"}


@dataclass
class RouterSettings:
    """The view router (``worker.application = "view-router"``): the application of each view.

    Keys are views of the view model (``fetalnode.vocab.View``; a view's earlier name, such as
    ``second_trimester_head``, is read with a deprecation warning), values application names; a view
    that is missing, maps to ``""`` or to an application that is not registered gets "not analysed:
    <view>, no application for this view" (a warning at start-up names an unregistered one).

    ``cross_check_probability``: an application that can recognise its own view (labour-progress: a
    pubic symphysis and a fetal head passing its gate) is asked about an image routed to another
    application whenever the view model gives its view at least this probability; when it recognises
    the image, the view is uncertain and no application answers. 0.01 is 35 times below the lowest
    probability of the intrapartum view on any validation image of that view (0.35); 1.0 turns it off.
    """

    applications: dict[str, str] = field(default_factory=_default_routes)
    cross_check_probability: float = 0.01
    # Frames of a cine the router looks at (evenly spaced; 1: the middle frame only); the application analyses
    # the one it recognises best. Each extra frame costs a decode and the view model (+ a head segmentation).
    cine_frames: int = 5
    # A view model built on the head segmentation's encoder and that segmentation run the encoder once per
    # frame (the segmentation's own graph, cut in two; its logits are unchanged). false: each runs its own.
    share_encoder: bool = True


@dataclass
class OrthancSettings:
    """The one destination ``orthanc`` while no ``[[destinations]]`` table exists (see ``destinations.base``)."""

    url: str = "http://127.0.0.1:8042"
    username: str = ""
    password: str = ""
    password_file: str = ""
    timeout: float = 30.0
    retry_initial: float = 1.0
    retry_max: float = 60.0
    max_attempts: int = 0


@dataclass
class DestinationSettings:
    """One ``[[destinations]]`` table: where a job's objects go, and which of them (``send``).

    ``kind``: ``dicom`` (C-STORE SCU, optional DICOM TLS), ``dicomweb`` (STOW-RS), ``orthanc`` (REST),
    ``folder`` (Part 10 files in ``folder``, named as ``layout`` says: ``archive``, the default,
    ``<Study>/<Series>/<SOP Instance UID>.dcm``; ``names``, ``<output name>.dcm``).
    ``send``: ``source`` (the received image, forwarded unchanged), ``outputs`` (every enabled output: the
    default) and/or enabled output names.
    ``max_attempts`` 0: retry transient failures until the destination takes the objects.
    """

    name: str = ""
    kind: str = ""
    send: list[str] = field(default_factory=lambda: ["outputs"])
    ae_title: str = ""
    host: str = ""
    port: int = 0
    calling_ae_title: str = ""
    tls_certificate: str = ""
    tls_private_key: str = ""
    tls_ca_certificates: str = ""
    url: str = ""
    username: str = ""
    password: str = ""
    password_file: str = ""
    folder: str = ""
    layout: str = "archive"
    timeout: float = 30.0
    max_attempts: int = 0
    retry_initial: float = 1.0
    retry_max: float = 60.0

    def resolved_password(self) -> str:
        """The password from ``password`` or ``password_file`` (re-read at each call; never logged)."""
        if self.password_file:
            try:
                return Path(self.password_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"destination {self.name}: cannot read password_file {self.password_file}: {exc}"
                ) from exc
        return self.password


@dataclass
class RouteSettings:
    """One ``[[routes]]`` table: which received images are analysed, only forwarded, or ignored.

    Rules are tried in order; the first whose every non-empty criterion matches wins (within one
    criterion, any listed value matches; ``study_description`` items are case-insensitive substrings).
    No rule matches: ``routing.default``.
    """

    name: str = ""
    action: str = "analyse"
    modality: list[str] = field(default_factory=list)
    sop_class: list[str] = field(default_factory=list)
    calling_ae: list[str] = field(default_factory=list)
    body_part: list[str] = field(default_factory=list)
    study_description: list[str] = field(default_factory=list)


@dataclass
class RoutingSettings:
    """What happens to an image no ``[[routes]]`` rule matches: ``analyse`` (the default; images the
    node cannot analyse are refused with a C-STORE status), ``forward`` or ``ignore``."""

    default: str = "analyse"


@dataclass
class BrokerSettings:
    """The cloud path (roles terminal/worker) over RabbitMQ. Empty ``url``: embedded SQLite queue.

    ``url``: ``amqps://USER@HOST:PORT/VHOST``, never with a password (``password_file`` holds it; the
    user of a terminal is its site's name on the broker). Plain ``amqp://`` only to a broker on this
    machine. ``ca_certificates``: the CA(s) the broker's certificate is checked against (empty: the
    system's trust store); ``certificate`` + ``private_key``: this node's client certificate, for a broker
    that requires one. ``sites``: role worker, the sites whose jobs it takes (``fetalnode.broker``).
    """

    url: str = ""
    password_file: str = ""
    ca_certificates: str = ""
    certificate: str = ""
    private_key: str = ""
    sites: list[str] = field(default_factory=list)
    heartbeat: float = 60.0
    connect_timeout: float = 10.0
    publish_batch: int = 50
    retry_seconds: float = 2.0


@dataclass
class MaskSettings:
    """One ``[[privacy.masks]]`` table: where the image is on a screen or film that has no ultrasound regions.

    ``rectangles`` are the areas KEPT, ``[x0, y0, x1, y1]`` in pixels, corners included (as the
    Sequence of Ultrasound Regions gives them); every pixel outside them is blanked. An entry matches an
    image when each non-empty criterion equals the image's Manufacturer, Manufacturer's Model Name
    and Station Name (case and surrounding spaces ignored); an empty criterion matches anything.
    ``name`` only labels the entry in the audit.
    """

    name: str = ""
    manufacturer: str = ""
    model: str = ""
    station: str = ""
    rectangles: list[list[int]] = field(default_factory=list)


@dataclass
class PrivacySettings:
    """Pseudonymisation at the terminal before an image leaves the site (docs/security.md).

    ``pseudonymise`` unset (``None``): on for role ``terminal``, off for the other roles (see
    :meth:`enabled_for`); ``false`` on a terminal sends identified images, same site only.
    ``secret_file``: the per-site key of the UID pseudonyms (at least 32 bytes, never logged).
    ``pixels``: a :class:`fetalnode.vocab.PixelCleaning` value.
    """

    pseudonymise: bool | None = None
    secret_file: str = ""
    pixels: str = PixelCleaning.REGIONS
    masks: list[MaskSettings] = field(default_factory=list)

    def enabled_for(self, role: str) -> bool:
        """Whether images are pseudonymised before they leave a node of ``role``."""
        return self.pseudonymise if self.pseudonymise is not None else role == Role.TERMINAL


@dataclass
class OutputSettings:
    """Which output objects the node writes (``enabled``, by registered name) and how."""

    enabled: list[str] = field(default_factory=lambda: ["sr", "sc", "gsps", "seg", "obsr"])
    heatmap_alpha: float = 0.6
    manufacturer: str = "fetalnode project"
    institution_name: str = ""


@dataclass
class LoggingSettings:
    """Log levels: ``third_party`` applies to the libraries' loggers (highdicom, pynetdicom, httpx, ...)."""

    third_party: str = "WARNING"


THIRD_PARTY_LOGGERS = (
    "highdicom",
    "pynetdicom",
    "httpx",
    "httpcore",
    "kombu",
    "amqp",
    "onnxruntime",
    "dicomweb_client",
)


@dataclass
class Settings:
    """All settings of a node."""

    node: NodeSettings = field(default_factory=NodeSettings)
    scp: ScpSettings = field(default_factory=ScpSettings)
    print: PrintSettings = field(default_factory=PrintSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    router: RouterSettings = field(default_factory=RouterSettings)
    orthanc: OrthancSettings = field(default_factory=OrthancSettings)
    broker: BrokerSettings = field(default_factory=BrokerSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    destinations: list[DestinationSettings] = field(default_factory=list)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    routes: list[RouteSettings] = field(default_factory=list)

    @property
    def data_path(self) -> Path:
        return Path(self.node.data_dir)

    def masked(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked, for the start-up log."""
        data = dataclasses.asdict(self)
        if data["orthanc"]["password"]:
            data["orthanc"]["password"] = "***"
        for destination in data["destinations"]:
            if destination["password"]:
                destination["password"] = "***"
        data["broker"]["url"] = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", data["broker"]["url"])
        return data


def _coerce(value: Any, typ: Any, where: str) -> Any:
    if typ == bool | None:
        # Unset: the role decides; "" or "auto" from the environment unsets it.
        if isinstance(value, str) and value.strip().lower() in {"", "auto"}:
            return None
        return _coerce(value, bool, where)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
            return value.lower() in {"1", "true", "yes", "on"}
        raise ConfigError(f"{where}: expected a boolean, got {value!r}")
    if typ is int:
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from exc
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from exc
    if typ is str:
        return str(value)
    if typ == list[str]:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            return [str(v) for v in value]
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
    if typ == dict[str, str]:
        # A TOML table, or "key=value,key=value" from the environment.
        if isinstance(value, str):
            pairs = [item.partition("=") for item in value.split(",") if item.strip()]
            if any(not sep for _, sep, _ in pairs):
                raise ConfigError(f"{where}: expected key=value items separated by commas, got {value!r}")
            return {k.strip(): v.strip() for k, _, v in pairs}
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return {str(k): v for k, v in value.items()}
        raise ConfigError(f"{where}: expected a table of strings, got {value!r}")
    if typ == list[list[int]]:
        if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
            raise ConfigError(f"{where}: expected a list of lists of integers, e.g. [[0, 60, 639, 479]], got {value!r}")
        return [[_coerce(v, int, f"{where}[{i}]") for v in row] for i, row in enumerate(value)]
    item_type = getattr(typ, "__args__", (None,))[0]
    if getattr(typ, "__origin__", None) is list and dataclasses.is_dataclass(item_type):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected an array of tables [[...]] in the config file, got {value!r}")
        return _tables(item_type, value, where)
    raise ConfigError(f"{where}: unsupported type {typ}")


def _tables(item_type: Any, items: list[Any], where: str) -> list[Any]:
    """Each table of a TOML array of tables as one ``item_type`` dataclass, its keys typed."""
    hints, known = get_type_hints(item_type), {f.name for f in fields(item_type)}
    parsed = []
    for i, table in enumerate(items):
        if not isinstance(table, dict):
            raise ConfigError(f"{where} item {i + 1}: expected a table")
        values = {}
        for key, value in table.items():
            if key not in known:
                raise ConfigError(f"{where} item {i + 1}: unknown key {key!r}")
            values[key] = _coerce(value, hints[key], f"{where} item {i + 1} {key}")
        parsed.append(item_type(**values))
    return parsed


def _table_list(settings: Settings, name: str, items: list[Any], where: str) -> None:
    """``[[name]]`` arrays of tables (``destinations``): each table becomes one dataclass instance."""
    hint = get_type_hints(Settings).get(name)
    item_type: Any = getattr(hint, "__args__", (None,))[0]
    if not dataclasses.is_dataclass(item_type):
        raise ConfigError(f"{where}: {name!r} must be a [table], not an array of tables")
    setattr(settings, name, _tables(item_type, items, f"{where}: [[{name}]]"))


def _apply(settings: Settings, section: str, key: str, value: Any, where: str) -> None:
    sub = getattr(settings, section, None)
    if sub is None or not dataclasses.is_dataclass(sub) or isinstance(sub, type):
        raise ConfigError(f"{where}: unknown section [{section}]")
    hints = get_type_hints(type(sub))
    if key not in {f.name for f in fields(sub)}:
        raise ConfigError(f"{where}: unknown key {section}.{key}")
    setattr(sub, key, _coerce(value, hints[key], f"{where} {section}.{key}"))


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build settings from defaults, a TOML file, the environment and CLI overrides.

    Parameters
    ----------
    path
        TOML file with ``[section]`` tables; ``None`` for defaults only.
    env
        Environment to read ``FETALNODE__SECTION__KEY`` from (default ``os.environ``).
    overrides
        ``{"section.key": value}`` from CLI flags, applied last.
    """
    settings = Settings()
    if path is not None:
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        for section, table in doc.items():
            if isinstance(table, list):
                _table_list(settings, section, table, str(path))
                continue
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: top-level key {section!r} must be a [table]")
            for key, value in table.items():
                _apply(settings, section, key, value, str(path))
    for name, value in (os.environ if env is None else env).items():
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2:
            raise ConfigError(f"environment {name}: expected FETALNODE__SECTION__KEY")
        _apply(settings, parts[0], parts[1], value, f"environment {name}")
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        _apply(settings, section, key, value, "command line")
    if settings.orthanc.password and settings.orthanc.password_file:
        raise ConfigError("set orthanc.password or orthanc.password_file, not both")
    if settings.node.role not in set(Role):
        raise ConfigError(f"node.role must be one of {', '.join(Role)}, not {settings.node.role!r}")
    if settings.scp.uid_conflict not in set(UidConflict):
        raise ConfigError(f"scp.uid_conflict must be one of {', '.join(UidConflict)}, not {settings.scp.uid_conflict!r}")
    scp = settings.scp
    if scp.maximum_associations < 1 or scp.maximum_associations_per_address < 1:
        raise ConfigError("scp.maximum_associations and scp.maximum_associations_per_address must be at least 1")
    if not 0.0 <= settings.router.cross_check_probability <= 1.0:
        raise ConfigError(
            f"router.cross_check_probability must be between 0 and 1, not {settings.router.cross_check_probability}"
        )
    if not 1 <= settings.router.cine_frames <= 100:
        raise ConfigError(f"router.cine_frames must be between 1 and 100, not {settings.router.cine_frames}")
    _check_privacy(settings.privacy)
    _check_broker(settings.broker)
    if settings.logging.third_party.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ConfigError(
            f"logging.third_party must be DEBUG, INFO, WARNING or ERROR, not {settings.logging.third_party!r}"
        )
    return settings


def _check_privacy(privacy: PrivacySettings) -> None:
    """``privacy.pixels`` is a known value and every mask rectangle is four corners in order.

    The secret is not read here (``fetalnode.privacy.read_secret`` does, when a pseudonymiser starts).
    """
    if privacy.pixels not in set(PixelCleaning):
        raise ConfigError(f"privacy.pixels must be one of {', '.join(PixelCleaning)}, not {privacy.pixels!r}")
    for i, mask in enumerate(privacy.masks):
        label = f"[[privacy.masks]] item {i + 1}" + (f" ({mask.name})" if mask.name else "")
        if not mask.rectangles:
            raise ConfigError(f"{label}: rectangles is empty; list the areas to keep as [[x0, y0, x1, y1], ...]")
        for rect in mask.rectangles:
            if len(rect) != 4:
                raise ConfigError(f"{label}: rectangle {rect} must be [x0, y0, x1, y1]")
            x0, y0, x1, y1 = rect
            if min(rect) < 0 or x1 < x0 or y1 < y0:
                raise ConfigError(f"{label}: rectangle {rect} must have 0 <= x0 <= x1 and 0 <= y0 <= y1")


# A site is a RabbitMQ user and part of its queue names (fetalnode.broker): lower case, digits, hyphens.
SITE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine: ``localhost`` or a loopback address."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_broker(b: BrokerSettings) -> None:
    """``[broker]`` as the broker link needs it (``fetalnode.broker``); files are read at start, not here."""
    for site in b.sites:
        if not SITE_NAME.fullmatch(site):
            raise ConfigError(f"broker.sites: {site!r} is not a site name (lower-case letters, digits and hyphens)")
    if not b.url:
        return
    try:
        parts = urlsplit(b.url)
        _ = parts.port  # raises ValueError on a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"broker.url is not a URL: {exc}") from None
    if parts.scheme not in {"amqp", "amqps"}:
        raise ConfigError(f"broker.url must start with amqps:// (or amqp:// to this machine), not {parts.scheme}://")
    if parts.password is not None:
        raise ConfigError(
            "broker.url must not hold a password: write amqps://USER@HOST:PORT/VHOST and put the password "
            "in the file named by broker.password_file"
        )
    if not parts.username or not parts.hostname:
        raise ConfigError("broker.url needs a user and a host: amqps://USER@HOST:PORT/VHOST")
    if not b.password_file:
        raise ConfigError("broker.password_file is empty: the broker user's password is read from that file")
    if bool(b.certificate) != bool(b.private_key):
        raise ConfigError("broker.certificate and broker.private_key go together (a client certificate and its key)")
    if parts.scheme == "amqp":
        if not is_loopback(parts.hostname):
            raise ConfigError(
                f"broker.url: plain amqp:// is unencrypted and allowed only to a broker on this machine, not "
                f"{parts.hostname}; use amqps:// with broker.ca_certificates"
            )
        if b.ca_certificates or b.certificate:
            raise ConfigError("broker.ca_certificates/certificate/private_key are TLS settings: use an amqps:// URL")
    if b.heartbeat < 0 or b.connect_timeout <= 0:
        raise ConfigError("broker.heartbeat must be >= 0 and broker.connect_timeout > 0")

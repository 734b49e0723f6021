"""``[broker]`` settings and what fetalnode.broker derives from them, without a broker."""

from __future__ import annotations

import json
import re
import ssl
from pathlib import Path

import pytest

from fetalnode import broker
from fetalnode.broker import WORKER_PERMISSIONS, SiteTopology, site_permissions
from fetalnode.config import BrokerSettings, load_settings
from fetalnode.errors import ConfigError
from harness.node import ROOT

pytestmark = pytest.mark.unit


def load(**broker_keys: object) -> BrokerSettings:
    return load_settings(env={}, overrides={f"broker.{k}": v for k, v in broker_keys.items()}).broker


@pytest.mark.parametrize(
    "url",
    ["amqps://site-a:secret@broker.example.org:5671/fetalnode", "amqp://guest:guest@127.0.0.1:5672//"],
)
def test_a_password_in_the_url_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match=r"must not hold a password.*broker\.password_file"):
        load(url=url, password_file="/run/secrets/broker")
    with pytest.raises(ConfigError, match="must not hold a password"):
        load_settings(env={"FETALNODE__BROKER__URL": url, "FETALNODE__BROKER__PASSWORD_FILE": "/x"})


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ({"url": "amqps://site-a@broker.example.org/fetalnode"}, "password_file is empty"),
        ({"url": "amqps://broker.example.org/fetalnode", "password_file": "/p"}, "needs a user and a host"),
        ({"url": "https://site-a@broker.example.org/", "password_file": "/p"}, "must start with amqps://"),
        ({"url": "amqp://site-a@10.0.0.5:5672/fetalnode", "password_file": "/p"}, "only to a broker on this machine"),
        ({"url": "amqp://site-a@broker.example.org/x", "password_file": "/p"}, "only to a broker on this machine"),
        (
            {"url": "amqp://site-a@127.0.0.1/x", "password_file": "/p", "ca_certificates": "/ca.crt"},
            "use an amqps:// URL",
        ),
        (
            {"url": "amqps://site-a@b.example.org/x", "password_file": "/p", "certificate": "/c.crt"},
            "go together",
        ),
        ({"sites": ["site-a", "Site_B"]}, "not a site name"),
        ({"url": "amqps://site-a@b.example.org:port/x", "password_file": "/p"}, "not a URL"),
    ],
)
def test_broker_settings_that_cannot_work_are_refused(keys: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        load(**keys)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.0.0.53"])
def test_plain_amqp_to_this_machine_is_allowed(host: str) -> None:
    b = load(url=f"amqp://guest@{host}:5672//", password_file="/p")
    assert not broker.is_tls(b) and broker.tls_options(b) is None


def test_tls_options_require_tls_1_2_and_the_broker_certificate_for_the_url_host() -> None:
    b = load(
        url="amqps://site-a@broker.example.org:5671/fetalnode",
        password_file="/p",
        ca_certificates="/etc/ca.crt",
        certificate="/etc/node.crt",
        private_key="/etc/node.key",
    )
    assert broker.tls_options(b) == {
        "cert_reqs": ssl.CERT_REQUIRED,
        "server_hostname": "broker.example.org",
        "tls_minimum_version": ssl.TLSVersion.TLSv1_2,
        "ca_certs": "/etc/ca.crt",
        "certfile": "/etc/node.crt",
        "keyfile": "/etc/node.key",
    }
    assert (broker.site_of(b), broker.vhost_of(b)) == ("site-a", "fetalnode")
    system_store = load(url="amqps://site-a@broker.example.org/fetalnode", password_file="/p")
    assert "ca_certs" not in (broker.tls_options(system_store) or {})


def test_the_password_is_read_from_its_file_when_connecting(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("p@ss:w/rd\n")
    b = load(url="amqps://site-a@broker.example.org:5671/fetalnode", password_file=str(secret))
    assert broker.connection(b).password == "p@ss:w/rd"
    secret.write_text("rotated\n")
    assert broker.connection(b).password == "rotated"


def test_the_masked_settings_hold_no_secret(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret-broker-password\n")
    config = tmp_path / "node.toml"
    config.write_text(
        f'[broker]\nurl = "amqps://site-a@broker.example.org:5671/fetalnode"\npassword_file = "{secret}"\n'
    )
    settings = load_settings(config, env={})
    broker.check(settings.broker)  # reads the file, as serve does at start
    text = json.dumps(settings.masked())
    assert "s3cret-broker-password" not in text and str(secret) in text


def test_permission_patterns_name_one_site_only() -> None:
    a, b = SiteTopology("site-a"), SiteTopology("site-b")
    perms = site_permissions("site-a")
    names = [a.submit_exchange, a.jobs_queue, a.return_exchange, a.results_queue, b.submit_exchange,
             b.results_queue, "amq.default", "fetalnode.site-a.submitx", "xfetalnode.site-a.results"]  # fmt: skip

    def matching(pattern: str) -> list[str]:
        return [name for name in names if re.search(pattern, name)]

    assert matching(perms.configure) == []
    assert matching(perms.write) == [a.submit_exchange]
    assert matching(perms.read) == [a.results_queue]
    assert matching(WORKER_PERMISSIONS.configure) == [a.submit_exchange, a.jobs_queue, a.return_exchange,
                                                      a.results_queue, b.submit_exchange, b.results_queue]  # fmt: skip
    assert matching(WORKER_PERMISSIONS.write) == [a.jobs_queue, a.return_exchange, a.results_queue, b.results_queue]
    assert matching(WORKER_PERMISSIONS.read) == [a.submit_exchange, a.jobs_queue, a.return_exchange, b.submit_exchange]
    with pytest.raises(ConfigError):
        SiteTopology("site.a")  # a dot would reach into another site's names


def test_the_operations_guide_gives_the_permissions_the_code_uses() -> None:
    guide = re.sub(r" \\\n\s*", " ", (ROOT / "docs" / "operations.md").read_text())  # shell line continuations
    worker = " ".join(f"'{p}'" for p in WORKER_PERMISSIONS.args())
    site = " ".join(f"'{p}'" for p in site_permissions("site-a").args())
    assert f"set_permissions -p fetalnode fetalnode-worker {worker}" in guide
    assert f"set_permissions -p fetalnode site-a {site}" in guide

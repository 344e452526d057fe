"""The environment: every variable flashgate reads, named once, and the only reads of it.

Service options (``flashgate backend``, ``flashgate bridge``) are read by click from the
variable named in their ``envvar=``; everything else is read here. No other module touches
``os.environ`` (tests/test_boundaries.py checks), so this list is complete:

========================== ==========================================================
``FLASHGATE_HOME``         the admin home (default ``./.flashgate``)
``FLASHGATE_ADMIN_PASSPHRASE`` the passphrase of ``admin.key`` (``fleet init``, the admin
                           tooling; never a bridge's or the backend's)
``FLASHGATE_NODE_PASSPHRASE`` a bridge's passphrase: of its own bundle (``flashgate bridge``)
``FLASHGATE_PASSPHRASE_<ID>`` node ``<id>``'s passphrase at ``fleet init`` and ``dev up``
                           (:func:`node_passphrase_env`: ``FLASHGATE_PASSPHRASE_NODE_1``
                           for node-1)
``FLASHGATE_PASSPHRASE``   the old single passphrase, still accepted for any sealed file
                           whose own variable is unset (the weak setting: every holder then
                           has every other's passphrase)
``FLASHGATE_NATS_URL``     NATS URLs, comma-separated (``--nats``; an admin home without
                           ``config.json``)
``FLASHGATE_NATS_USER``    NATS user (``--nats-user``; admin commands without a login)
``FLASHGATE_NATS_PASSWORD`` NATS password (``--nats-password``; likewise)
``FLASHGATE_DB_URL``       the backend's database (``--db``)
``FLASHGATE_DB_PASSWORD``  its password (``--db-password``)
``FLASHGATE_FLEET_DIR``    the backend's fleet directory (``--fleet-dir``)
``FLASHGATE_HEALTH_FILE``  the backend's health file (``--health-file``)
``FLASHGATE_BUNDLE``       a bridge's sealed bundle (``--bundle``)
``FLASHGATE_GATEWAY_LISTEN`` a bridge's gateway address, HOST:PORT (``--gateway-listen``)
``FLASHGATE_FAILPOINTS``   crash points for failure tests (:mod:`flashgate.failpoints`)
``NATS_SERVER_BIN``        the nats-server the local cluster runs
                           (:mod:`flashgate.devcluster.nats_server`)
========================== ==========================================================

Options that name a variable of the user's choosing (``--passphrase-env VAR``) are read
with :func:`read` too.
"""

from __future__ import annotations

import os

HOME_ENV = "FLASHGATE_HOME"
PASSPHRASE_ENV = "FLASHGATE_PASSPHRASE"  # noqa: S105 - a variable name, not a password
ADMIN_PASSPHRASE_ENV = "FLASHGATE_ADMIN_PASSPHRASE"  # noqa: S105 - a variable name
NODE_PASSPHRASE_ENV = "FLASHGATE_NODE_PASSPHRASE"  # noqa: S105 - a variable name
NATS_URL_ENV = "FLASHGATE_NATS_URL"
NATS_USER_ENV = "FLASHGATE_NATS_USER"
NATS_PASSWORD_ENV = "FLASHGATE_NATS_PASSWORD"  # noqa: S105 - a variable name
DB_URL_ENV = "FLASHGATE_DB_URL"
DB_PASSWORD_ENV = "FLASHGATE_DB_PASSWORD"  # noqa: S105 - a variable name
FLEET_DIR_ENV = "FLASHGATE_FLEET_DIR"
HEALTH_FILE_ENV = "FLASHGATE_HEALTH_FILE"
STREAM_REPLICAS_ENV = "FLASHGATE_STREAM_REPLICAS"
BUNDLE_ENV = "FLASHGATE_BUNDLE"
GATEWAY_LISTEN_ENV = "FLASHGATE_GATEWAY_LISTEN"
FAILPOINTS_ENV = "FLASHGATE_FAILPOINTS"
NATS_SERVER_BIN_ENV = "NATS_SERVER_BIN"

#: ``dev up`` gives its children its own NATS settings, no failpoints and no passphrase
#: but a bridge's own: variables with these prefixes are not passed on from its environment.
NOT_INHERITED_BY_DEV_CHILDREN = (
    "FLASHGATE_NATS",
    FAILPOINTS_ENV,
    PASSPHRASE_ENV,  # and every FLASHGATE_PASSPHRASE_<ID>
    ADMIN_PASSPHRASE_ENV,
    NODE_PASSPHRASE_ENV,
    GATEWAY_LISTEN_ENV,  # dev up gives each bridge a port of its own (or none)
)


#: All a helper process that only computes (a bridge's signature worker) is given of the
#: bridge's environment: enough for Python to run and find flashgate, never a passphrase.
FOR_A_PYTHON_HELPER = (
    "PATH",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "LANG",
    "LC_ALL",
    "TMPDIR",
)


def node_passphrase_env(node_id: str) -> str:
    """The variable holding node ``node_id``'s passphrase at ``fleet init``:
    ``FLASHGATE_PASSPHRASE_`` and the id in capitals, ``-`` as ``_`` (node-1: ``..._NODE_1``)."""
    return f"{PASSPHRASE_ENV}_{node_id.upper().replace('-', '_')}"


def read(name: str) -> str | None:
    """The value of variable ``name``, or None when it is unset (an empty value is "")."""
    return os.environ.get(name)


def is_set(name: str) -> bool:
    """Whether variable ``name`` is set at all (even to "")."""
    return name in os.environ


def only(names: tuple[str, ...]) -> dict[str, str]:
    """The variables ``names`` that are set, for a child process given nothing else."""
    return {name: os.environ[name] for name in names if name in os.environ}


def inherited(*, without_prefixes: tuple[str, ...]) -> dict[str, str]:
    """The whole environment, for a child process, without the variables whose names
    start with one of ``without_prefixes``."""
    return {k: v for k, v in os.environ.items() if not k.startswith(without_prefixes)}

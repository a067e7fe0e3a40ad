"""Lab configuration: where the lab lives, its sizes, and its ports.

The configuration is fixed at the first `lab up` and persisted in
``<home>/lab.json`` so that `lab down && lab up` brings back the same ports,
names and data. Everything binds to 127.0.0.1.
"""
import fcntl
import json
import os
import socket
import uuid as uuidlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"

# Fixed offsets from the base port. Postgres peers and anything provisioned
# later take ports from the dynamic range (see LabConfig.alloc_port).
PORT_OFFSETS = {
    "zookeeper": 0,
    "sapi": 10,
    "imgapi": 11,
    "vmapi": 12,
}
EMORAY_BASE = 100      # electric-moray i: rpc base+100+i, status base+150+i
EMORAY_STATUS_BASE = 150
MORAY_BASE = 200       # moray zones: base+200.. (allocated, see alloc_port)
STORAGE_BASE = 300     # storage node k: base+300+k (nginx), minnow has no port
DYNAMIC_BASE = 1000    # postgres peers (pg port, backup port), morays, ...
DYNAMIC_SIZE = 2000


class LabError(Exception):
    """A lab failure, naming the component and where its log is."""

    def __init__(self, component, message, log=None):
        self.component = component
        self.log = log
        text = f"{component}: {message}"
        if log:
            text += f" (log: {log})"
        super().__init__(text)


@dataclass
class LabConfig:
    home: str
    base_port: int = 24000
    shards: int = 2
    emorays: int = 2
    storage_nodes: int = 4
    vnodes: int = 4096
    domain: str = "lab.manta.test"
    region: str = "lab"
    datacenters: list = field(default_factory=lambda: ["lab-dc1", "lab-dc2", "lab-dc3"])
    next_port: int = 0  # dynamic allocation cursor (offset within the dynamic range)
    # Lab compute nodes: two per datacenter. SAPI accepts these as server_uuid.
    servers: list = field(default_factory=list)

    def __post_init__(self):
        if not self.servers:
            self.servers = [
                {"uuid": str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"cn{i}.{dc}.{self.domain}")),
                 "hostname": f"cn{i}-{dc}", "datacenter": dc}
                for dc in self.datacenters for i in (1, 2)]

    def servers_in(self, dc):
        return [s for s in self.servers if s["datacenter"] == dc]

    def server(self, server_uuid):
        for s in self.servers:
            if s["uuid"] == server_uuid:
                return s
        return None

    # ---- paths -------------------------------------------------------------
    @property
    def root(self):
        return Path(self.home)

    def path(self, *parts):
        p = self.root.joinpath(*parts)
        return p

    @property
    def run_dir(self):
        return self.path("run")       # pidfiles

    @property
    def log_dir(self):
        return self.path("log")

    @property
    def zones_dir(self):
        return self.path("zones")     # one JSON record per lab zone

    def log(self, name):
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self.log_dir / f"{name}.log"

    # ---- ports -------------------------------------------------------------
    def port(self, name):
        return self.base_port + PORT_OFFSETS[name]

    def emoray_port(self, i):
        return self.base_port + EMORAY_BASE + i

    def emoray_status_port(self, i):
        return self.base_port + EMORAY_STATUS_BASE + i

    def storage_port(self, k):
        return self.base_port + STORAGE_BASE + k

    @property
    def zk_connect(self):
        return f"{HOST}:{self.port('zookeeper')}"

    def url(self, name):
        return f"http://{HOST}:{self.port(name)}"

    def alloc_port(self):
        """Allocate a free port from the dynamic range, persisted across runs."""
        with self.locked():
            cur = load(self.home)
            for _ in range(DYNAMIC_SIZE):
                off = cur.next_port % DYNAMIC_SIZE
                cur.next_port = off + 1
                port = self.base_port + DYNAMIC_BASE + off
                if port_free(port):
                    cur.save()
                    self.next_port = cur.next_port
                    return port
        raise LabError("lab", f"no free port in {self.base_port + DYNAMIC_BASE}..+{DYNAMIC_SIZE}")

    # ---- names -------------------------------------------------------------
    def shard_name(self, n):
        return f"{n}.moray.{self.domain}"

    def storage_id(self, k):
        return f"{k}.stor.{self.domain}"

    def pnode(self, shard):
        return f"tcp://{shard}:2020"

    # ---- persistence -------------------------------------------------------
    @contextmanager
    def locked(self, name=".lock"):
        """An exclusive flock on <home>/<name>. flock is per open file, so a
        holder must not take the same lock again: `lab up` uses ".up.lock"."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.path(name), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def save(self):
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.path("lab.json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, self.path("lab.json"))


def default_home():
    """$LAB_HOME, else <repo>/.lab when the postgres user can reach it (every
    ancestor searchable by others), else a per-checkout dir in /var/tmp."""
    if os.environ.get("LAB_HOME"):
        return os.environ["LAB_HOME"]
    if all(os.stat(d).st_mode & 0o001 for d in [REPO, *REPO.parents]):
        return str(REPO / ".lab")
    import hashlib
    return f"/var/tmp/manta-lab-{hashlib.sha256(str(REPO).encode()).hexdigest()[:8]}"


def load(home=None):
    """Load the persisted config, or a default one (not yet saved)."""
    home = str(Path(home or default_home()).resolve())
    f = Path(home) / "lab.json"
    if f.exists():
        data = json.loads(f.read_text())
        data["home"] = home
        return LabConfig(**data)
    cfg = LabConfig(home=home)
    if os.environ.get("LAB_BASE_PORT"):
        cfg.base_port = int(os.environ["LAB_BASE_PORT"])
    return cfg


def ephemeral_range():
    """The kernel's range for client ports; lab ports must stay outside it."""
    try:
        lo, hi = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def port_block(base):
    """The first and last port a lab on this base port may use."""
    return base, base + DYNAMIC_BASE + DYNAMIC_SIZE - 1


def port_free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        s.close()

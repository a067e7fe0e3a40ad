"""Pieces of the lab APIs that need no server: the provisioning dispatch (with
a fake zone-kind registry: the only place a fake is used), GetConfig's Etag
(checked against node running the algorithm of sdc-sapi's configs.js), and
the metadata_schema validator."""
import json
import shutil
import subprocess
import uuid as uuidlib

import pytest

from manta_lab import config, zones
from manta_lab.apis import provision, sapi
from manta_lab.config import LabError


class FakeKind:
    """Records calls the way peer/moray modules would be called."""

    def __init__(self, cfg, kind):
        self.cfg, self.kind, self.calls = cfg, kind, []

    def provision(self, cfg, shard=None, server_uuid=None, zuuid=None, metadata=None):
        self.calls.append(("provision", shard, server_uuid, zuuid, metadata))
        zone = {"uuid": zuuid, "alias": f"fake-{zuuid[:8]}", "kind": self.kind, "shard": shard,
                "server_uuid": server_uuid, "ports": {}, "paths": {}, "metadata": metadata,
                "services": {}}
        zones.save(cfg, zone)
        return zone

    def reprovision(self, cfg, zone, metadata):
        self.calls.append(("reprovision", zone["uuid"], metadata))
        return zone

    def destroy(self, cfg, zone):
        self.calls.append(("destroy", zone["uuid"]))
        zones.remove(cfg, zone["uuid"])


class NoReprovision:
    """A kind module without reprovision (like moray.py)."""

    def __init__(self, cfg, kind):
        self._fake = FakeKind(cfg, kind)
        self.calls = self._fake.calls
        self.provision = self._fake.provision
        self.destroy = self._fake.destroy


@pytest.fixture
def cfg(tmp_path):
    return config.LabConfig(home=str(tmp_path), base_port=32900)


def test_shard_of_prefers_service_name(cfg):
    assert provision.shard_of(cfg, {"SERVICE_NAME": cfg.shard_name(3), "SHARD": "1"}) == cfg.shard_name(3)
    assert provision.shard_of(cfg, {"SHARD": "2"}) == cfg.shard_name(2)
    assert provision.shard_of(cfg, {"SHARD": 4}) == cfg.shard_name(4)
    assert provision.shard_of(cfg, {"SERVICE_NAME": "electric-moray.x"}) is None
    assert provision.shard_of(cfg, {}) is None


def test_check_names_the_missing_metadata(cfg):
    probs = provision.check(cfg, "postgres", {"DATACENTER": "dc"})
    assert probs and "SHARD" in probs[0] and "SERVICE_NAME" in probs[0]
    assert provision.check(cfg, "postgres", {"SHARD": "1"}) == []
    assert provision.check(cfg, "webapi", {}) == []


def test_dispatch_provision_sharded_and_recorded_only(cfg, monkeypatch):
    pg = FakeKind(cfg, "postgres")
    monkeypatch.setattr(provision, "PROVISIONERS", {"postgres": pg})
    zu = str(uuidlib.uuid4())
    md = {"SHARD": "2", "DATACENTER": "dc1"}
    zone = provision.provision(cfg, "postgres", zu, cfg.servers[0]["uuid"], md)
    assert pg.calls == [("provision", cfg.shard_name(2), cfg.servers[0]["uuid"], zu, md)]
    assert zone["uuid"] == zu
    assert provision.provision(cfg, "webapi", str(uuidlib.uuid4()), cfg.servers[0]["uuid"], {}) is None
    with pytest.raises(LabError):
        provision.provision(cfg, "postgres", str(uuidlib.uuid4()), cfg.servers[0]["uuid"], {})


def test_dispatch_reprovision_uses_the_module_and_keeps_the_zone(cfg, monkeypatch):
    pg = FakeKind(cfg, "postgres")
    monkeypatch.setattr(provision, "PROVISIONERS", {"postgres": pg})
    zu = str(uuidlib.uuid4())
    provision.provision(cfg, "postgres", zu, cfg.servers[0]["uuid"], {"SHARD": "1"})
    new_md = {"SHARD": "3", "SERVICE_NAME": cfg.shard_name(3)}
    provision.reprovision(cfg, "postgres", zu, cfg.servers[0]["uuid"], new_md)
    assert pg.calls[-1] == ("reprovision", zu, new_md)
    provision.destroy(cfg, "postgres", zu)
    assert pg.calls[-1] == ("destroy", zu)
    assert provision.find_zone(cfg, zu) is None
    provision.destroy(cfg, "postgres", zu)       # gone already: nothing to do
    assert pg.calls[-1] == ("destroy", zu)


def test_dispatch_reprovision_of_a_stateless_kind_recreates_it(cfg, monkeypatch):
    mo = NoReprovision(cfg, "moray")
    monkeypatch.setattr(provision, "PROVISIONERS", {"moray": mo})
    zu = str(uuidlib.uuid4())
    provision.provision(cfg, "moray", zu, cfg.servers[1]["uuid"], {"SHARD": "1"})
    provision.set_alias(cfg, zu, "1.moray.lab-alias")
    provision.reprovision(cfg, "moray", zu, cfg.servers[0]["uuid"], {"SHARD": "1", "X": 1})
    assert [c[0] for c in mo.calls] == ["provision", "destroy", "provision"]
    assert mo.calls[-1][2] == cfg.servers[1]["uuid"]      # same server as before
    assert mo.calls[-1][3] == zu                          # same uuid
    assert zones.get(cfg, zu)["alias"] == "1.moray.lab-alias"


def test_module_import_failure_is_a_lab_error(cfg, monkeypatch):
    monkeypatch.setattr(provision, "PROVISIONERS", {"postgres": "manta_lab.no_such_module"})
    with pytest.raises(LabError) as ei:
        provision.provision(cfg, "postgres", str(uuidlib.uuid4()), cfg.servers[0]["uuid"],
                            {"SHARD": "1"})
    assert "no_such_module" in str(ei.value)


# ---- GetConfig Etag: the port of configs.js against node ----------------------------

JS = r"""
const crypto = require('crypto');
function flatten(obj, prevKey, vals) {
  if (Array.isArray(obj)) {
    obj.map(function (val) { return flatten(val, prevKey === '' ? '' : prevKey, vals); });
  } else if (typeof (obj) === 'object') {
    for (var key in obj) {
      var newKey = (prevKey === '' ? key : [prevKey, key].join(','));
      flatten(obj[key], newKey, vals);
    }
  } else {
    vals.push([prevKey, obj.toString()].join(','));
  }
}
const config = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const vals = []; flatten(config, '', vals); vals.sort();
process.stdout.write(crypto.createHash('sha1').update(JSON.stringify(vals), 'utf8').digest('hex'));
"""


def test_config_etag_matches_sdc_sapi_algorithm():
    assert shutil.which("node"), "node is required (the setup installs the node-fash oracle with it)"
    cfgs = [
        {"manifests": [], "metadata": {}},
        {"manifests": [{"uuid": "u", "name": "n", "path": "/p", "template": {"a": [1, 2]},
                        "version": "1.0.0", "post_cmd": "svcadm refresh x"}],
         "metadata": {"INDEX_MORAY_SHARDS": [{"host": "1.moray.x"}, {"host": "2.moray.x", "last": True}],
                      "N": 3, "F": 1.5, "BIG": 1e21, "NEG": -0.25, "T": True, "NULL": None,
                      "S": 'quote " back \\ tab\t nl\n é ✓', "EMPTY": "", "NESTED": {"b": {"c": [1]}},
                      "Z": "z", "a": "lower", "10": "numeric key"}},
    ]
    for c in cfgs:
        want = subprocess.run(["node", "-e", JS], input=json.dumps(c), capture_output=True,
                              text=True, check=True).stdout
        assert sapi.config_etag(c) == want, c


def test_schema_errors_subset():
    schema = {"type": "object", "required": ["A"],
              "properties": {"A": {"type": "integer", "minimum": 1},
                             "L": {"type": "array", "items": {"type": "string"}},
                             "E": {"enum": ["x", "y"]}},
              "additionalProperties": False}
    assert sapi.schema_errors({"A": 2, "L": ["a"], "E": "x"}, schema, "metadata") == []
    errs = sapi.schema_errors({"L": [1], "E": "z", "Q": 1}, schema, "metadata")
    assert any("metadata.A is required" in e for e in errs)
    assert any("metadata.L[0]" in e for e in errs)
    assert any("metadata.E" in e for e in errs)
    assert any("metadata.Q is not allowed" in e for e in errs)
    assert sapi.schema_errors({"A": True}, schema, "m") == ["m.A must be of type integer"]

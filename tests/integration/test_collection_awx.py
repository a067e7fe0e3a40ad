"""AWX, proven two ways.

1. AWX as code: playbooks/awx/configure.yml runs with the real awx.awx modules against
   a stand-in of AWX's REST API (/api/v2, in memory, on 127.0.0.1), twice: the first run
   creates the credential type, credential, EE, project, inventory, job templates with
   surveys and the nightly schedule; the second changes nothing. The objects AWX would
   hold are then checked (injectors, surveys, no overlap).

2. The jobs as AWX runs them: ansible-runner with a private data dir (project = the
   built collection tree, the collection installed as in the EE, the inventory as an
   inventory sync leaves it but without any endpoint, extra vars = survey answers,
   env = the "Manta connection" credential's injectors rendered as AWX renders them,
   --check/--diff from the job type) against a lab of its own: the evacuation (run),
   its status job, and the reshard rehearsal (check).
"""
import json
import re
import shutil
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import pytest
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from test_collection_helpers import BIN, REPO, lab_env, load_yaml, private_lab, run, tool_env

AWX_DIR = REPO / "playbooks" / "awx"


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def awx_vars():
    with open(AWX_DIR / "vars" / "manta_awx.yml") as fh:
        data = yaml.load(fh, Loader=_Loader)
    # Resolve the "{{ manta_awx_survey_* }}" references of the job templates.
    for jt in data["manta_awx_job_templates"]:
        m = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", jt["survey"])
        jt["survey"] = data[m.group(1)]
    return data


# ---------------------------------------------------------------------------------------------------------
# 1. a stand-in of AWX's REST API, enough for the awx.awx modules configure.yml uses

class FakeAWX:
    ASSOC = ("credentials", "labels", "instance_groups", "notification_templates_started",
             "notification_templates_success", "notification_templates_error",
             "notification_templates_approvals", "galaxy_credentials")

    def __init__(self):
        self.items = {}        # endpoint -> {id: item}
        self.surveys = {}      # (endpoint, id) -> spec
        self.assoc = {}        # (endpoint, id, sub) -> [ids]
        self.next_id = 1
        self.writes = []       # (method, path) of every change
        self.lock = threading.Lock()

    def _item_view(self, ep, item):
        url = f"/api/v2/{ep}/{item['id']}/"
        related = {s: f"{url}{s}/" for s in self.ASSOC + ("survey_spec", "update", "schedules")}
        return {**item, "url": url, "related": related, "summary_fields": {}, "type": ep.rstrip("s")}

    def _list(self, ep, query):
        if ep == "unified_job_templates":
            pool = [(e, i) for e in ("job_templates", "projects", "inventory_sources")
                    for i in self.items.get(e, {}).values()]
        else:
            pool = [(ep, i) for i in self.items.get(ep, {}).values()]
        ors = {k[4:]: v for k, v in query.items() if k.startswith("or__")}
        ands = {k: v for k, v in query.items() if not k.startswith("or__") and k not in ("page_size", "page")}
        out = []
        for e, it in pool:
            if any(str(it.get(k)) != v for k, v in ands.items()):
                continue
            if ors and not any(str(it.get(k)) == v for k, v in ors.items()):
                continue
            out.append(self._item_view(e, it))
        return {"count": len(out), "next": None, "previous": None, "results": out}

    def handle(self, method, path, query, body):
        parts = [p for p in path.split("/") if p][2:]  # drop api, v2
        with self.lock:
            if not parts:
                return 200, {"ping": "/api/v2/ping/"}
            if parts[0] in ("ping", "me", "config"):
                return 200, {"version": "22.7.0", "results": [{"id": 1, "username": "admin"}], "count": 1}
            ep = parts[0]
            if len(parts) == 1:
                if method == "GET":
                    return 200, self._list(ep, query)
                if method == "POST":
                    item = {**body, "id": self.next_id}
                    self.next_id += 1
                    self.items.setdefault(ep, {})[item["id"]] = item
                    self.writes.append((method, path))
                    return 201, self._item_view(ep, item)
            try:
                oid = int(parts[1])
            except ValueError:
                return 404, {"detail": "Not found."}   # a named URL (name++org): not supported, like old AWX
            item = self.items.get(ep, {}).get(oid)
            if item is None:
                return 404, {"detail": "Not found."}
            if len(parts) == 2:
                if method == "GET":
                    return 200, self._item_view(ep, item)
                if method == "PATCH":
                    item.update(body)
                    self.writes.append((method, path))
                    return 200, self._item_view(ep, item)
                if method == "DELETE":
                    del self.items[ep][oid]
                    self.writes.append((method, path))
                    return 204, None
            sub = parts[2]
            if sub == "survey_spec":
                if method == "GET":
                    return 200, self.surveys.get((ep, oid), {})
                if method == "POST":
                    self.surveys[(ep, oid)] = body
                    self.writes.append((method, path))
                    return 200, {}
                if method == "DELETE":
                    self.surveys.pop((ep, oid), None)
                    return 200, {}
            ids = self.assoc.setdefault((ep, oid, sub), [])
            if method == "GET":
                return 200, {"count": len(ids), "next": None, "results": [{"id": i} for i in ids]}
            if method == "POST":
                if body.get("disassociate"):
                    ids.remove(int(body["id"]))
                else:
                    ids.append(int(body["id"]))
                self.writes.append((method, path))
                return 204, None
            return 405, {"detail": f"{method} not allowed"}

    def serve(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _do(self):
                u = urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}") if n else {}
                code, data = fake.handle(self.command, u.path, dict(parse_qsl(u.query)), body)
                payload = b"" if data is None else json.dumps(data).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-API-Product-Name", "AWX")
                self.send_header("X-API-Product-Version", "22.7.0")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _do

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def one(self, ep, name):
        (it,) = [i for i in self.items.get(ep, {}).values() if i.get("name") == name]
        return it


@pytest.fixture(scope="module")
def awx(tmp_path_factory):
    fake = FakeAWX()
    url = fake.serve()
    home = tmp_path_factory.mktemp("awx-home")
    env = tool_env({"CONTROLLER_HOST": url, "CONTROLLER_OAUTH_TOKEN": "test-token",
                    "CONTROLLER_VERIFY_SSL": "false"}, home=home)
    cmd = [BIN / "ansible-playbook", "-i", "localhost,", AWX_DIR / "configure.yml",
           "-e", f"ansible_python_interpreter={BIN / 'python'}", "-e", "manta_awx_nightly_nodes=3.stor"]
    first = run(cmd, env=env, timeout=600)
    writes_after_first = len(fake.writes)
    second = run(cmd, env=env, timeout=600)
    yield fake, first, second, writes_after_first
    fake.httpd.shutdown()


def test_configure_creates_everything(awx):
    fake, first, _, _ = awx
    assert first.returncode == 0, first.out
    v = awx_vars()
    ct = fake.one("credential_types", v["manta_awx_credential_type"])
    assert ct["kind"] == "cloud"
    assert set(ct["injectors"]["env"]) == {"MANTA_ZK_SERVERS", "MANTA_SAPI_URL", "MANTA_IMGAPI_URL",
                                           "MANTA_VMAPI_URL", "MANTA_API_TOKEN", "MANTA_PG_USER",
                                           "MANTA_PG_PASSWORD"}
    assert ct["injectors"]["env"]["MANTA_ZK_SERVERS"] == "{{ zk_servers }}"   # left for AWX to render
    secret = {f["id"] for f in ct["inputs"]["fields"] if f.get("secret")}
    assert secret == {"api_token", "pg_password"}
    cred = fake.one("credentials", v["manta_awx_credential"])
    assert cred["credential_type"] == ct["id"]
    ee = fake.one("execution_environments", v["manta_awx_ee_name"])
    proj = fake.one("projects", v["manta_awx_project"])
    assert proj["scm_type"] == "git" and proj["default_environment"] == ee["id"]
    inv = fake.one("inventories", v["manta_awx_inventory"])
    src = fake.one("inventory_sources", v["manta_awx_inventory"] + " from project")
    assert src["inventory"] == inv["id"] and src["source_project"] == proj["id"]

    jts = {jt["name"]: jt for jt in fake.items["job_templates"].values()}
    assert {"Manta reshard (check)", "Manta reshard (run)", "Manta evacuate", "Manta evacuation status",
            "Manta reshard status"} <= set(jts)
    assert jts["Manta reshard (check)"]["job_type"] == "check" and jts["Manta reshard (check)"]["diff_mode"]
    assert jts["Manta reshard (run)"]["job_type"] == "run"
    for name, jt in jts.items():
        assert jt["allow_simultaneous"] is False, name
        assert jt["survey_enabled"] is True, name
        assert jt["execution_environment"] == ee["id"] and jt["project"] == proj["id"], name
        assert (REPO / jt["playbook"]).exists(), jt["playbook"]
        assert fake.assoc[("job_templates", jt["id"], "credentials")] == [cred["id"]], name
        spec = fake.surveys[("job_templates", jt["id"])]
        assert spec["spec"], name

    def survey_vars(name):
        return {q["variable"] for q in fake.surveys[("job_templates", jts[name]["id"])]["spec"]}

    # the survey asks for shards, vnodes, nodes, throttles and the time budget
    assert {"shard", "new_shard", "vnodes", "reshard_delete_batch_size", "reshard_delete_pause"} \
        <= survey_vars("Manta reshard (run)")
    assert {"evacuate", "max_duration", "evacuate_max_bytes_per_sec", "evacuate_copy_concurrency",
            "evacuate_metadata_rows_per_sec"} <= survey_vars("Manta evacuate")

    sched = fake.one("schedules", v["manta_awx_nightly_evacuation"]["name"])
    assert sched["unified_job_template"] == jts["Manta evacuate"]["id"]
    assert "FREQ=DAILY" in sched["rrule"] and "INTERVAL=1" in sched["rrule"]
    assert sched["enabled"] is True and sched["extra_data"]["evacuate"] == "3.stor"


def test_nightly_schedule_cannot_overlap_itself(awx):
    """Not simultaneous, and bounded well inside the 24 h between two runs: the evacuation's
    own time budget, and the job template's hard timeout above it."""
    fake, first, _, _ = awx
    assert first.returncode == 0, first.out
    v = awx_vars()
    sched = fake.one("schedules", v["manta_awx_nightly_evacuation"]["name"])
    jt = fake.items["job_templates"][sched["unified_job_template"]]
    assert jt["allow_simultaneous"] is False
    budget = sched["extra_data"]["max_duration"]
    m = re.fullmatch(r"(\d+)([smh]?)", str(budget))
    seconds = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    assert 0 < seconds < int(jt["timeout"]) < 24 * 3600


def test_configure_is_idempotent(awx):
    fake, first, second, writes_after_first = awx
    assert second.returncode == 0, second.out
    assert re.search(r"localhost\s+: ok=\d+\s+changed=0\b", second.stdout), second.out
    assert len(fake.writes) == writes_after_first, fake.writes[writes_after_first:]


def test_survey_variables_are_role_inputs():
    """Every survey variable is an input the playbook or its roles document (argument_specs)."""
    v = awx_vars()
    known = set()
    for spec in (REPO / "roles").glob("*/meta/argument_specs.yml"):
        known |= set((load_yaml(spec)["argument_specs"]["main"].get("options") or {}))
    for jt in v["manta_awx_job_templates"]:
        text = (REPO / jt["playbook"]).read_text()
        for q in jt["survey"]["spec"]:
            assert q["variable"] in known or re.search(rf"\b{q['variable']}\b", text), \
                f"{jt['name']}: survey variable {q['variable']} is not an input of {jt['playbook']}"
            assert q["type"] in ("text", "textarea", "password", "integer", "float", "multiplechoice",
                                 "multiselect")
            if not q.get("required"):
                assert "default" not in q or q["type"] == "multiplechoice", \
                    f"{q['variable']}: an optional question must not inject a default"


# ---------------------------------------------------------------------------------------------------------
# 2. the jobs, as AWX runs them

def render_injectors(inputs):
    """The credential type's env injectors rendered the way AWX does (sandboxed Jinja over the
    credential's inputs)."""
    v = awx_vars()
    env = ImmutableSandboxedEnvironment()
    return {k: env.from_string(t).render(**inputs)
            for k, t in v["manta_awx_credential_type_injectors"]["env"].items()}


ENDPOINT_VARS = ("manta_zk_servers", "manta_sapi_url", "manta_imgapi_url", "manta_vmapi_url")


def synced_inventory(lab):
    """What an AWX inventory sync of the lab leaves: hosts, groups and their vars, as static
    YAML; without the endpoints, which only the credential provides."""
    r = run([BIN / "python", REPO / "inventories" / "lab" / "lab_inventory.py", "--list"],
            env=tool_env({"LAB_HOME": lab.home}), check=True)
    dyn = json.loads(r.stdout)
    hv = dyn.get("_meta", {}).get("hostvars", {})
    top_vars = {k: v for k, v in dyn.get("all", {}).get("vars", {}).items() if k not in ENDPOINT_VARS}
    children = {}
    for g, body in dyn.items():
        if g in ("_meta", "all"):
            continue
        node = {}
        if body.get("hosts"):
            node["hosts"] = {h: hv.get(h, {}) for h in body["hosts"]}
        if body.get("children"):
            node["children"] = {c: {} for c in body["children"]}
        children[g] = node
    return {"all": {"vars": top_vars, "children": children}}


def survey_answers(survey, answers):
    """Extra vars the way AWX builds them from a survey: the answers given, plus the defaults
    of required questions; unanswered optional questions are not passed."""
    out = {}
    for q in survey["spec"]:
        var = q["variable"]
        if var in answers:
            out[var] = answers[var]
        elif q.get("required") and "default" in q:
            out[var] = q["default"]
    unknown = set(answers) - {q["variable"] for q in survey["spec"]}
    assert not unknown, f"answers to questions the survey does not ask: {unknown}"
    return out


@pytest.fixture(scope="module")
def awx_lab():
    with private_lab("manta-lab-awx-") as lab:
        yield lab


@pytest.fixture(scope="module")
def ee_collections(tmp_path_factory):
    """The built collection, installed as in the execution environment, and its tree as the
    project checkout."""
    base = tmp_path_factory.mktemp("awx-ee")
    r = run([BIN / "ansible-galaxy", "collection", "build", "--force", "--output-path", base, REPO], cwd=base)
    assert r.returncode == 0, r.out
    (tarball,) = base.glob("manta-ops-*.tar.gz")
    colls = base / "collections"
    run([BIN / "ansible-galaxy", "collection", "install", "--force", "--offline", "--no-deps", "-p", colls,
         tarball], cwd=base, check=True)
    return tarball, colls


def run_as_awx(lab, ee, pdd, job_template, answers, extra_cmdline=()):
    """One AWX job through ansible-runner: private data dir, project, inventory, extra vars
    from the survey, env from the credential, --check/--diff from the job template."""
    tarball, colls = ee
    v = awx_vars()
    jt = next(j for j in v["manta_awx_job_templates"] if j["name"] == job_template)
    (pdd / "project").mkdir(parents=True)
    with tarfile.open(tarball) as tf:
        tf.extractall(pdd / "project", filter="data")
    (pdd / "inventory").mkdir()
    (pdd / "inventory" / "hosts.yml").write_text(yaml.safe_dump(synced_inventory(lab)))
    (pdd / "env").mkdir()
    extravars = survey_answers(jt["survey"], answers)
    (pdd / "env" / "extravars").write_text(yaml.safe_dump(extravars))
    lenv = lab_env(lab)
    credential = {"zk_servers": lenv["MANTA_ZK_SERVERS"], "sapi_url": lenv["MANTA_SAPI_URL"],
                  "imgapi_url": lenv["MANTA_IMGAPI_URL"], "vmapi_url": lenv["MANTA_VMAPI_URL"],
                  "pg_user": lenv["MANTA_PG_USER"]}
    envvars = render_injectors(credential)
    envvars.update({"ANSIBLE_COLLECTIONS_PATH": str(colls), "ANSIBLE_FORCE_COLOR": "0",
                    "ANSIBLE_NOCOLOR": "1", "ANSIBLE_DEPRECATION_WARNINGS": "0",
                    "ANSIBLE_HOME": str(pdd / "ansible-home"), "ANSIBLE_ASYNC_DIR": str(pdd / "async"),
                    "ANSIBLE_CONFIG": str(pdd / "project" / "ansible.cfg")})
    (pdd / "env" / "envvars").write_text(yaml.safe_dump(envvars))
    (pdd / "env" / "settings").write_text(yaml.safe_dump({"job_timeout": int(jt["timeout"]) or 3600,
                                                          "suppress_ansible_output": False}))
    cmdline = []
    if jt["job_type"] == "check":
        cmdline.append("--check")
    if jt.get("diff_mode"):
        cmdline.append("--diff")
    cmdline += list(extra_cmdline)
    if cmdline:
        (pdd / "env" / "cmdline").write_text(" ".join(cmdline))
    # The runner process itself: no MANTA_* / LAB_HOME from the test's environment.
    env = tool_env()
    for k in list(env):
        if k.startswith(("MANTA_", "LAB_", "ANSIBLE_")):
            env.pop(k)
    env["PATH"] = f"{BIN}:{env['PATH']}"
    r = run([BIN / "ansible-runner", "run", pdd, "-p", jt["playbook"], "--ident", "job"],
            cwd=pdd, env=env, timeout=1800)
    art = pdd / "artifacts" / "job"
    events = [json.loads(p.read_text()) for p in sorted((art / "job_events").glob("*.json"),
                                                       key=lambda p: int(p.name.split("-")[0]))]
    status = (art / "status").read_text().strip() if (art / "status").exists() else "missing"
    stdout = (art / "stdout").read_text() if (art / "stdout").exists() else r.stdout
    return r, status, events, stdout, extravars


def task_names(events, event="runner_on_ok"):
    return [e["event_data"].get("task", "") for e in events if e["event"] == event]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_evacuation_as_awx_runs_it(awx_lab, ee_collections, tmp_path):
    lab = awx_lab
    seeded = lab.run("seed", "--objects", "150")
    assert seeded.returncode == 0
    domain = lab.status["domain"]
    r, status, events, stdout, extravars = run_as_awx(
        lab, ee_collections, tmp_path / "pdd", "Manta evacuate",
        {"evacuate": "4.stor", "max_duration": "15m", "evacuate_copy_concurrency": 4,
         "evacuate_max_bytes_per_sec": 0})
    assert status == "successful", f"{status}\n{stdout[-8000:]}\n{r.out[-3000:]}"
    assert extravars["retry_skipped"] == "false" and "evacuate_metadata_rows_per_sec" not in extravars
    assert re.search(rf"job \S+: complete", stdout), stdout[-6000:]
    # progress the Ansible way: many task events, several of them per round
    ok = task_names(events)
    assert len(ok) >= 10, ok
    assert any(e["event"] == "playbook_on_stats" for e in events)
    assert f"4.stor.{domain}" in stdout

    # the status job template, on the same lab, right after
    r2, status2, _, stdout2, _ = run_as_awx(lab, ee_collections, tmp_path / "pdd-status",
                                            "Manta evacuation status", {})
    assert status2 == "successful", f"{status2}\n{stdout2[-6000:]}"
    assert f"4.stor.{domain}" in stdout2


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_reshard_rehearsal_as_awx_runs_it(awx_lab, ee_collections, tmp_path):
    lab = awx_lab
    domain = lab.status["domain"]
    before = lab.status["shards"]
    r, status, events, stdout, extravars = run_as_awx(
        lab, ee_collections, tmp_path / "pdd", "Manta reshard (check)",
        {"shard": f"1.moray.{domain}", "new_shard": f"3.moray.{domain}", "split": "balanced"})
    assert status == "successful", f"{status}\n{stdout[-8000:]}\n{r.out[-3000:]}"
    assert "REHEARSAL" in stdout, stdout[-6000:]
    assert lab.status["shards"].keys() == before.keys(), "the rehearsal created a shard"
    assert any(e["event_data"].get("task") for e in events if e["event"] == "runner_on_ok")

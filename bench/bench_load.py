"""Load through the edge: many concurrent clinic users doing a realistic mix for a while, then
a check that every uploaded study got its results and its report (nothing lost).

    python bench/bench_load.py [--clients 200] [--seconds 60] [--drain-s 900]

`medmesh up` starts the whole product (embedded PostgreSQL, Redis, NATS JetStream, S3, SMTP
sink, the model server with the real ResNet-50 and MiniLM, the four services, the edge) in a
fresh data directory, exactly as a user starts it. Then, on loopback only:

* accounts: one clinician account per client, spread over 10 clinics (written into auth.users
  with one argon2 hash shared by all: hashing 200 passwords would take minutes);
* each client is one asyncio task with its own HTTP connection from its **own loopback source
  address** (127.0.x.y), as separate machines would be: the gateway's per-IP limits and the
  per-IP sign-in limits apply per client, not to the whole run. svc_auth trusts the edge
  (`MEDMESH_AUTH_TRUSTED_PROXIES=127.0.0.1/32`) to name the client in `x-forwarded-for`, as
  production trusts Envoy. Every other limit keeps its default (per user 300/60 s, per IP
  600/60 s, the argon2 pool and its queue of 16): a 429 is an intended answer, counted on
  its own and honoured (the client waits at least `Retry-After`, with exponential backoff
  and jitter up to 30 s);
* a ramp-up before the measured window: clients arrive spread over 60 s and each logs in
  with its password (argon2id on svc_auth's hash pool: on 2 shared cores this takes minutes
  for 200 clients, and the pool's queue answers 429 to the excess, which clients wait out);
* the measured window, with 1-3 s of think time between requests (a clinician's clicks): log
  in again with the password (0.5 %) or refresh the token (2 %), list the clinic's studies,
  watch a study (the first NDJSON line of `:watch`), list a study's results, read one
  result, find a study's report and fetch its PDF (`:downloadUrl` through the edge, then
  the presigned GET from S3); once per client, at a random moment in the first 60 % of the
  window, an upload: create a study, a small PNG through `:createUploadUrl`, a presigned
  PUT to S3 and `:completeUpload`, and a clinical note (`:createTextNote`).

Errors are transport failures, 5xx and any 4xx other than 429 (there should be none: every
request is valid and authorized). After the run, the script waits (up to `--drain-s`) until
every study whose upload succeeded has one result per file and a READY report covering both,
reading PostgreSQL directly; a study that has neither after the wait is counted as lost, a
dead-lettered job as failed, and more than one result per file as duplicated.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from _results import record  # noqa: E402

from medmesh.launcher import DEPENDENCY_ENV  # noqa: E402

PASSWORD = "load-run-Password-4711"
CLINICS = 10
THINK_S = (1.0, 3.0)  # a clinician's pause between two clicks
ARRIVAL_S = 60.0  # users sign in spread over the first minute, not all in the same second
BACKOFF_CAP_S = 30.0
NOTE = "Productive cough, fever of 39 C and crackles over the right lower lobe; suspect pneumonia."
REPORT_READY = 2


@dataclass
class Stats:
    """Per-route latencies and outcomes, shared by all clients."""

    latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    outcomes: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    errors: list[str] = field(default_factory=list)

    def add(self, route: str, started: float, outcome: str) -> None:
        self.latency_ms[route].append((time.perf_counter() - started) * 1000)
        self.outcomes[route][outcome] += 1


@dataclass
class Upload:
    """A study whose files were all accepted, and its clinic."""

    clinic_id: str
    study_id: str
    files: int


class RateLimited(Exception):
    """A 429: the caller waits `retry_after_s` and goes on."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(retry_after_s)
        self.retry_after_s = retry_after_s


class Failed(Exception):
    """An error (transport, 5xx, unexpected 4xx): already counted."""


def _message(response: httpx.Response) -> str:
    """The google.rpc.Status message of an error response (ids cut off), or its text."""
    try:
        message = str(response.json().get("message", ""))
    except ValueError:
        message = response.text
    return message.split(":")[0][:120]


def _png(rng: random.Random) -> bytes:
    noise = np.random.default_rng(rng.getrandbits(32)).integers(0, 255, (96, 96), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", noise)
    assert ok
    return encoded.tobytes()


class LoadClient:
    """One user on one source address."""

    def __init__(
        self, index: int, edge: str, stats: Stats, uploads: list[Upload], deadline: float
    ) -> None:
        self.index = index
        self.email = f"load-{index:03d}@clinic-{index % CLINICS}.example"
        self.clinic_id = f"load-clinic-{index % CLINICS}"
        self.rng = random.Random(index)
        address = f"127.0.{1 + index // 250}.{1 + index % 250}"
        self.http = httpx.AsyncClient(
            base_url=edge,
            transport=httpx.AsyncHTTPTransport(local_address=address, retries=0),
            timeout=60,
        )
        self.s3 = httpx.AsyncClient(timeout=60)
        self.stats, self.uploads, self.deadline = stats, uploads, deadline
        self.studies: list[str] = []
        self.token = ""
        self.refresh_token = ""

    async def call(self, route: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request through the edge, timed and classified."""
        started = time.perf_counter()
        try:
            response = await self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            self.stats.add(route, started, "transport error")
            self.stats.errors.append(f"{route}: {type(exc).__name__} {exc}")
            raise Failed from exc
        return self._classify(route, started, response)

    def _classify(self, route: str, started: float, response: httpx.Response) -> httpx.Response:
        status = response.status_code
        if status == 429:
            self.stats.add(route, started, "429")
            raise RateLimited(float(response.headers.get("retry-after", "1") or 1))
        if status >= 400:
            self.stats.add(route, started, str(status))
            self.stats.errors.append(f"{route}: {status} {_message(response)}")
            raise Failed
        self.stats.add(route, started, "ok")
        return response

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    async def login(self, route: str = "login") -> None:
        response = await self.call(
            route, "POST", "/v1/auth:login", json={"email": self.email, "password": PASSWORD}
        )
        self.token = response.json()["accessToken"]
        self.refresh_token = response.json()["refreshToken"]

    async def sign_in(self, deadline: float) -> bool:
        """The ramp-up: log in, waiting out 429s, until `deadline`."""
        await asyncio.sleep(self.rng.uniform(0, ARRIVAL_S))
        attempt = 0
        while time.monotonic() < deadline:
            try:
                await self.login("login (ramp-up)")
            except (RateLimited, Failed) as refused:
                attempt += 1
                await asyncio.sleep(self.backoff(attempt, refused))
            else:
                return True
        return False

    def backoff(self, attempt: int, refused: Exception) -> float:
        """Exponential backoff with full jitter, never shorter than the server's Retry-After
        (what a well-behaved client does; hammering a 429 only adds load)."""
        floor = refused.retry_after_s if isinstance(refused, RateLimited) else 0.0
        return max(floor, self.rng.uniform(0, min(BACKOFF_CAP_S, 2.0**attempt)))

    async def refresh(self) -> None:
        response = await self.call(
            "refresh token",
            "POST",
            "/v1/auth:refresh",
            json={"refreshToken": self.refresh_token},
            headers=self.headers(),
        )
        self.token = response.json()["accessToken"]
        self.refresh_token = response.json().get("refreshToken") or self.refresh_token

    async def list_studies(self) -> None:
        response = await self.call(
            "list studies", "GET", "/v1/studies", params={"pageSize": 20}, headers=self.headers()
        )
        names = [s["name"] for s in response.json().get("studies", [])]
        if names:
            self.studies = names

    async def watch(self, study: str) -> None:
        started = time.perf_counter()
        try:
            async with self.http.stream(
                "GET", f"/v1/{study}:watch", headers=self.headers()
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    self._classify("watch (first event)", started, response)
                    return
                async for line in response.aiter_lines():
                    if line.strip():
                        break
        except httpx.HTTPError as exc:
            self.stats.add("watch (first event)", started, "transport error")
            self.stats.errors.append(f"watch: {type(exc).__name__} {exc}")
            raise Failed from exc
        self.stats.add("watch (first event)", started, "ok")

    async def results(self, study: str) -> None:
        response = await self.call(
            "list results", "GET", f"/v1/{study}/results", headers=self.headers()
        )
        names = [r["name"] for r in response.json().get("results", [])]
        if names:
            await self.call(
                "get result", "GET", f"/v1/{self.rng.choice(names)}", headers=self.headers()
            )

    async def report(self, study: str) -> None:
        response = await self.call(
            "list reports", "GET", "/v1/reports", params={"study": study}, headers=self.headers()
        )
        ready = [
            r for r in response.json().get("reports", []) if r["status"] == "REPORT_STATUS_READY"
        ]
        if not ready:
            return
        url = (
            await self.call(
                "report download url",
                "GET",
                f"/v1/{ready[0]['name']}:downloadUrl",
                headers=self.headers(),
            )
        ).json()["url"]
        started = time.perf_counter()
        try:
            pdf = await self.s3.get(url)
        except httpx.HTTPError as exc:
            self.stats.add("report PDF (S3, not the edge)", started, "transport error")
            raise Failed from exc
        self._classify("report PDF (S3, not the edge)", started, pdf)
        if not pdf.content.startswith(b"%PDF"):
            self.stats.errors.append("report PDF: not a PDF")

    async def upload(self) -> None:
        created = await self.call(
            "create study",
            "POST",
            "/v1/studies",
            json={"patientRef": f"P-load-{self.index:03d}", "description": "load run"},
            headers=self.headers(),
        )
        study = created.json()["study"]["name"]
        data = _png(self.rng)
        announced = (
            await self.call(
                "create upload url",
                "POST",
                f"/v1/{study}/files:createUploadUrl",
                json={
                    "kind": "FILE_KIND_IMAGE_PNG",
                    "fileName": "chest.png",
                    "contentType": "image/png",
                    "sizeBytes": str(len(data)),
                    "sha256": hashlib.sha256(data).hexdigest(),
                },
                headers=self.headers(),
            )
        ).json()
        started = time.perf_counter()
        try:
            put = await self.s3.put(
                announced["url"], content=data, headers=announced.get("requiredHeaders", {})
            )
        except httpx.HTTPError as exc:
            self.stats.add("PNG PUT (S3, not the edge)", started, "transport error")
            raise Failed from exc
        self._classify("PNG PUT (S3, not the edge)", started, put)
        await self.call(
            "complete upload",
            "POST",
            f"/v1/{announced['file']['name']}:completeUpload",
            json={},
            headers=self.headers(),
        )
        await self.call(
            "create note",
            "POST",
            f"/v1/{study}/files:createTextNote",
            json={"text": NOTE, "fileName": "note.txt"},
            headers=self.headers(),
        )
        self.uploads.append(Upload(self.clinic_id, study.split("/", 1)[1], 2))
        self.studies.append(study)

    async def run(self, seconds: float) -> None:
        start = time.monotonic()
        upload_at = start + self.rng.uniform(0, 0.6 * seconds)
        uploaded = False
        refusals = 0
        while time.monotonic() < self.deadline:
            try:
                if not self.token:
                    await self.login()
                elif not uploaded and time.monotonic() >= upload_at:
                    uploaded = True
                    await self.upload()
                else:
                    await self.one_read()
            except RateLimited as limited:
                refusals += 1
                await asyncio.sleep(self.backoff(refusals, limited))
                continue
            except Failed:
                pass
            refusals = 0
            await asyncio.sleep(self.rng.uniform(*THINK_S))

    async def one_read(self) -> None:
        roll = self.rng.random()
        if roll < 0.005:
            await self.login()
        elif roll < 0.025:
            await self.refresh()
        elif roll < 0.35 or not self.studies:
            await self.list_studies()
        else:
            study = self.rng.choice(self.studies)
            if roll < 0.5:
                await self.watch(study)
            elif roll < 0.8:
                await self.results(study)
            else:
                await self.report(study)

    async def close(self) -> None:
        await self.http.aclose()
        await self.s3.aclose()


# ------------------------------------------------------------------------------- the stack


def start_stack(workdir: Path) -> tuple[subprocess.Popen[str], dict[str, Any], dict[str, str]]:
    """`medmesh up` in a fresh data dir; its process, status file and printed addresses."""
    from support.models import built_models

    env = {k: v for k, v in os.environ.items() if k not in DEPENDENCY_ENV.values()}
    # The test suite's models (built once per build-code version) unless a directory is given.
    env["MEDMESH_MODEL_BASE_DIR"] = os.environ.get("MEDMESH_MODEL_BASE_DIR") or str(built_models())
    env["MEDMESH_AUTH_TRUSTED_PROXIES"] = "127.0.0.1/32"
    env["MEDMESH_LOG_LEVEL"] = "warning"
    status_file = workdir / "status.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medmesh.cli",
            "up",
            "--data-dir",
            str(workdir / "data"),
            "--status-file",
            str(status_file),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    printed: dict[str, str] = {}
    while True:
        line = process.stdout.readline()
        if not line:
            raise SystemExit("medmesh up exited before it was ready")
        name, _, value = line.strip().partition(" ")
        printed.setdefault(name, value)
        if "Ctrl-C" in line:
            break
    return process, json.loads(status_file.read_text()), printed


def stop_stack(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def create_accounts(postgres_url: str, count: int) -> None:
    """`count` approved, verified clinicians over CLINICS clinics, one hash for all."""
    from svc_auth import store
    from svc_auth.passwords import PasswordHashing

    password_hash = await PasswordHashing().hash(PASSWORD)
    async with (
        await psycopg.AsyncConnection.connect(
            postgres_url, row_factory=psycopg.rows.dict_row
        ) as conn,
        conn.transaction(),
    ):
        for clinic in range(CLINICS):
            await store.ensure_clinic(conn, f"load-clinic-{clinic}")
        for index in range(count):
            await store.insert_user(
                conn,
                user_id=uuid.uuid4(),
                clinic_id=f"load-clinic-{index % CLINICS}",
                email=f"load-{index:03d}@clinic-{index % CLINICS}.example",
                display_name=f"load {index}",
                password_hash=password_hash,
                roles=["clinician"],
                approval_state="approved",
                email_verified=True,
            )


async def drain(postgres_url: str, uploads: list[Upload], drain_s: float) -> dict[str, Any]:
    """Wait until every uploaded study has its results and a READY report covering them."""
    studies = [u.study_id for u in uploads]
    deadline = time.monotonic() + drain_s
    started = time.monotonic()
    while True:
        async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
            per_file = await (
                await conn.execute(
                    "SELECT study_id, file_id, count(*) FROM infer.results"
                    " WHERE study_id = ANY(%s) GROUP BY study_id, file_id",
                    (studies,),
                )
            ).fetchall()
            reported = await (
                await conn.execute(
                    "SELECT DISTINCT study_id FROM report.reports WHERE study_id = ANY(%s)"
                    " AND status = %s AND cardinality(result_ids) >= 2",
                    (studies, REPORT_READY),
                )
            ).fetchall()
            dead = await (await conn.execute("SELECT count(*) FROM infer.dead_letters")).fetchone()
        files_with_result = Counter(row[0] for row in per_file)
        complete = {u.study_id for u in uploads if files_with_result[u.study_id] >= u.files} & {
            row[0] for row in reported
        }
        if len(complete) == len(studies) or time.monotonic() > deadline:
            return {
                "studies": len(studies),
                "complete": len(complete),
                "lost": len(studies) - len(complete),
                "duplicated_results": sum(max(0, row[2] - 1) for row in per_file),
                "dead_letters": dead[0] if dead else 0,
                "drain_s": round(time.monotonic() - started, 1),
            }
        await asyncio.sleep(2)


def _p(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def run(
    clients: int, seconds: float, drain_s: float, ramp_s: float, keep: Path | None
) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        process, status, printed = await asyncio.to_thread(start_stack, workdir)
        try:
            await create_accounts(printed["postgres"], clients)
            stats, uploads = Stats(), []
            load_before = os.getloadavg()
            ramp_started = time.monotonic()
            users = [LoadClient(i, status["edge"], stats, uploads, 0) for i in range(clients)]
            signed_in = await asyncio.gather(*(u.sign_in(ramp_started + ramp_s) for u in users))
            ramp = time.monotonic() - ramp_started
            print(f"ramp-up: {sum(signed_in)} of {clients} clients signed in in {ramp:.0f} s")
            deadline = time.monotonic() + seconds
            for user in users:
                user.deadline = deadline
            started = time.monotonic()
            await asyncio.gather(*(user.run(seconds) for user in users))
            elapsed = time.monotonic() - started
            load_after = os.getloadavg()
            await asyncio.gather(*(user.close() for user in users))
            outcome = await drain(printed["postgres"], uploads, drain_s)
        finally:
            await asyncio.to_thread(stop_stack, process)
    return report(clients, seconds, elapsed, stats, outcome, load_before, load_after)


def report(
    clients: int,
    seconds: float,
    elapsed: float,
    stats: Stats,
    outcome: dict[str, Any],
    load_before: tuple[float, ...],
    load_after: tuple[float, ...],
) -> int:
    total = sum(sum(c.values()) for c in stats.outcomes.values())
    limited = sum(c["429"] for c in stats.outcomes.values())
    errors = sum(
        n for c in stats.outcomes.values() for kind, n in c.items() if kind not in ("ok", "429")
    )
    answered = total - limited
    error_rate = errors / answered if answered else 1.0
    print(
        f"{clients} clients for {seconds:g} s ({elapsed:.1f} s with the last requests),"
        f" load average {load_before[0]:.2f} before, {load_after[0]:.2f} at the end"
    )
    print(f"{total} requests ({total / elapsed:.0f}/s), {limited} answered 429, {errors} errors")
    print(f"{'route':32} {'count':>6} {'ok':>6} {'429':>5} {'err':>5} {'p50 ms':>8} {'p99 ms':>8}")
    for route in sorted(stats.latency_ms):
        counts = stats.outcomes[route]
        values = stats.latency_ms[route]
        print(
            f"{route:32} {len(values):6d} {counts['ok']:6d} {counts['429']:5d}"
            f" {sum(counts.values()) - counts['ok'] - counts['429']:5d}"
            f" {_p(values, 50):8.1f} {_p(values, 99):8.1f}"
        )
    kinds = Counter(stats.errors)
    for line, count in kinds.most_common(15):
        print(f"  error x{count}: {line}")
    print(
        f"uploaded studies {outcome['studies']}: complete (results + READY report)"
        f" {outcome['complete']}, lost {outcome['lost']}, duplicated results"
        f" {outcome['duplicated_results']}, dead letters {outcome['dead_letters']},"
        f" drained in {outcome['drain_s']} s after the run"
    )
    routes = {
        route: {
            "count": len(values),
            "p50_ms": round(_p(values, 50), 1),
            "p99_ms": round(_p(values, 99), 1),
            "outcomes": dict(stats.outcomes[route]),
        }
        for route, values in sorted(stats.latency_ms.items())
    }
    per_route = "; ".join(f"{route} {r['p50_ms']:g}/{r['p99_ms']:g}" for route, r in routes.items())
    setup = (
        f"{clients} clients x {seconds:g} s, each its own account and loopback source address,"
        " default limits, svc_auth trusts the edge's x-forwarded-for"
    )
    record(
        "bench_load.py",
        f"Load: error rate excluding intended 429s ({setup})",
        round(100 * error_rate, 3),
        "%",
        floor=None,
        floor_name=f"{answered} answered requests ({total / elapsed:.0f}/s), {limited} x 429",
        goal="0 errors",
        met=errors == 0,
        note=f"p50/p99 ms per route: {per_route}",
        errors=dict(Counter(stats.errors).most_common(15)),
        routes=routes,
        load_before=list(load_before),
        load_after=list(load_after),
    )
    record(
        "bench_load.py",
        "Load: uploaded studies without results and a READY report after the drain (lost)",
        outcome["lost"],
        "studies",
        floor=outcome["studies"],
        floor_name="studies uploaded",
        goal="0 lost",
        met=outcome["lost"] == 0 and outcome["duplicated_results"] == 0,
        note=(
            f"duplicated results {outcome['duplicated_results']}, dead letters"
            f" {outcome['dead_letters']}, drained {outcome['drain_s']} s after the run"
        ),
    )
    return 0 if errors == 0 and outcome["lost"] == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--drain-s", type=float, default=900)
    parser.add_argument("--ramp-s", type=float, default=600, help="longest sign-in ramp-up")
    parser.add_argument(
        "--keep-dir", type=Path, help="run the stack in this directory and keep it (its logs)"
    )
    args = parser.parse_args()
    raise SystemExit(
        asyncio.run(run(args.clients, args.seconds, args.drain_s, args.ramp_s, args.keep_dir))
    )


if __name__ == "__main__":
    main()
